"""Supervised PIPNet training on 300-W: resumable, one run folder, progress and plots.

Run folder: ``config.json`` (the resolved recipe), ``split.json`` (the validation photos),
``meta.json`` (the model's metadata: neighbour table, mean face), ``last.pt`` (written
atomically every epoch), ``best.pt`` (lowest validation NME), ``metrics.jsonl`` (one line
an epoch), ``metrics.json`` (summary), ``curves.png`` and ``ced.png``.

Where it runs (:mod:`training.runtime`): ``device`` (``--device``), ``precision`` (the network
under autocast, the loss in fp32) and ``channels_last`` from the recipe; under ``torchrun
--nproc_per_node N`` each stage trains DistributedDataParallel with ``batch_size`` as the global
batch, and rank 0 alone validates and writes the run folder (shared by every node). With one
process on a CPU and the default fp32 a run computes exactly what it did before.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from edge.datasets.w300 import list_300w, load_landmarks, split_300w
from edge.landmarks.landmarker import Landmarker
from edge.landmarks.pipnet_decode import neighbour_table
from edge.metrics.landmarks import summarise
from edge.runtime.meta import ModelMeta, meta_from_dict
from training.config import from_dict, to_dict
from training.landmarks.config import LandmarkTrainConfig
from training.landmarks.data import LandmarkDataset, LandmarkSample, detect_crop_boxes, mean_face
from training.landmarks.evaluate import evaluate_labelled
from training.landmarks.meta import landmark_meta
from training.landmarks.model import PipNet
from training.landmarks.targets import pipnet_loss
from training.run_folder import append_metrics, atomic_save, load_state, read_metrics, write_json
from training.runtime import DeviceRunner, is_main_process, setup, use_channels_last


def labelled_300w(cfg: LandmarkTrainConfig, root=None) -> tuple[list[LandmarkSample], list[LandmarkSample]]:
    faces = list_300w(root)
    train, val = split_300w(faces, val_fraction=cfg.val_fraction, seed=cfg.split_seed)

    def samples(fs):
        return [LandmarkSample(f.image_path, load_landmarks(f), 1, f.name) for f in fs]

    return samples(train), samples(val)


def build_model(cfg: LandmarkTrainConfig) -> PipNet:
    torch.manual_seed(cfg.seed)
    return PipNet(cfg.backbone, 68, cfg.num_nb, **cfg.backbone_options)


def load_checkpoint(path: Path) -> tuple[PipNet, ModelMeta, dict]:
    """A trained model (on the CPU, whatever device trained it), its metadata and the raw checkpoint dict."""
    ckpt = load_state(path)
    cfg = from_dict(LandmarkTrainConfig, ckpt["config"], f"{path}:config")
    if cfg.backbone_options.get("pretrained"):  # the checkpoint holds every weight: no pretrained file needed
        cfg = dataclasses.replace(cfg, backbone_options={**cfg.backbone_options, "pretrained": False})
    model = build_model(cfg)
    model.load_state_dict(ckpt["model"])
    model.eval()
    return model, meta_from_dict(ckpt["meta"], str(path)), ckpt


def validate(model: PipNet, meta: ModelMeta, val: list[LandmarkSample]) -> np.ndarray:
    return evaluate_labelled(Landmarker(DeviceRunner(model, meta)), [(s.image_path, s.points) for s in val])


def fit(
    cfg: LandmarkTrainConfig,
    meta: ModelMeta,
    train_samples: list[LandmarkSample],
    val: list[LandmarkSample],
    stage_dir: Path,
    epochs: int,
    milestones: tuple[int, ...],
) -> dict:
    """Train a freshly initialised PIPNet for ``epochs``; resumes from ``stage_dir/last.pt``
    (written on any device, by any number of processes). Under torchrun every process calls it."""
    rt = setup(cfg.device, cfg.precision)
    main = rt.is_main
    if main:
        stage_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(rt.threads(cfg.threads))
    neighbours = np.asarray(meta.extra["neighbours"])
    model = build_model(cfg)
    if cfg.init_from:
        init = load_state(cfg.init_from)
        try:
            model.load_state_dict(init["model"])
        except (KeyError, RuntimeError) as err:
            raise ValueError(f"init_from {cfg.init_from}: not a checkpoint of this architecture ({err})") from None
    channels_last = use_channels_last(cfg.channels_last, rt.device, cpu_default=False)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.to(rt.device)
    trunk = list(model.backbone.parameters())
    trunk_ids = {id(p) for p in trunk}
    heads = [p for p in model.parameters() if id(p) not in trunk_ids]
    opt = torch.optim.Adam(
        [{"params": trunk, "lr": cfg.lr * cfg.backbone_lr_scale}, {"params": heads, "lr": cfg.lr}], lr=cfg.lr
    )
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, list(milestones), gamma=cfg.gamma)
    scaler = rt.scaler()  # fp16 only; a pass-through otherwise
    start, best = 0, {"nme": float("inf")}
    last = stage_dir / "last.pt"
    if rt.broadcast(last.exists()):
        if not last.exists():
            raise FileNotFoundError(f"{last}: rank {rt.rank} cannot see rank 0's checkpoint (share the run folder)")
        ckpt = load_state(last)  # on the CPU; load_state_dict copies onto the model's device
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])  # moves its state to the parameters' device
        sched.load_state_dict(ckpt["scheduler"])
        sched.milestones = Counter(milestones)  # the recipe's schedule, as it reads now, rules on resume
        if scaler.is_enabled() and "scaler" in ckpt:
            scaler.load_state_dict(ckpt["scaler"])
        start, best = ckpt["epoch"] + 1, ckpt["best"]
        if main:
            print(f"resuming {stage_dir} at epoch {start + 1}/{epochs} (best val NME {best['nme']:.4f})")
    # Several processes: a batch of only pseudo-labelled faces in a coarse STC round leaves the
    # offset heads out of the loss on that process, hence find_unused_parameters there.
    coarse = any(s.coarse_factor != 1 for s in train_samples)
    net = rt.wrap(model, find_unused_parameters=coarse)
    dataset = LandmarkDataset(train_samples, meta, neighbours, cfg.augment, seed=cfg.seed)
    log_path = stage_dir / "metrics.jsonl"
    for epoch in range(start, epochs):
        dataset.epoch = epoch
        loader = rt.epoch_loader(
            torch.utils.data.Subset(dataset, epoch_indices(cfg, train_samples, epoch)),
            cfg.batch_size,
            epoch=epoch,
            seed=cfg.seed,
            workers=cfg.workers,
        )
        net.train()
        sums, t0 = {}, time.time()
        bar = tqdm(
            loader,
            desc=f"{stage_dir.name} epoch {epoch + 1}/{epochs}",
            leave=False,
            mininterval=2 if sys.stderr.isatty() else 30,
            disable=not main,
        )
        for i, batch in enumerate(bar):
            batch = rt.to_device(batch)
            image = batch["image"]
            if channels_last:
                image = image.contiguous(memory_format=torch.channels_last)
            with rt.autocast():
                outputs = net(image)
            losses = pipnet_loss(
                tuple(o.float() for o in outputs),  # the loss in fp32 (a no-op for fp32 outputs)
                batch["cell"],
                batch["off"],
                batch["nb_off"],
                batch["coarse_factor"],
                cfg.score_weight,
                cfg.nb_weight,
                mask=batch["mask"],
                nb_mask=batch["nb_mask"],
            )
            opt.zero_grad()
            scaler.scale(losses["total"]).backward()
            scaler.step(opt)
            scaler.update()
            for k, v in losses.items():  # float64 sums on the device (as exact as Python's floats), no sync
                v = v.detach().double()
                sums[k] = sums[k] + v if k in sums else v
            if main and i % 10 == 0:
                bar.set_postfix(loss=f"{losses['total'].item():.4f}", refresh=False)
        sched.step()
        means = rt.mean_over_processes(sums)
        if main:
            errors = validate(model, meta, val)
            scores = summarise(errors).as_dict()
            row = {
                "epoch": epoch + 1,
                "lr": opt.param_groups[-1]["lr"],
                "faces": len(loader) * cfg.batch_size,
                "seconds": round(time.time() - t0, 1),
                **{f"loss_{k}": v / max(1, len(loader)) for k, v in means.items()},
                **{f"val_{k}": v for k, v in scores.items()},
            }
            append_metrics(log_path, row)
            print(json.dumps(row))
            state = {"model": model.state_dict(), "config": to_dict(cfg), "meta": meta.to_dict()}
            if scores["nme"] < best["nme"]:
                best = {"nme": scores["nme"], "epoch": epoch + 1}
                atomic_save({**state, "val": scores, "epoch": epoch}, stage_dir / "best.pt")
            extra = {"scaler": scaler.state_dict()} if scaler.is_enabled() else {}
            atomic_save(
                {
                    **state,
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                    "epoch": epoch,
                    "best": best,
                    **extra,
                },
                last,
            )
        best = rt.broadcast(best)  # the others wait here while rank 0 validates and saves
    if main:
        plot_curves(log_path, stage_dir / "curves.png")
    return best


def epoch_indices(cfg: LandmarkTrainConfig, samples: list[LandmarkSample], epoch: int) -> list[int]:
    """The faces one epoch trains on: every non-CFP face, plus ``cfg.cfp_per_epoch`` CFP faces
    drawn afresh each epoch (all of them when 0), profiles at ``cfg.cfp_profile_share``."""
    cfp = [i for i, s in enumerate(samples) if s.name.startswith("cfp:")]
    rest = [i for i, s in enumerate(samples) if not s.name.startswith("cfp:")]
    if not cfg.cfp_per_epoch or cfg.cfp_per_epoch >= len(cfp):
        return rest + cfp
    rng = np.random.default_rng((cfg.seed, 7, epoch))
    if not cfg.cfp_profile_share:
        return rest + sorted(rng.choice(cfp, cfg.cfp_per_epoch, replace=False).tolist())
    prof = [i for i in cfp if "/profile/" in samples[i].name]
    front = [i for i in cfp if "/profile/" not in samples[i].name]
    n_prof = min(len(prof), round(cfg.cfp_per_epoch * cfg.cfp_profile_share))
    n_front = min(len(front), cfg.cfp_per_epoch - n_prof)
    picked = rng.choice(prof, n_prof, replace=False).tolist() + rng.choice(front, n_front, replace=False).tolist()
    return rest + sorted(picked)


def plot_curves(log_path: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(log_path)
    if not rows:
        return
    ep = [r["epoch"] for r in rows]
    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    ax[0].plot(ep, [r["loss_total"] for r in rows], label="total")
    ax[0].plot(ep, [r["loss_score"] * 10 for r in rows], label="10 x score")
    ax[0].plot(ep, [r["loss_offset"] for r in rows], label="offset")
    ax[0].plot(ep, [r["loss_neighbour"] for r in rows], label="neighbour")
    ax[0].set_xlabel("epoch")
    ax[0].set_ylabel("training loss")
    ax[0].legend()
    ax[1].plot(ep, [r["val_nme"] for r in rows])
    ax[1].set_xlabel("epoch")
    ax[1].set_ylabel("validation NME (inter-ocular)")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def prepare_run(cfg: LandmarkTrainConfig, run_dir: Path, data_root=None):
    """Split, neighbour table, metadata; written to the run folder (kept on resume). Under
    torchrun rank 0 writes; call it rank 0 first (``Runtime.main_first``) so the others read
    rank 0's metadata and cached boxes."""
    main = is_main_process()
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
    train, val = labelled_300w(cfg, data_root)
    meta_path = run_dir / "meta.json"
    if meta_path.exists():
        meta = meta_from_dict(json.loads(meta_path.read_text()), str(meta_path))
    else:
        mf = mean_face(train, cfg.input_size)
        meta = landmark_meta(cfg, neighbour_table(mf, cfg.num_nb), mf)
        if main:
            write_json(meta_path, meta.to_dict())
    if main:
        write_json(run_dir / "config.json", to_dict(cfg))
    cfp = cfp_fiducial_samples(cfg, run_dir, data_root)
    if not main:
        return train + cfp, val, meta
    write_json(
        run_dir / "split.json",
        {
            "rule": f"split_300w(val_fraction={cfg.val_fraction}, seed={cfg.split_seed}), by photo id",
            "train": len(train),
            "val": len(val),
            "cfp_partial": {"folds": list(cfg.cfp_folds), "faces": len(cfp)},
            "val_faces": [s.name for s in val],
        },
    )
    return train + cfp, val, meta


