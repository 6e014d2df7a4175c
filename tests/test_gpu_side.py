"""The trainers' device, precision and multi-process side (training.runtime), checked on a CPU:
device and precision errors, autocast and the GradScaler, the data each process gets, a
2-process DDP run equal to one process, torchrun runs of both trainers on real faces, resume of
a DDP checkpoint in one process, and bf16 autocast through one step of each trainer.

No GPU here: the CUDA/NCCL branches take the same code with ``device`` = cuda (README,
"Training on a GPU workstation"). Every workload is tiny; the torchrun runs take seconds."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from training.run_folder import load_state  # noqa: E402
from training.runtime import ProcessShare, Runtime, check_precision, resolve_device  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
IDENTITY_SMOKE = REPO / "training/identity/configs/smoke.toml"
LANDMARK_SMOKE = REPO / "training/landmarks/configs/smoke.toml"
CPU = torch.device("cpu")


def _torchrun(args: list[str], data_root: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node 2 ARGS`` from the repository root."""
    exe = Path(sys.executable).with_name("torchrun")
    launcher = [str(exe)] if exe.exists() else [sys.executable, "-m", "torch.distributed.run"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if data_root is not None:
        env["POSEFACE_DATA"] = str(data_root)
    return subprocess.run(
        [*launcher, "--standalone", "--nproc_per_node", "2", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _one_error_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    assert len(lines) == 1, text
    return lines[0]


# ------------------------------------------------------------------ device and precision


def test_device_flag_values_and_one_line_errors():
    assert resolve_device("cpu") == CPU
    assert resolve_device("auto") == (
        torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else CPU
    )
    with pytest.raises(ValueError, match=r"^--device gpu: expected auto, cpu, cuda or cuda:N$"):
        resolve_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(
            ValueError, match=r"^--device cuda:1: torch .* sees no CUDA device; use --device cpu or auto$"
        ):
            resolve_device("cuda:1")


def test_fp16_on_a_cpu_is_refused_and_bad_values_name_their_field():
    from training.config import ConfigError, from_dict
    from training.identity.config import IdentityTrainConfig
    from training.identity.student import StudentConfig
    from training.landmarks.config import LandmarkTrainConfig

    with pytest.raises(ValueError, match=r"^precision = fp16 needs a CUDA device .*; on a CPU use bf16 or fp32$"):
        check_precision("fp16", CPU)
    check_precision("bf16", CPU)
    for cls in (IdentityTrainConfig, LandmarkTrainConfig, StudentConfig):
        with pytest.raises(ConfigError, match=r"precision: expected fp32, bf16 or fp16, got 'fp8'"):
            from_dict(cls, {"precision": "fp8"})
        with pytest.raises(ConfigError, match=r"channels_last: expected auto, on or off, got 'yes'"):
            from_dict(cls, {"channels_last": "yes"})


def test_both_clis_refuse_a_bad_device_and_fp16_on_a_cpu_with_one_line(tmp_path, capsys):
    from training.identity.__main__ import main as identity_main
    from training.landmarks.__main__ import main as landmark_main

    folder = tmp_path / "faces" / "a"
    folder.mkdir(parents=True)
    recipe = tmp_path / "fp16.toml"
    recipe.write_text(f'extends = "{IDENTITY_SMOKE}"\nprecision = "fp16"\n')
    args = ["train", "--out", str(tmp_path / "run"), "--train-folder", str(folder.parent)]
    assert identity_main([*args, "--config", str(IDENTITY_SMOKE), "--device", "tpu"]) == 2
    assert "--device tpu: expected auto, cpu, cuda or cuda:N" in _one_error_line(capsys.readouterr().err)
    assert identity_main([*args, "--config", str(recipe), "--device", "cpu"]) == 2
    assert "precision = fp16 needs a CUDA device" in _one_error_line(capsys.readouterr().err)
    lm_recipe = tmp_path / "lm_fp16.toml"
    lm_recipe.write_text(f'extends = "{LANDMARK_SMOKE}"\nprecision = "fp16"\n')
    assert (
        landmark_main(["train", "--config", str(LANDMARK_SMOKE), "--out", str(tmp_path / "lm"), "--device", "x"]) == 2
    )
    assert "--device x: expected auto" in _one_error_line(capsys.readouterr().err)
    assert landmark_main(["train", "--config", str(lm_recipe), "--out", str(tmp_path / "lm"), "--device", "cpu"]) == 2
    assert "precision = fp16 needs a CUDA device" in _one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "run").exists() and not (tmp_path / "lm").exists()  # refused before any work


def test_autocast_and_scaler_are_pass_throughs_for_fp32_and_bf16_casts_on_a_cpu():
    x, w = torch.randn(4, 8), torch.randn(8, 3)
    fp32 = Runtime(CPU, "fp32")
    with fp32.autocast():
        assert (x @ w).dtype == torch.float32
    scaler = fp32.scaler()
    assert not scaler.is_enabled()
    loss = (x @ w).sum()
    assert scaler.scale(loss) is loss  # the same tensor: the CPU path computes what it did before
    with Runtime(CPU, "bf16").autocast():
        assert (x @ w).dtype == torch.bfloat16
    assert not Runtime(CPU, "bf16").scaler().is_enabled()


def test_atomic_save_leaves_no_temporary_file_and_loads_onto_the_cpu(tmp_path):
    from training.run_folder import atomic_save

    atomic_save({"model": {"w": torch.ones(2)}}, tmp_path / "c.pt")
    assert not list(tmp_path.glob("*.tmp"))
    assert load_state(tmp_path / "c.pt")["model"]["w"].device == CPU


# ------------------------------------------------------------------ the data each process gets


class _Indices(torch.utils.data.Dataset):
    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


def _batches(loader) -> list[list[int]]:
    return [b.tolist() for b in loader]


def test_one_process_gets_the_loader_the_trainers_always_built():
    ds = _Indices(50)
    for epoch in (0, 3):
        gen = torch.Generator().manual_seed(7 * 1000 + epoch)
        before = torch.utils.data.DataLoader(ds, 8, shuffle=True, drop_last=True, generator=gen)
        now = Runtime(CPU).epoch_loader(ds, 8, epoch=epoch, seed=7)
        assert _batches(now) == _batches(before)


def test_processes_share_each_global_batch_and_every_epoch_reshuffles():
    ds = _Indices(70)
    per_rank = [_batches(Runtime(CPU, rank=r, world_size=2).epoch_loader(ds, 16, epoch=1, seed=2)) for r in (0, 1)]
    sampler = torch.utils.data.DistributedSampler(ds, 1, 0, shuffle=True, seed=2000, drop_last=True)
    sampler.set_epoch(1)
    order = list(sampler)
    assert [len(b) for b in per_rank[0]] == [8] * 4 == [len(b) for b in per_rank[1]]
    for k in range(4):  # step k's two halves are exactly the one-process batch k
        assert sorted(per_rank[0][k] + per_rank[1][k]) == sorted(order[16 * k : 16 * (k + 1)])
    assert _batches(Runtime(CPU, rank=0, world_size=2).epoch_loader(ds, 16, epoch=2, seed=2)) != per_rank[0]
    with pytest.raises(ValueError, match="batch_size 15: the global batch must divide evenly among 2 processes"):
        Runtime(CPU, rank=0, world_size=2).epoch_loader(ds, 15, epoch=0, seed=0)


def test_weighted_draws_are_shared_out_from_one_draw():
    weights = np.r_[np.ones(30), np.full(10, 5.0)]
    gen = lambda: torch.Generator().manual_seed(4 * 1000 + 0)  # noqa: E731
    whole = list(torch.utils.data.WeightedRandomSampler(torch.as_tensor(weights), 40, True, generator=gen()))
    parts = [
        list(
            ProcessShare(
                torch.utils.data.WeightedRandomSampler(torch.as_tensor(weights), 40, True, generator=gen()), r, 3
            )
        )
        for r in range(3)
    ]
    assert [len(p) for p in parts] == [13, 13, 13]
    assert sorted(sum(parts, [])) == sorted(whole[:39])
    loaders = [
        Runtime(CPU, rank=r, world_size=2).epoch_loader(_Indices(40), 8, epoch=0, seed=4, weights=weights)
        for r in (0, 1)
    ]
    halves = [sum(_batches(loader), []) for loader in loaders]
    assert sorted(halves[0] + halves[1]) == sorted(whole)


# ------------------------------------------------------------------ DDP == one process

EQUIVALENCE = textwrap.dedent(
    """
    import sys
    import torch
    from torch import nn
    from training.identity.config import IdentityTrainConfig
    from training.identity.losses import build_head
    from training.identity.model import IdentityNet
    from training.identity.train import TrainStep
    from training.runtime import setup, teardown, unwrap

    mode, out = sys.argv[1], sys.argv[2]
    # the identity trainer's own step (loss_terms: pose branch + orthogonality, PAA head, RegularFace
    # over all classes; its batch-only form is a per-process mean, not the global one) on a small
    # trunk without batch norm: batch statistics are per process under DDP by design
    cfg = IdentityTrainConfig(
        val_cfp_folds=(), width=0.25, embedding_dim=16, embedding_bn=False, head="paa", pose_weight=1.0,
        pose_target="angles", orthogonality_weight=0.1, regularface_weight=1.0, batch_size=16, seed=3,
        device="cpu",
    )
    rt = setup(cfg.device, cfg.precision)
    torch.set_num_threads(1)
    torch.manual_seed(cfg.seed)
    net = IdentityNet(cfg.trunk, cfg.width, cfg.depth, cfg.embedding_dim, pose_dim=cfg.pose_dim, input_size=32,
                      embedding_bn=False)
    net.trunk = nn.Sequential(
        nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU(), nn.Flatten(),
        nn.Linear(16 * 8 * 8, net.trunk.out_dim),
    )
    net.pose_head[0] = nn.Identity()
    head = build_head(cfg.head, cfg.embedding_dim, 5)
    g = torch.Generator().manual_seed(0)
    n = 64
    data = {
        "image": torch.randn(n, 3, 32, 32, generator=g), "label": torch.randint(0, 5, (n,), generator=g),
        "yaw": torch.rand(n, generator=g) * 180 - 90, "pose": torch.randn(n, 3, generator=g),
    }

    class Faces(torch.utils.data.Dataset):
        def __len__(self):
            return n

        def __getitem__(self, i):
            return i

    def collate(idx):
        idx = torch.tensor(idx)
        return {k: v[idx] for k, v in data.items()}

    init = {k: v.clone() for k, v in net.state_dict().items()}
    opt = torch.optim.SGD(list(net.parameters()) + list(head.parameters()), lr=0.01, momentum=0.9, weight_decay=5e-4)
    model = rt.wrap(TrainStep(cfg, net, head))
    model.train()
    scaler = rt.scaler()
    losses = []
    for epoch in range(2):
        if mode == "ddp":
            loader = rt.epoch_loader(Faces(), cfg.batch_size, epoch=epoch, seed=cfg.seed, collate_fn=collate)
        else:  # one process, the global batches in the same order
            sampler = torch.utils.data.DistributedSampler(Faces(), 1, 0, seed=cfg.seed * 1000, drop_last=True)
            sampler.set_epoch(epoch)
            loader = torch.utils.data.DataLoader(Faces(), 16, sampler=sampler, drop_last=True, collate_fn=collate)
        for batch in loader:
            assert len(batch["label"]) == 16 // rt.world_size
            terms = model(batch)
            opt.zero_grad()
            scaler.scale(terms["total"]).backward()
            scaler.step(opt)
            scaler.update()
            losses.append(float(terms["total"].detach()))
    if rt.is_main:
        torch.save({"world": rt.world_size, "init": init, "state": unwrap(model).state_dict(), "losses": losses}, out)
    teardown()
    """
)


def test_two_process_ddp_matches_one_process_on_the_same_global_batches(tmp_path):
    script = tmp_path / "equivalence.py"
    script.write_text(EQUIVALENCE)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    single = subprocess.run(
        [sys.executable, str(script), "single", str(tmp_path / "single.pt")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = _torchrun([str(script), "ddp", str(tmp_path / "ddp.pt")])
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    one, two = torch.load(tmp_path / "single.pt"), torch.load(tmp_path / "ddp.pt")
    assert one["world"] == 1 and two["world"] == 2 and len(one["losses"]) == 8
    assert all(np.isfinite(one["losses"])) and all(np.isfinite(two["losses"]))
    assert set(one["state"]) == set(two["state"]) and "head.weight" in one["state"]
    for name, value in one["state"].items():
        torch.testing.assert_close(two["state"][name], value, rtol=1e-4, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")
        if name.startswith("net."):
            assert not torch.equal(one["init"][name[4:]], value), name  # every parameter moved


# ------------------------------------------------------------------ torchrun on real faces


@pytest.fixture(scope="module")
def orl(real_data):
    root = real_data / "orl"
    if not root.is_dir():
        pytest.skip(f"{root} is absent")
    return root


@pytest.mark.real_data
def test_torchrun_trains_identity_on_orl_and_the_checkpoint_resumes_in_one_process(orl, real_data, tmp_path, capsys):
    from training.config import load_toml
    from training.identity.checkpoint import load_checkpoint
    from training.identity.config import IdentityTrainConfig
    from training.identity.train import train

    run = tmp_path / "run"
    args = ["-m", "training.identity", "train", "--config", str(IDENTITY_SMOKE), "--train-folder", str(orl)]
    done = _torchrun([*args, "--out", str(run), "--device", "cpu"], real_data)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 processes (gloo)" in done.stdout and done.stdout.count("best validation score") == 1  # rank 0 alone
    for name in ("config.json", "classes.json", "meta.json", "last.pt", "best.pt", "metrics.jsonl", "curves.png"):
        assert (run / name).exists(), name
    assert not list(run.glob("*.tmp"))
    rows = _lines(run / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [1] and np.isfinite(rows[0]["loss_total"]) and rows[0]["broken_records"] == 0
    ckpt = load_state(run / "last.pt")
    assert not any(k.startswith("module.") for k in ckpt["model"]) and ckpt["head"]["weight"].shape[0] == 40
    net, meta, _ = load_checkpoint(run / "best.pt")
    assert net(torch.zeros(1, 3, 112, 112)).shape == (1, 128) and meta.input_size == (112, 112)
    # the DDP checkpoint goes on in one process (another world size), one epoch more
    cfg = load_toml(IdentityTrainConfig, IDENTITY_SMOKE)
    cfg = dataclasses.replace(cfg, train_source=str(orl), device="cpu", epochs=2, threads=1)
    capsys.readouterr()
    train(cfg, run)
    assert f"resuming {run} at epoch 2/2" in capsys.readouterr().out
    assert [r["epoch"] for r in _lines(run / "metrics.jsonl")] == [1, 2]
    assert load_state(run / "last.pt")["epoch"] == 1


@pytest.mark.real_data
def test_torchrun_trains_landmarks_and_the_checkpoint_resumes_in_one_process(real_data, tmp_path, capsys):
    from training.config import load_toml
    from training.landmarks.config import LandmarkTrainConfig
    from training.landmarks.train import load_checkpoint, train_supervised

    if not (real_data / "300w").is_dir():
        pytest.skip(f"{real_data / '300w'} is absent")
    run = tmp_path / "lm"
    args = ["-m", "training.landmarks", "train", "--config", str(LANDMARK_SMOKE), "--out", str(run), "--device", "cpu"]
    done = _torchrun(args, real_data)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("supervised: best validation NME") == 1  # rank 0 alone prints
    stage = run / "supervised"
    for path in (run / "meta.json", run / "split.json", stage / "last.pt", stage / "best.pt", stage / "curves.png"):
        assert path.exists(), path
    rows = _lines(stage / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [1] and rows[0]["val_count"] == 231 and np.isfinite(rows[0]["loss_total"])
    assert rows[0]["faces"] == 30 * 32  # 976 training faces in global batches of 32 (16 per process)
    model, _, ckpt = load_checkpoint(stage / "last.pt")
    assert not any(k.startswith("module.") for k in ckpt["model"])
    cfg = dataclasses.replace(load_toml(LandmarkTrainConfig, LANDMARK_SMOKE), device="cpu", epochs=2, threads=1)
    capsys.readouterr()
    train_supervised(cfg, run)
    assert f"resuming {stage} at epoch 2/2" in capsys.readouterr().out
    assert [r["epoch"] for r in _lines(stage / "metrics.jsonl")] == [1, 2]


# ------------------------------------------------------------------ bf16 through each trainer


def _tiny_orl_folder(orl: Path, root: Path, people: int = 4, each: int = 4) -> Path:
    for person in sorted(p for p in orl.iterdir() if p.is_dir())[:people]:
        (root / person.name).mkdir(parents=True)
        for image in sorted(person.glob("*.pgm"))[:each]:
            (root / person.name / image.name).symlink_to(image)
    return root


def _capture_dtype(module: torch.nn.Module, seen: list) -> None:
    module.register_forward_hook(lambda m, i, out: seen.append(out.dtype) if m.training else None)


@pytest.mark.real_data
def test_bf16_autocast_trains_identity_on_a_cpu(orl, tmp_path, monkeypatch):
    from training.config import load_toml
    from training.identity import train as tr
    from training.identity.config import IdentityTrainConfig

    folder = _tiny_orl_folder(orl, tmp_path / "faces")
    cfg = load_toml(IdentityTrainConfig, IDENTITY_SMOKE)
    cfg = dataclasses.replace(cfg, train_source=str(folder), device="cpu", precision="bf16", batch_size=8, threads=1)
    seen: list = []
    build = tr.build_net
    monkeypatch.setattr(tr, "build_net", lambda *a, **k: _hooked(build(*a, **k), seen))
    best = tr.train(cfg, tmp_path / "run")
    rows = _lines(tmp_path / "run" / "metrics.jsonl")
    assert best["epoch"] == 1 and np.isfinite(rows[0]["loss_total"]) and np.isfinite(rows[0]["loss_ce"])
    assert seen and set(seen) == {torch.bfloat16}  # the trunk ran in bf16, two steps of it
    assert load_state(tmp_path / "run" / "last.pt")["config"]["precision"] == "bf16"
    # the recipe's class-count guard for RegularFace over all classes names the option
    monkeypatch.setattr(tr, "REGULARFACE_ALL_MAX", 3)
    with pytest.raises(ValueError, match="regularface_batch_only = false: 4 classes"):
        tr.train(cfg, tmp_path / "run2")


def _hooked(net, seen):
    _capture_dtype(net.id_proj, seen)
    return net


@pytest.mark.real_data
def test_bf16_autocast_trains_landmarks_on_a_cpu(real_data, tmp_path, monkeypatch):
    from edge.landmarks.crop import apply_affine, crop_matrix, landmark_crop_box
    from edge.landmarks.pipnet_decode import neighbour_table
    from training.config import load_toml
    from training.landmarks import train as tr
    from training.landmarks.config import LandmarkTrainConfig
    from training.landmarks.meta import landmark_meta

    if not (real_data / "300w").is_dir():
        pytest.skip(f"{real_data / '300w'} is absent")
    cfg = dataclasses.replace(
        load_toml(LandmarkTrainConfig, LANDMARK_SMOKE), device="cpu", precision="bf16", batch_size=8, threads=1
    )
    samples, val = tr.labelled_300w(cfg, real_data / "300w")
    samples, val = samples[:16], val[:8]
    mf = np.mean([apply_affine(s.points, crop_matrix(landmark_crop_box(s.points), 64)) for s in samples], axis=0)
    meta = landmark_meta(cfg, neighbour_table(mf, cfg.num_nb), mf)
    seen: list = []
    build = tr.build_model

    def hooked(c):
        model = build(c)
        _capture_dtype(model.score, seen)
        return model

    monkeypatch.setattr(tr, "build_model", hooked)
    best = tr.fit(cfg, meta, samples, val, tmp_path / "stage", 1, ())
    row = _lines(tmp_path / "stage" / "metrics.jsonl")[0]
    assert np.isfinite(best["nme"]) and np.isfinite(row["loss_total"]) and row["faces"] == 16
    assert seen and set(seen) == {torch.bfloat16}


@pytest.mark.real_data
def test_bf16_autocast_distils_a_student_on_a_cpu(orl, tmp_path, monkeypatch):
    import cv2

    from edge.geometry.align import ARCFACE_112
    from training.config import to_dict
    from training.identity import model as model_module
    from training.identity.checkpoint import build_net
    from training.identity.config import IdentityTrainConfig
    from training.identity.data import identity_meta
    from training.identity.student import StudentConfig, train_student

    # a 16-face cache of real ORL photos (resized, not aligned: enough for one distillation step)
    paths = [p for person in sorted(orl.iterdir()) if person.is_dir() for p in sorted(person.glob("*.pgm"))[:4]][:16]
    images = np.stack([cv2.resize(cv2.imread(str(p)), (112, 112)) for p in paths])
    cache = tmp_path / "cache"
    cache.mkdir()
    np.savez(
        cache / "orl.npz",
        images=images,
        person=np.array([f"orl/{p.parent.name}" for p in paths]),
        fold=np.zeros(len(paths), np.int64),
        pose=np.zeros((len(paths), 3), np.float32),
        landmarks=np.full((len(paths), 68, 2), 56.0, np.float32),
        profile=np.zeros(len(paths), bool),
        path=np.array([str(p) for p in paths]),
    )
    teacher_cfg = IdentityTrainConfig(width=0.25, val_cfp_folds=())
    torch.manual_seed(0)
    meta = identity_meta(teacher_cfg, ARCFACE_112)
    state = {"model": build_net(teacher_cfg).state_dict(), "config": to_dict(teacher_cfg), "meta": meta.to_dict()}
    torch.save(state, tmp_path / "teacher.pt")
    cfg = StudentConfig(
        cache=str(cache),
        teacher=str(tmp_path / "teacher.pt"),
        sources=("orl",),
        train_cfp_folds=(),
        exclude_lfw_people_file="",
        width=0.25,
        margin_weight=0.5,
        epochs=1,
        batch_size=8,
        threads=1,
        device="cpu",
        precision="bf16",
    )
    seen: list = []

    class HookedNet(model_module.IdentityNet):  # the student (the teacher runs in eval mode: not recorded)
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            _capture_dtype(self.id_proj, seen)

    monkeypatch.setattr(model_module, "IdentityNet", HookedNet)
    best = train_student(cfg, tmp_path / "student")
    row = _lines(tmp_path / "student" / "metrics.jsonl")[0]
    assert best["epoch"] == 1 and np.isfinite(row["loss_distill"]) and np.isfinite(row["loss_margin"])
    assert seen and set(seen) == {torch.bfloat16}
    assert load_state(tmp_path / "student" / "last.pt")["config"]["precision"] == "bf16"
