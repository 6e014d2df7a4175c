"""Fine-tuning the imported dlib ResNet (guards, frozen levels), the student distilled from it,
test-time flip and the alignment the exported models carry, on real ORL faces."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edge.geometry.align import DLIB_150, AlignmentSpec  # noqa: E402
from training.identity.config import IdentityTrainConfig  # noqa: E402


def _need_dlib_file():
    from training.nn.dlib_resnet import dlib_model_file

    try:
        return dlib_model_file()
    except FileNotFoundError as err:
        pytest.skip(f"the baseline extra is absent ({err}); CI has it")


def _orl_dlib(cache_dir, **overrides) -> IdentityTrainConfig:
    """The guarded dlib fine-tune on the cached ORL faces alone (4 people)."""
    base = dict(
        cache=str(cache_dir),
        train_cfp_folds=(),
        val_cfp_folds=(),
        use_lfw=False,
        trunk="dlib_resnet",
        embedding_bn=False,
        pretrained="dlib",
        frozen_levels=2,
        trunk_lr_mult=0.1,
        grad_clip=5.0,
        head_init="centres",
        anchor_weight=1.0,
        self_distill_weight=1.0,
        epochs=2,
        batch_size=8,
        lr=0.01,
        warmup_epochs=0.1,
        threads=2,
    )
    return IdentityTrainConfig(**{**base, **overrides})


def _orl_imported(cache_dir) -> IdentityTrainConfig:
    """The imported network as it is (0 epochs: no guard applies)."""
    return _orl_dlib(
        cache_dir, epochs=0, frozen_levels=0, head_init="random", anchor_weight=0.0, self_distill_weight=0.0
    )


@pytest.fixture(scope="module")
def orl_chips(real_data, tmp_path_factory):
    """40 real ORL photos cut as dlib's 150x150 chips by our device chain."""
    _need_dlib_file()
    from edge.app.enroll import LANDMARK_MODEL
    from training.identity.prepare import prepare_source
    from training.landmarks.evalcli import load_landmarker

    out = tmp_path_factory.mktemp("idcache_dlib")
    prepare_source("orl", real_data, load_landmarker(LANDMARK_MODEL), out, DLIB_150, progress=False, limit=40)
    return out


def test_config_guards_need_pretrained_weights():
    with pytest.raises(ValueError, match="need pretrained weights"):
        IdentityTrainConfig(anchor_weight=1.0)
    with pytest.raises(ValueError, match="only the dlib_resnet trunk"):
        IdentityTrainConfig(pretrained="dlib")
    with pytest.raises(ValueError, match="frozen_levels"):
        IdentityTrainConfig(trunk="dlib_resnet", frozen_levels=5)


def test_recipes_extend_a_base(tmp_path):
    from training.config import ConfigError, load_toml

    (tmp_path / "base.toml").write_text('cache = "c"\nepochs = 3\nlr = 0.01\n[augment]\nflip = 0.5\ngray = 0.1\n')
    (tmp_path / "arm.toml").write_text('extends = "base.toml"\nepochs = 5\n[augment]\ngray = 0.0\n')
    cfg = load_toml(IdentityTrainConfig, tmp_path / "arm.toml")
    assert (cfg.cache, cfg.epochs, cfg.lr) == ("c", 5, 0.01)
    assert (cfg.augment.flip, cfg.augment.gray) == (0.5, 0.0)
    (tmp_path / "loop.toml").write_text('extends = "loop.toml"\n')
    with pytest.raises(ConfigError, match="leads back to itself"):
        load_toml(IdentityTrainConfig, tmp_path / "loop.toml")


def test_shipped_recipes_load():
    from pathlib import Path

    from training.config import load_toml
    from training.identity.student import load_student_config

    folder = Path(__file__).resolve().parents[1] / "training" / "identity" / "configs"
    arms = sorted((folder / "dlib").rglob("*.toml"))  # the arms, and the levers and guards measured
    assert len(arms) >= 7 and any(p.parent.name == "levers" for p in arms)
    for path in arms:
        cfg = load_toml(IdentityTrainConfig, path)
        assert cfg.trunk == "dlib_resnet" and 9 not in cfg.train_cfp_folds
    for name in ("student_cpu.toml", "student_session.toml"):
        student = load_student_config(folder / name)
        assert 9 not in student.train_cfp_folds and "w300" in student.sources
    shipped = load_toml(IdentityTrainConfig, folder / "dlib" / "shipped.toml")
    assert shipped.train_cfp_folds == (1, 2, 3, 4, 5, 6, 7, 8) and not shipped.val_cfp_folds


