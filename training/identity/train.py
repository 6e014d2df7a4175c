"""Identity training from the aligned-face cache: resumable, one run folder, progress and plots.

Run folder: ``config.json`` (the resolved recipe), ``classes.json``, ``meta.json``, ``last.pt``
(written atomically every epoch), ``best.pt`` (best validation score on the validation CFP
folds), ``metrics.jsonl`` (one line an epoch), ``metrics.json`` (summary), ``curves.png``.

Validation after each epoch: CFP FF and FP protocol pairs of ``val_cfp_folds`` (never trained
on), accuracy at the threshold best on those same pairs, and the dense-pair EER. The epoch kept
as ``best.pt`` has the highest mean of FF and FP accuracy.
"""

from __future__ import annotations

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
from edge.runtime.meta import ModelMeta, meta_from_dict
from training.config import from_dict, to_dict
from training.identity.config import IdentityTrainConfig
from training.identity.data import IdentityDataset, identity_meta, sample_weights, select_training
from training.identity.evaluate import PROTOCOLS, cache_face_table, dense_scores, protocol_scores
from training.identity.losses import build_head, exclusive_regularizer, orthogonality_loss
from training.identity.model import IdentityNet, exported_parameters
from training.identity.prepare import load_cache
from training.landmarks.train import atomic_save, write_json
from training.nn.runner import TorchRunner


def build_net(cfg: IdentityTrainConfig) -> IdentityNet:
    return IdentityNet(cfg.trunk, cfg.width, cfg.depth, cfg.embedding_dim, pose_dim=cfg.pose_dim)


def load_checkpoint(path: Path) -> tuple[IdentityNet, ModelMeta, dict]:
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    cfg = from_dict(IdentityTrainConfig, ckpt["config"])
    net = build_net(cfg)
    net.load_state_dict(ckpt["model"])
    net.eval()
    return net, meta_from_dict(ckpt["meta"], str(path)), ckpt


def validate(net: IdentityNet, meta: ModelMeta, cache: dict, folds, root) -> dict:
    table = cache_face_table(TorchRunner(net, meta), cache, folds)
    out = {}
    for protocol in PROTOCOLS:
        scores, labels, _ = protocol_scores(root, protocol, folds, table)
        out[f"{protocol}_acc"] = best_threshold(scores, labels)[1]
        ds, dl = (np.concatenate(parts) for parts in zip(*(dense_scores(table, f, protocol, root) for f in folds)))
        out[f"{protocol}_dense_eer"] = eer(ds, dl)
    out["score"] = (out["FF_acc"] + out["FP_acc"]) / 2
    return out


def cache_sources(cfg: IdentityTrainConfig) -> tuple[str, ...]:
    """The cache files a recipe needs (a run without CFP folds does not need cfp.npz)."""
    wanted = {"cfp": bool(cfg.train_cfp_folds or cfg.val_cfp_folds), "lfw": cfg.use_lfw, "orl": cfg.use_orl}
    return tuple(k for k, v in wanted.items() if v)


def lr_at(cfg: IdentityTrainConfig, step: int, steps_per_epoch: int) -> float:
    """Linear warm-up, then cosine decay to zero over the run (per step)."""
    total = cfg.epochs * steps_per_epoch
    warm = max(1, int(cfg.warmup_epochs * steps_per_epoch))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


def loss_terms(cfg, net, head, batch) -> dict[str, torch.Tensor]:
    emb, pose = net.forward_train(batch["image"])
    logits = head(emb, batch["label"], batch["yaw"])
    terms = {"ce": F.cross_entropy(logits, batch["label"])}
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


