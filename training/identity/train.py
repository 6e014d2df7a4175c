"""Identity training from the aligned-face cache: resumable, one run folder, progress and plots.

Run folder: ``config.json`` (the resolved recipe), ``classes.json``, ``meta.json``, ``last.pt``
(written atomically every epoch), ``best.pt`` (best validation score on the validation CFP
folds), ``metrics.jsonl`` (one line an epoch), ``metrics.json`` (summary), ``curves.png``.

Validation after each epoch: CFP FF and FP protocol pairs of ``val_cfp_folds`` (never trained
on), accuracy at the threshold best on those same pairs, and the dense-pair EER. The epoch kept
as ``best.pt`` has the highest mean of FF and FP accuracy.

Training faces: the aligned-face cache (``training.identity.prepare``), or a streamed source
(``train_source``, ``--train-folder DIR`` / ``--train-rec FILE.rec``: an insightface pack such as
MS1MV2, :mod:`training.identity.data.streamed`), read by ``loader_workers`` DataLoader processes.

Where it runs (:mod:`training.runtime`): ``device`` (``--device``), ``precision`` (fp32 | bf16 |
fp16; the network under autocast, the margin head and every loss in fp32) and ``channels_last``
from the recipe; under ``torchrun --nproc_per_node N`` the trunk and the margin head train as one
DistributedDataParallel module (the head's class weights are all-reduced like the trunk's),
``batch_size`` is the global batch, and rank 0 alone validates and writes the run folder.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from edge.metrics.verification import best_threshold, eer
from edge.runtime.meta import ModelMeta
from training.config import to_dict
from training.identity.checkpoint import build_net
from training.identity.config import IdentityTrainConfig
from training.identity.data import (
    FrozenFeatureDataset,
    IdentityDataset,
    identity_meta,
    sample_weights,
    select_training,
)
from training.identity.evaluate import PROTOCOLS, cache_face_table, dense_scores, protocol_scores
from training.identity.losses import build_head, exclusive_regularizer, orthogonality_loss
from training.identity.model import IdentityNet, exported_parameters, import_dlib_weights
from training.identity.prepare import cache_alignment, load_cache
from training.nn.dlib_resnet import LICENCE as DLIB_LICENCE
from training.nn.dlib_resnet import ORIGIN as DLIB_ORIGIN
from training.run_folder import append_metrics, atomic_save, load_state, read_metrics, write_json
from training.runtime import DeviceRunner, setup, use_channels_last

__all__ = ["STREAMED_SOURCES", "train"]

# train() reads streamed sources (cfg.train_source): the CLI checks this before accepting
# --train-folder / --train-rec.
STREAMED_SOURCES = True
# RegularFace over all classes (regularface_batch_only = false) forms a C x C cosine matrix each
# step: above this many classes the recipe must use the batch's classes only.
REGULARFACE_ALL_MAX = 20_000


def validate(net: IdentityNet, meta: ModelMeta, cache: dict, folds, root) -> dict:
    table = cache_face_table(DeviceRunner(net, meta), cache, folds)
    out = {}
    for protocol in PROTOCOLS:
        scores, labels, _ = protocol_scores(root, protocol, folds, table)
        out[f"{protocol}_acc"] = best_threshold(scores, labels)[1]
        ds, dl = (np.concatenate(parts) for parts in zip(*(dense_scores(table, f, protocol, root) for f in folds)))
        out[f"{protocol}_dense_eer"] = eer(ds, dl)
    out["score"] = (out["FF_acc"] + out["FP_acc"]) / 2
    return out


def cache_sources(cfg: IdentityTrainConfig) -> tuple[str, ...]:
    """The cache files a recipe needs (a run without CFP folds does not need cfp.npz; a streamed
    source needs only the validation folds' cfp.npz)."""
    if cfg.train_source:
        return ("cfp",) if cfg.val_cfp_folds else ()
    wanted = {"cfp": bool(cfg.train_cfp_folds or cfg.val_cfp_folds), "lfw": cfg.use_lfw, "orl": cfg.use_orl}
    return tuple(k for k, v in wanted.items() if v)


def lr_at(cfg: IdentityTrainConfig, step: int, steps_per_epoch: int) -> float:
    """Linear warm-up, then cosine decay to zero over the run (per step)."""
    total = cfg.epochs * steps_per_epoch
    warm = max(1, int(cfg.warmup_epochs * steps_per_epoch))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


def loss_terms(cfg, net, head, batch, original=None, autocast=None) -> dict[str, torch.Tensor]:
    """The recipe's loss terms on one batch. ``batch["image"]`` is the input, or, where the
    early levels are frozen, ``batch["feat"]`` their cached output; ``original`` is the frozen
    pretrained net with ``centres`` (the anchor and self-distillation guards). ``autocast``: a
    context factory the networks run in (mixed precision); the margin head and every loss run
    in fp32 on the networks' outputs cast back to fp32."""
    with (autocast or contextlib.nullcontext)():
        if "feat" in batch:
            emb, pose = net.heads(net.trunk.rest(batch["feat"], cfg.frozen_levels))
        else:
            emb, pose = net.forward_train(batch["image"])
        ref = None
        if cfg.self_distill_weight:
            with torch.no_grad():
                if "feat" in batch:
                    ref = original.net.id_proj(original.net.trunk.rest(batch["feat"], cfg.frozen_levels))
                else:
                    ref = original.net(batch["image"])
    emb = emb.float()
    pose = pose.float() if pose is not None else None
    logits = head(emb, batch["label"], batch["yaw"])
    terms = {"ce": cfg.head_weight * F.cross_entropy(logits, batch["label"])}
    if cfg.self_distill_weight:
        ref = ref.float()
        # Frontal views only: they keep what the pretrained net does well; profiles are free to move.
        frontal = batch["yaw"].abs() < Original.FRONTAL_DEG
        gap = 1.0 - F.cosine_similarity(emb, ref, dim=1)
        terms["self_distill"] = cfg.self_distill_weight * (gap * frontal).sum() / frontal.sum().clamp_min(1)
    if cfg.anchor_weight:
        anchor = original.centres[batch["label"]]
        terms["anchor"] = cfg.anchor_weight * (1.0 - F.cosine_similarity(emb, anchor, dim=1)).mean()
    if cfg.regularface_weight:
        classes = torch.unique(batch["label"]) if cfg.regularface_batch_only else None
        terms["regular"] = cfg.regularface_weight * exclusive_regularizer(head.weight, classes)
    if cfg.pose_weight:
        terms["pose"] = cfg.pose_weight * F.mse_loss(pose, batch["pose"])
    if cfg.distill_weight:
        teacher = batch["teacher"]
        ok = torch.isfinite(teacher).all(dim=1)
        cos = F.cosine_similarity(emb[ok], teacher[ok], dim=1)
        terms["distill"] = cfg.distill_weight * (1.0 - cos).mean() if ok.any() else emb.sum() * 0.0
    if cfg.orthogonality_weight:
        terms["orth"] = cfg.orthogonality_weight * orthogonality_loss(net.id_proj.weight, net.pose_proj.weight)
    terms["total"] = sum(terms.values())
    with torch.no_grad():
        terms["train_acc"] = (logits.argmax(1) == batch["label"]).float().mean()
    return terms


class TrainStep(torch.nn.Module):
    """The net and its margin head as one module, whose forward is one batch's loss terms: what
    DistributedDataParallel wraps, so the head's class weights are all-reduced with the trunk.
    ``original`` (frozen, not a submodule) rides along as a plain attribute."""

    def __init__(self, cfg: IdentityTrainConfig, net: IdentityNet, head, original=None, autocast=None):
        super().__init__()
        self.cfg, self.net, self.head = cfg, net, head
        self.original, self.autocast = original, autocast

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        return loss_terms(self.cfg, self.net, self.head, batch, self.original, self.autocast)


def _needs_original(cfg: IdentityTrainConfig) -> bool:
    return cfg.head_init == "centres" or bool(cfg.anchor_weight) or bool(cfg.self_distill_weight)


class Original:
    """The pretrained net as imported, frozen (a deep copy taken before any step, or re-imported
    on resume), and each training class's frontal centre in its embedding space: the unit mean of
    the class's non-profile faces (|yaw| < 30 degrees; all its faces where it has none), from
    the unaugmented crops."""

    FRONTAL_DEG = 30.0

    def __init__(self, net: IdentityNet, cfg: IdentityTrainConfig, data, meta: ModelMeta, frozen=None):
        import copy

        self.net = copy.deepcopy(net).eval()
        for p in self.net.parameters():
            p.requires_grad_(False)
        if frozen is not None:  # the cached output of the frozen levels: only the rest runs
            emb = self._embed_frozen(frozen, cfg.frozen_levels)
        else:
            emb = embed_images(self.net, meta, data.images)
        frontal = (~data.profile) & (np.abs(data.pose[:, 0]) < self.FRONTAL_DEG)
        centres = np.zeros((len(data.classes), emb.shape[1]), np.float32)
        for c in range(len(data.classes)):
            rows = np.flatnonzero((data.labels == c) & frontal)
            if not len(rows):
                rows = np.flatnonzero(data.labels == c)
            v = emb[rows].mean(axis=0)
            centres[c] = v / max(np.linalg.norm(v), 1e-9)
        self.centres = torch.from_numpy(centres)

    def to(self, device) -> Original:
        self.net.to(device)
        self.centres = self.centres.to(device)
        return self

    def _embed_frozen(self, feats: np.ndarray, levels: int, batch: int = 128) -> np.ndarray:
        out = []
        with torch.no_grad():
            for i in range(0, len(feats), batch):
                x = torch.from_numpy(feats[i : i + batch].astype(np.float32))
                out.append(F.normalize(self.net.id_proj(self.net.trunk.rest(x, levels)), dim=1).numpy())
        return np.concatenate(out)


def embed_images(net: IdentityNet, meta: ModelMeta, images: np.ndarray) -> np.ndarray:
    """(N, D) unit embeddings of cached crops by ``net`` (device preprocessing, eval mode)."""
    from edge.core.faces import embed_batch

    return embed_batch(DeviceRunner(net, meta), images, batch_size=64)


def param_groups(cfg: IdentityTrainConfig, net: IdentityNet, head) -> list[dict]:
    """Two learning-rate groups: the pretrained part (trunk + identity projection, at
    ``trunk_lr_mult`` x lr; frozen levels left out) and the new parts (margin head, pose branch)."""
    pretrained = {id(p) for p in list(net.trunk.parameters()) + list(net.id_proj.parameters())}
    if cfg.frozen_levels:
        frozen = list(net.trunk.net.stem_conv.parameters()) + list(net.trunk.net.stem_aff.parameters())
        for level in net.trunk.net.levels[: cfg.frozen_levels]:
            frozen += list(level.parameters())
        for p in frozen:
            p.requires_grad_(False)
    trainable = [p for p in net.parameters() if p.requires_grad]
    old = [p for p in trainable if id(p) in pretrained]
    new = [p for p in trainable if id(p) not in pretrained] + list(head.parameters())
    mult = cfg.trunk_lr_mult if cfg.pretrained else 1.0
    groups = [{"params": old, "lr_mult": mult}, {"params": new, "lr_mult": 1.0}]
    return [g for g in groups if g["params"]]


def train(cfg: IdentityTrainConfig, run_dir: Path, data_root=None) -> dict:
    """Train (or resume) the recipe in ``run_dir``; returns the best epoch's validation record.
    Under torchrun every process calls this; rank 0 writes the run folder."""
    from edge.datasets.root import require_data_root

    rt = setup(cfg.device, cfg.precision)
    main = rt.is_main
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
    cfp_root = None
    if cfg.val_cfp_folds:
        cfp_root = Path(data_root) / "cfp" if data_root else require_data_root("cfp")
    torch.set_num_threads(rt.threads(cfg.threads))
    torch.manual_seed(cfg.seed)
    if cfg.train_source:
        from training.identity.data.streamed import SOURCE_ALIGNMENT, build_train_dataset

        # only rank 0 validates, so only rank 0 holds the validation folds' faces
        cache = load_cache(Path(cfg.cache), cache_sources(cfg)) if cfg.val_cfp_folds and main else None
        spec = SOURCE_ALIGNMENT
        if cache is not None and cache_alignment(cache) != spec:
            raise ValueError(f"train_source: validation cache {cfg.cache} is not {spec} crops")
        meta = identity_meta(cfg, spec)
        dataset = data = build_train_dataset(cfg, meta, progress=main)  # has .classes and len()
        if main:
            print(dataset.describe())  # names the yaw sidecar, or says PAA falls back to its base margin
    else:
        cache = load_cache(Path(cfg.cache), cache_sources(cfg), teacher=bool(cfg.distill_weight))
        data = select_training(cache, cfg)
        spec = cache_alignment(cache)
        meta = identity_meta(cfg, spec)
        dataset = None
    num_classes = len(data.classes)
    if cfg.regularface_weight and not cfg.regularface_batch_only and num_classes > REGULARFACE_ALL_MAX:
        raise ValueError(
            f"regularface_batch_only = false: {num_classes} classes make a {num_classes}^2 cosine matrix per step; "
            f"set regularface_batch_only = true (all classes only up to {REGULARFACE_ALL_MAX})"
        )
    if main:
        write_json(run_dir / "config.json", to_dict(cfg))
        write_json(run_dir / "classes.json", data.classes)
        write_json(run_dir / "meta.json", meta.to_dict())
    channels_last = use_channels_last(cfg.channels_last, rt.device, cpu_default=True)
    net = build_net(cfg, spec.size)
    if channels_last:  # measured ~3x faster depthwise and 1x1 convolutions on the CPU here
        net = net.to(memory_format=torch.channels_last)
    head = build_head(cfg.head, cfg.embedding_dim, num_classes, **dict(cfg.head_options))
    last = run_dir / "last.pt"
    resume = rt.broadcast(last.exists())  # every process takes rank 0's word for it
    original = None
    if cfg.pretrained:
        provenance = import_dlib_weights(net, None if cfg.pretrained == "dlib" else cfg.pretrained)
        provenance.update(origin=DLIB_ORIGIN, licence=DLIB_LICENCE)
        meta = dataclasses.replace(meta, extra={**meta.extra, "pretrained": provenance})
        if main:
            write_json(run_dir / "meta.json", meta.to_dict())
    if dataset is not None:
        pass  # streamed: no frozen features, no class centres (the recipe refuses what needs them)
    elif cfg.frozen_levels:
        with rt.main_first():  # rank 0 computes and saves the frozen features, the others read them
            dataset = FrozenFeatureDataset(data, cfg, meta, net, seed=cfg.seed)
    else:
        dataset = IdentityDataset(data, cfg, meta, seed=cfg.seed)
    if cfg.pretrained and _needs_original(cfg):
        original = Original(net, cfg, data, meta, dataset.plain if cfg.frozen_levels else None)
        if cfg.head_init == "centres" and not resume:
            with torch.no_grad():
                head.weight.copy_(original.centres)
        original.to(rt.device)
    net.to(rt.device)
    head.to(rt.device)
    params = param_groups(cfg, net, head)
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    scaler = rt.scaler()
    if main:
        profiles = "" if cfg.train_source else f" ({int(data.profile.sum())} CFP profiles)"
        print(
            f"{run_dir.name}: {len(data)} faces of {num_classes} people{profiles}; "
            f"exported graph {exported_parameters(net) / 1e6:.2f}M parameters; on {rt.describe()}"
        )
    start, best = 0, {"score": -1.0}
    if resume:
        if not last.exists():
            raise FileNotFoundError(f"{last}: rank {rt.rank} cannot see rank 0's checkpoint (share the run folder)")
        ckpt = load_state(last)  # on the CPU; load_state_dict copies onto the net's device
        net.load_state_dict(ckpt["model"])
        head.load_state_dict(ckpt["head"])
        opt.load_state_dict(ckpt["optimizer"])  # moves its state to the parameters' device
        if scaler.is_enabled() and "scaler" in ckpt:
            scaler.load_state_dict(ckpt["scaler"])
        start, best = ckpt["epoch"] + 1, ckpt["best"]
        if main:
            print(f"resuming {run_dir} at epoch {start + 1}/{cfg.epochs} (best val score {best['score']:.4f})")
    step = rt.wrap(TrainStep(cfg, net, head, original, rt.autocast))
    steps = len(dataset) // cfg.batch_size
    log_path = run_dir / "metrics.jsonl"
    weights = sample_weights(data, cfg.profile_oversample) if cfg.profile_oversample != 1.0 else None
    for epoch in range(start, cfg.epochs):
        dataset.epoch = epoch
        loader = rt.epoch_loader(
            dataset,
            cfg.batch_size,
            epoch=epoch,
            seed=cfg.seed,
            workers=cfg.loader_workers,
            collate_fn=dataset.collate,
            weights=weights,
        )
        step.train()
        sums: dict[str, torch.Tensor] = {}
        t0 = time.time()
        bar = tqdm(
            loader,
            desc=f"{run_dir.name} epoch {epoch + 1}/{cfg.epochs}",
            leave=False,
            mininterval=2 if sys.stderr.isatty() else 60,
            disable=not main,
        )
        for i, batch in enumerate(bar):
            for group in opt.param_groups:
                group["lr"] = lr_at(cfg, epoch * steps + i, steps) * group["lr_mult"]
            batch = rt.to_device(batch)
            if "image" in batch and channels_last:
                batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)
            terms = step(batch)
            opt.zero_grad()
            scaler.scale(terms["total"]).backward()
            if cfg.grad_clip:  # the pretrained part only: the new heads' large early gradients must not shrink it
                scaler.unscale_(opt)
                terms["grad_norm"] = torch.nn.utils.clip_grad_norm_(opt.param_groups[0]["params"], cfg.grad_clip)
            scaler.step(opt)
            scaler.update()
            for k, v in terms.items():  # summed on the device: no host sync per step
                v = v.detach().double()
                sums[k] = sums[k] + v if k in sums else v
            if main and i % 10 == 0:
                bar.set_postfix(loss=f"{float(terms['total'].detach()):.3f}", refresh=False)
        means = rt.mean_over_processes(sums)
        broken = 0
        if cfg.train_source:  # records skipped as broken, as each process found them
            broken = round(rt.mean_over_processes({"b": torch.tensor(float(dataset.broken))})["b"] * rt.world_size)
        if main:
            val = validate(net, meta, cache, cfg.val_cfp_folds, cfp_root) if cfg.val_cfp_folds else {"score": 0.0}
            row = {
                "epoch": epoch + 1,
                "lr": opt.param_groups[-1]["lr"],
                "seconds": round(time.time() - t0, 1),
                **{f"loss_{k}" if k != "train_acc" else k: v / max(1, len(loader)) for k, v in means.items()},
                **{f"val_{k}": v for k, v in val.items()},
            }
            if cfg.train_source:
                row["broken_records"] = broken
            append_metrics(log_path, row)
            print(json.dumps(row), flush=True)
            state = {"model": net.state_dict(), "config": to_dict(cfg), "meta": meta.to_dict(), "epoch": epoch}
            # Without validation folds the run keeps its last epoch (the cosine schedule ends there).
            if val["score"] > best["score"] or not cfg.val_cfp_folds:
                best = {"score": val["score"], "epoch": epoch + 1, **{k: v for k, v in val.items() if k != "score"}}
                atomic_save({**state, "val": val}, run_dir / "best.pt")
            extra = {"scaler": scaler.state_dict()} if scaler.is_enabled() else {}
            atomic_save(
                {**state, "head": head.state_dict(), "optimizer": opt.state_dict(), "best": best, **extra}, last
            )
        best = rt.broadcast(best)  # the others wait here while rank 0 validates and saves
    if cfg.epochs == 0 and main:  # the pretrained net as it is (the "no fine-tuning" arm), validated like an epoch
        val = validate(net, meta, cache, cfg.val_cfp_folds, cfp_root) if cfg.val_cfp_folds else {"score": 0.0}
        best = {"score": val["score"], "epoch": 0, **{k: v for k, v in val.items() if k != "score"}}
        state = {"model": net.state_dict(), "config": to_dict(cfg), "meta": meta.to_dict(), "epoch": -1}
        atomic_save({**state, "val": val}, run_dir / "best.pt")
        print(json.dumps({"epoch": 0, **{f"val_{k}": v for k, v in val.items()}}), flush=True)
    if main:
        write_json(
            run_dir / "metrics.json", {"best": best, "epochs": cfg.epochs, "faces": len(data), "classes": num_classes}
        )
        plot_curves(log_path, run_dir / "curves.png")
    return rt.broadcast(best)


def plot_curves(log_path: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not log_path.exists():
        return
    rows = read_metrics(log_path)
    if not rows:
        return
    ep = [r["epoch"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    a.plot(ep, [r["loss_total"] for r in rows], label="total")
    a.plot(ep, [r["loss_ce"] for r in rows], label="margin CE")
    a.set_xlabel("epoch")
    a.set_ylabel("training loss")
    a.legend()
    for key in ("val_FF_acc", "val_FP_acc"):
        if key in rows[0]:
            b.plot(ep, [r[key] for r in rows], label=key[4:])
    b.set_xlabel("epoch")
    b.set_ylabel("validation accuracy (CFP)")
    if b.get_lines():  # a run without validation folds has none
        b.legend()
    for ax in (a, b):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