@pytest.mark.real_data
def test_zero_epochs_keeps_the_imported_network(orl_chips, tmp_path):
    """The "no fine-tuning" arm saves dlib's network as imported: its export gives dlib's
    descriptor direction for the same chip."""
    from edge.core.faces import alignment_for, embed_batch
    from edge.runtime.runner import load_model
    from training.identity.export import export_onnx
    from training.identity.train import train
    from training.nn.dlib_resnet import INPUT_MEAN_RGB, load_dlib_resnet

    train(_orl_imported(orl_chips), tmp_path / "run")
    out = export_onnx(tmp_path / "run" / "best.pt", tmp_path / "r29.onnx", flip=True)
    runner = load_model(out)
    assert alignment_for(runner) == DLIB_150
    assert runner.meta.extra["test_time_flip"] is True  # where eval --flip on measured a gain
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["extra"]["pretrained"]["licence"].startswith("CC0")
    assert len(meta["extra"]["pretrained"]["sha256"]) == 64
    with np.load(orl_chips / "orl.npz") as z:
        chips = z["images"][:6]
    got = embed_batch(runner, list(chips), flip=False)  # the network itself, not face + mirror
    model, _ = load_dlib_resnet()
    x = torch.from_numpy(np.stack([c[:, :, ::-1] for c in chips]).astype(np.float32)).permute(0, 3, 1, 2)
    with torch.no_grad():
        want = model((x - torch.tensor(INPUT_MEAN_RGB).view(1, 3, 1, 1)) / 256.0).numpy()
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    assert (got * want).sum(1).min() > 0.9999


@pytest.mark.real_data
def test_guarded_finetune_trains_resumes_and_exports(orl_chips, tmp_path):
    from edge.core.faces import alignment_for
    from edge.runtime.runner import load_model
    from training.identity.checkpoint import load_checkpoint
    from training.identity.export import export_onnx
    from training.identity.train import train

    run = tmp_path / "ft"
    cfg = _orl_dlib(orl_chips, head="paa", pose_weight=1.0, orthogonality_weight=0.1, regularface_weight=1.0)
    train(dataclasses.replace(cfg, epochs=1), run)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and {"loss_anchor", "loss_self_distill", "loss_pose", "loss_orth"} <= set(rows[0])
    train(cfg, run)  # resumes at epoch 2
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert rows[1]["loss_ce"] < rows[0]["loss_ce"]
    # frozen levels cached once beside the cache, keyed by photo path
    assert (orl_chips / "frozen_dlib_resnet_l2.npz").exists()
    net, meta, _ = load_checkpoint(run / "last.pt")
    assert meta.input_size == (150, 150)
    # the frozen levels did not move, the rest did
    from training.identity.model import IdentityNet, import_dlib_weights

    fresh = IdentityNet("dlib_resnet", embedding_dim=128, input_size=150, embedding_bn=False)
    import_dlib_weights(fresh)
    assert torch.equal(fresh.trunk.net.stem_conv.weight, net.trunk.net.stem_conv.weight)
    assert torch.equal(fresh.trunk.net.levels[1][0].conv1.weight, net.trunk.net.levels[1][0].conv1.weight)
    assert not torch.equal(fresh.trunk.net.levels[3][0].conv1.weight, net.trunk.net.levels[3][0].conv1.weight)
    out = export_onnx(run / "last.pt", tmp_path / "ft.onnx")  # checks ONNX against torch itself
    assert alignment_for(load_model(out)) == DLIB_150