def cfp_fiducial_samples(cfg: LandmarkTrainConfig, run_dir: Path, data_root=None) -> list[LandmarkSample]:
    """CFP photos of ``cfg.cfp_folds`` with their fiducials in the 68 scheme (NaN where none maps),
    each cropped from its best BlazeFace box through the device's crop policy (boxes cached in
    the run folder); photos without a detection are left out."""
    if not cfg.cfp_folds:
        return []
    from edge.datasets.cfp import cfp_photos, fold_identities, read_fiducials
    from edge.datasets.cfp_fiducials import fiducials_to_ibug68

    if is_main_process():
        run_dir.mkdir(parents=True, exist_ok=True)
    ids = [i for f in cfg.cfp_folds for i in fold_identities(f)]
    photos = cfp_photos(None if data_root is None else Path(data_root) / "cfp", identities=ids)
    boxes = detect_crop_boxes([p.image_path for p in photos], run_dir / "cfp_boxes.json", cfg.cfp_min_detection_score)
    samples = []
    for photo in photos:
        box = boxes.get(str(photo.image_path))
        if not box:
            continue
        points, _ = fiducials_to_ibug68(read_fiducials(photo.fiducials_path), photo.view)
        name = f"cfp:{photo.identity:03d}/{photo.view}/{photo.number:02d}"
        samples.append(LandmarkSample(photo.image_path, points.astype(np.float64), 1, name, np.asarray(box)))
    return samples


def train_supervised(cfg: LandmarkTrainConfig, run_dir: Path, data_root=None) -> dict:
    rt = setup(cfg.device, cfg.precision)
    with rt.main_first():
        train, val, meta = prepare_run(cfg, run_dir, data_root)
    best = fit(cfg, meta, train, val, run_dir / "supervised", cfg.epochs, cfg.milestones)
    if rt.is_main:
        write_json(run_dir / "metrics.json", {"supervised": best})
    return best