def train(cfg: IdentityTrainConfig, run_dir: Path, data_root=None) -> dict:
    from edge.datasets.root import require_data_root

    run_dir.mkdir(parents=True, exist_ok=True)
    cfp_root = None
    if cfg.val_cfp_folds:
        cfp_root = Path(data_root) / "cfp" if data_root else require_data_root("cfp")
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    cache = load_cache(Path(cfg.cache), cache_sources(cfg), teacher=bool(cfg.distill_weight))
    data = select_training(cache, cfg)
    meta = identity_meta(cfg)
    write_json(run_dir / "config.json", to_dict(cfg))
    write_json(run_dir / "classes.json", data.classes)
    write_json(run_dir / "meta.json", meta.to_dict())
    # channels-last runs the depthwise and 1x1 convolutions ~3x faster on CPU (measured here).
    net = build_net(cfg).to(memory_format=torch.channels_last)
    head = build_head(cfg.head, cfg.embedding_dim, len(data.classes), **dict(cfg.head_options))
    params = list(net.parameters()) + list(head.parameters())
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    print(
        f"{run_dir.name}: {len(data)} faces of {len(data.classes)} people "
        f"({int(data.profile.sum())} CFP profiles); exported graph {exported_parameters(net) / 1e6:.2f}M parameters"
    )
    start, best = 0, {"score": -1.0}
    last = run_dir / "last.pt"
    if last.exists():
        ckpt = torch.load(last, map_location="cpu", weights_only=False)
        net.load_state_dict(ckpt["model"])
        head.load_state_dict(ckpt["head"])
        opt.load_state_dict(ckpt["optimizer"])
        start, best = ckpt["epoch"] + 1, ckpt["best"]
        print(f"resuming {run_dir} at epoch {start + 1}/{cfg.epochs} (best val score {best['score']:.4f})")
    dataset = IdentityDataset(data, cfg, meta, seed=cfg.seed)
    steps = len(dataset) // cfg.batch_size
    log_path = run_dir / "metrics.jsonl"
    for epoch in range(start, cfg.epochs):
        dataset.epoch = epoch
        gen = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
        if cfg.profile_oversample != 1.0:
            w = torch.from_numpy(sample_weights(data, cfg.profile_oversample))
            sampler = torch.utils.data.WeightedRandomSampler(w, len(data), replacement=True, generator=gen)
            loader = torch.utils.data.DataLoader(
                dataset, cfg.batch_size, sampler=sampler, drop_last=True, collate_fn=dataset.collate
            )
        else:
            loader = torch.utils.data.DataLoader(
                dataset, cfg.batch_size, shuffle=True, drop_last=True, generator=gen, collate_fn=dataset.collate
            )
        net.train()
        head.train()
        sums: dict[str, float] = {}
        t0 = time.time()
        bar = tqdm(
            loader,
            desc=f"{run_dir.name} epoch {epoch + 1}/{cfg.epochs}",
            leave=False,
            mininterval=2 if sys.stderr.isatty() else 60,
        )
        for i, batch in enumerate(bar):
            for group in opt.param_groups:
                group["lr"] = lr_at(cfg, epoch * steps + i, steps)
            batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)
            terms = loss_terms(cfg, net, head, batch)
            opt.zero_grad()
            terms["total"].backward()
            opt.step()
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            bar.set_postfix(loss=f"{float(terms['total'].detach()):.3f}", refresh=False)
        val = validate(net, meta, cache, cfg.val_cfp_folds, cfp_root) if cfg.val_cfp_folds else {"score": 0.0}
        row = {
            "epoch": epoch + 1,
            "lr": opt.param_groups[0]["lr"],
            "seconds": round(time.time() - t0, 1),
            **{f"loss_{k}" if k != "train_acc" else k: v / max(1, len(loader)) for k, v in sums.items()},
            **{f"val_{k}": v for k, v in val.items()},
        }
        with open(log_path, "a") as fh:
            fh.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)
        state = {"model": net.state_dict(), "config": to_dict(cfg), "meta": meta.to_dict(), "epoch": epoch}
        # Without validation folds the run keeps its last epoch (the cosine schedule ends there).
        if val["score"] > best["score"] or not cfg.val_cfp_folds:
            best = {"score": val["score"], "epoch": epoch + 1, **{k: v for k, v in val.items() if k != "score"}}
            atomic_save({**state, "val": val}, run_dir / "best.pt")
        atomic_save({**state, "head": head.state_dict(), "optimizer": opt.state_dict(), "best": best}, last)
    write_json(
        run_dir / "metrics.json", {"best": best, "epochs": cfg.epochs, "faces": len(data), "classes": len(data.classes)}
    )
    plot_curves(log_path, run_dir / "curves.png")
    return best


def plot_curves(log_path: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
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
    b.legend()
    for ax in (a, b):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