@pytest.mark.real_data
def test_student_learns_the_teachers_embedding(orl_chips, tmp_path):
    from edge.core.faces import alignment_for
    from edge.runtime.runner import load_model
    from training.identity.export import export_onnx
    from training.identity.student import StudentConfig, train_student
    from training.identity.train import train

    teacher = tmp_path / "teacher"
    train(_orl_imported(orl_chips), teacher)
    cfg = StudentConfig(
        cache=str(orl_chips),
        teacher=str(teacher / "best.pt"),
        sources=("orl",),
        train_cfp_folds=(),
        exclude_lfw_people_file="",
        width=0.25,
        epochs=3,
        batch_size=8,
        lr=0.05,
        margin_weight=0.1,
    )
    train_student(cfg, tmp_path / "student")
    rows = [json.loads(line) for line in (tmp_path / "student" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["loss_distill"] < rows[0]["loss_distill"]
    out = export_onnx(tmp_path / "student" / "best.pt", tmp_path / "student.onnx")
    runner = load_model(out)
    # the student takes the teacher's crop geometry at its own size
    assert alignment_for(runner) == AlignmentSpec("dlib_68", 112, 0.25)
    assert runner.meta.extra["student_of"]["teacher"].endswith("best.pt")


def test_test_time_flip_sums_the_mirror_and_follows_the_metadata():
    from edge.core.faces import embed_batch, model_flips
    from edge.runtime.meta import ModelMeta
    from edge.runtime.runner import ModelRunner

    class Columns(ModelRunner):
        """A toy model: the embedding is the mean of each image column (so mirroring reverses it)."""

        def _run(self, batch):
            return [batch.mean(axis=(1, 2))]

    def runner(extra):
        meta = ModelMeta(
            name="toy",
            version="1",
            task="identity",
            format="onnx",
            precision="fp32",
            input_size=(4, 4),
            input_layout="NCHW",
            color_order="GRAY",
            normalisation={"mean": [0.0], "std": [1.0]},
            input_name="image",
            output_names=("embedding",),
            extra=extra,
        )
        return Columns("<toy>", meta)

    face = np.array([[1, 2, 3, 10]] * 4, dtype=np.uint8)
    plain = embed_batch(runner({}), [face])[0]
    assert np.allclose(plain, np.array([1, 2, 3, 10]) / np.linalg.norm([1, 2, 3, 10]))
    both = np.array([11, 5, 5, 11], dtype=np.float64)
    assert np.allclose(embed_batch(runner({}), [face], flip=True)[0], both / np.linalg.norm(both))
    assert model_flips(runner({"test_time_flip": True}))
    assert np.allclose(embed_batch(runner({"test_time_flip": True}), [face])[0], both / np.linalg.norm(both))
    assert np.allclose(embed_batch(runner({"test_time_flip": True}), [face], flip=False)[0], plain)


def _eval_report(boxes, flip, ff, fp, fp_profile):
    yaw = {"0-30": {"accuracy": fp}, "30-60": {"accuracy": fp}, "60-90": {"accuracy": fp_profile}}
    return {
        "boxes": boxes,
        "flip": flip,
        "FF": {"accuracy": ff, "dense": {"tar@far=0.001": ff, "eer": 1 - ff}},
        "FP": {"accuracy": fp, "per_probe_yaw": yaw, "dense": {"tar@far=0.001": fp / 2, "eer": 1 - fp}},
    }


def test_card_sections_say_what_was_measured(tmp_path):
    from training.identity.finetune_card import demo_section, landmark_cost_lines, student_section
    from training.model_card import CARD_BEGIN, CARD_END, write_card_text

    # the quantization report's section survives a rewrite of the card; nothing else of the old text does
    card = tmp_path / "MODEL_CARD.md"
    card.write_text(f"# old card\nstale line\n\n{CARD_BEGIN}\n| int8 | 0.99 |\n{CARD_END}\n")
    write_card_text(card, "# new card\nfresh line")
    text = card.read_text()
    assert "fresh line" in text and "stale line" not in text and "| int8 | 0.99 |" in text
    assert text.index("fresh line") < text.index(CARD_BEGIN)
    write_card_text(card, "# again")
    assert card.read_text().count(CARD_BEGIN) == 1

    demo = {
        "model": "m_int8.onnx", "enrolled_people": 20, "stranger_people": 20,
        "frontal_identification_rate": 0.975, "frontal_misidentified": 0, "frontal_probes": 160,
        "profile_identification_rate": 0.4875, "profile_misidentified": 3, "profile_probes": 80,
        "frontal_stranger_probes": 200, "frontal_stranger_false_accepts": 7,
        "profile_stranger_probes": 80, "profile_stranger_false_accepts": 1,
    }  # fmt: skip
    lines = "\n".join(demo_section(demo))
    assert "frontal >= 95.0% (met)" in lines and "profile >= 80.0% (NOT met)" in lines
    assert "8 of 280" in lines and "strangers <= 1.0% (NOT met)" in lines
    open_set = dict(demo, stranger_rate=0.01, frontal_stranger_false_accepts=2, profile_stranger_false_accepts=0)
    lines = "\n".join(demo_section(demo, open_set))
    assert "8 of 280" in lines and "`matching.stranger_rate = 0.01`" in lines
    assert "2 of 280" in lines and lines.count("strangers <= 1.0% (met)") == 1

    det = _eval_report("detector", "on", 0.997, 0.913, 0.849)
    fid = _eval_report("fiducials", "on", 0.997, 0.939, 0.967)
    lines = "\n".join(landmark_cost_lines({"a": det, "b": fid}))
    assert "FP 91.3% from detector boxes against 93.9%" in lines and "84.9% against 96.7%" in lines
    assert landmark_cost_lines({"a": det}) == []  # nothing to compare against

    student = dict(_eval_report("detector", "off", 0.95, 0.80, 0.7), model="student.onnx")
    lines = "\n".join(student_section(student, det))
    assert "4.7 points (FF) and 11.3 points (FP) below its teacher" in lines and "not shipped" in lines
