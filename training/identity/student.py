"""A device-sized student distilled from a fine-tuned teacher (issue 17, part 4).

    python -m training.identity student --config training/identity/configs/student_cpu.toml --out RUN

The teacher (a checkpoint of ``training.identity train``, e.g. the fine-tuned dlib ResNet) and
the student (the MobileFaceNet, width and depth from the recipe) see the *same augmented view*
of each face, recomputed every step: the teacher's chip is augmented (``IdentityAugmentConfig``)
and, with probability ``mixup_prob``, mixed with another face of the batch (mixup,
lambda ~ Beta(alpha, alpha)); the student gets that very image scaled to its own input (the
teacher's crop geometry at the student's size, e.g. dlib's chip at 112x112, which its metadata
records). The loss is ``1 - cos(student, teacher)`` on every face, labelled or not, plus an
optional margin loss (``margin_weight``) on labelled faces that were not mixed.

Faces: every source of the cache (CFP folds of ``train_cfp_folds``, LFW minus probable CFP test
people, ORL, and the 300-W faces, which have no identities). CFP fold 9 is never used.
The checkpoint is an ``IdentityNet`` checkpoint like training's own, so ``export``,
``quantization build`` and every evaluation take it unchanged. Resumable (``last.pt`` every
epoch); ``best.pt`` is the epoch with the best validation score when ``val_cfp_folds`` is set,
else the last epoch.

Where it runs (:mod:`training.runtime`, as ``train``): ``device`` (``--device``), ``precision``
(teacher and student under autocast, the losses in fp32; fp16 with a GradScaler, CUDA only) and
``channels_last``. One process: the loop draws its own views, so it does not run under torchrun
with several processes (``train`` does).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from edge.geometry.align import AlignmentSpec
from edge.runtime.preprocess import preprocess
from training.config import to_dict
from training.identity.config import IdentityAugmentConfig, IdentityTrainConfig


@dataclass(frozen=True)
class StudentConfig:
    # where it runs (training.runtime): "auto" = CUDA where available (--device overrides)
    device: str = "auto"
    precision: str = "fp32"  # fp32 | bf16 | fp16 (CUDA only)
    channels_last: str = "auto"  # auto = on (measured faster on the CPU here; tensor cores on a GPU)
    cache: str = "runs/idcache_dlib150"
    teacher: str = "training/checkpoints/poseface_r29.pt"
    sources: tuple[str, ...] = ("cfp", "lfw", "orl", "w300")
    train_cfp_folds: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 8)
    val_cfp_folds: tuple[int, ...] = ()
    exclude_lfw_people_file: str = "training/identity/lfw_overlap_cfp.json"
    # the student
    trunk: str = "mobilefacenet"
    width: float = 1.0
    depth: float = 1.0
    embedding_dim: int = 128
    input_size: int = 112
    # losses
    mixup_prob: float = 0.5
    mixup_alpha: float = 0.4
    margin_weight: float = 0.0  # ArcFace on labelled, unmixed faces (0 = distillation only)
    # optimisation
    epochs: int = 20
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: float = 0.5
    seed: int = 0
    threads: int = 2
    augment: IdentityAugmentConfig = field(default_factory=IdentityAugmentConfig)

    def __post_init__(self) -> None:
        if 9 in self.train_cfp_folds or 9 in self.val_cfp_folds:
            raise ValueError("CFP fold 9 is the held-out test fold: a student never trains or validates on it")
        if set(self.train_cfp_folds) & set(self.val_cfp_folds):
            raise ValueError("val_cfp_folds must not overlap train_cfp_folds")
        if not 0.0 <= self.mixup_prob <= 1.0 or self.mixup_alpha <= 0:
            raise ValueError("mixup_prob must be in [0, 1] and mixup_alpha > 0")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"precision: expected fp32, bf16 or fp16, got {self.precision!r}")
        if self.channels_last not in ("auto", "on", "off"):
            raise ValueError(f"channels_last: expected auto, on or off, got {self.channels_last!r}")

    def student_recipe(self) -> IdentityTrainConfig:
        """The student as an identity recipe (what its checkpoint records, so every tool that
        reads identity checkpoints builds it)."""
        return IdentityTrainConfig(
            cache=self.cache,
            train_cfp_folds=tuple(f for f in self.train_cfp_folds),
            val_cfp_folds=tuple(self.val_cfp_folds),
            exclude_lfw_people_file=self.exclude_lfw_people_file,
            trunk=self.trunk,
            width=self.width,
            depth=self.depth,
            embedding_dim=self.embedding_dim,
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            seed=self.seed,
            threads=self.threads,
            augment=self.augment,
            precision=self.precision,
            channels_last=self.channels_last,
        )


def select_faces(cache: dict, cfg: StudentConfig) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(cache rows, class label per row or -1 where the face has no identity to learn, classes)."""
    from training.identity.data import excluded_lfw_people

    src = cache["source"]
    keep = np.isin(src, [s for s in cfg.sources if s != "cfp"])
    if "cfp" in cfg.sources:
        keep |= (src == "cfp") & np.isin(cache["fold"], cfg.train_cfp_folds)
    if cfg.exclude_lfw_people_file:
        excluded = [f"lfw/{n}" for n in excluded_lfw_people(cfg.exclude_lfw_people_file)]
        keep &= ~np.isin(cache["person"], excluded)
    rows = np.flatnonzero(keep)
    labelled = np.isin(src[rows], ("cfp", "lfw", "orl"))
    classes = sorted(set(cache["person"][rows[labelled]].tolist()))
    lookup = {c: i for i, c in enumerate(classes)}
    labels = np.array([lookup.get(p, -1) if ok else -1 for p, ok in zip(cache["person"][rows], labelled)])
    return rows, labels.astype(np.int64), classes


class ViewBatcher:
    """Augmented views, mixed, as the teacher's and the student's inputs (one draw per step)."""

    def __init__(self, cfg: StudentConfig, teacher_meta, student_meta, images, pose, landmarks):
        self.cfg, self.teacher_meta, self.student_meta = cfg, teacher_meta, student_meta
        self.images, self.pose, self.landmarks = images, pose, landmarks

    def __call__(self, rows: np.ndarray, rng: np.random.Generator):
        from training.identity.data import augment_face

        views = np.stack(
            [augment_face(self.images[r], self.pose[r], self.landmarks[r], self.cfg.augment, rng)[0] for r in rows]
        ).astype(np.float32)
        mixed = rng.random(len(rows)) < self.cfg.mixup_prob
        lam = rng.beta(self.cfg.mixup_alpha, self.cfg.mixup_alpha, len(rows)).astype(np.float32)
        partner = rng.permutation(len(rows))
        weight = np.where(mixed, lam, 1.0).astype(np.float32)[:, None, None, None]
        views = weight * views + (1.0 - weight) * views[partner]
        views = np.clip(views + 0.5, 0, 255).astype(np.uint8)
        size = self.student_meta.input_size[0]
        small = [cv2.resize(v, (size, size), interpolation=cv2.INTER_AREA) for v in views]
        return (
            torch.from_numpy(preprocess(list(views), self.teacher_meta)),
            torch.from_numpy(preprocess(small, self.student_meta)),
            torch.from_numpy(mixed),
        )


def student_meta(cfg: StudentConfig, teacher_spec: AlignmentSpec, teacher_ckpt: str):
    from training.identity.data import identity_meta

    spec = dataclasses.replace(teacher_spec, size=cfg.input_size)
    meta = identity_meta(cfg.student_recipe(), spec, name="poseface_student")
    extra = {
        **meta.extra,
        "student_of": {"teacher": str(teacher_ckpt), "loss": "1 - cos(student, teacher), same augmented view"},
    }
    return dataclasses.replace(meta, extra=extra)


def train_student(cfg: StudentConfig, run_dir: Path, data_root=None) -> dict:
    from edge.datasets.root import require_data_root
    from training.identity.checkpoint import load_checkpoint
    from training.identity.losses import build_head
    from training.identity.model import IdentityNet, exported_parameters
    from training.identity.prepare import cache_alignment, load_cache
    from training.identity.train import lr_at, plot_curves, validate
    from training.run_folder import append_metrics, atomic_save, load_state, write_json
    from training.runtime import setup, use_channels_last

    rt = setup(cfg.device, cfg.precision)
    if rt.distributed:
        raise ValueError(
            f"student: runs in one process ({rt.world_size} started by torchrun); use --device cuda on one GPU"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(rt.threads(cfg.threads))
    torch.manual_seed(cfg.seed)
    teacher, teacher_meta, _ = load_checkpoint(Path(cfg.teacher))
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    cache = load_cache(Path(cfg.cache), tuple(cfg.sources))
    spec = cache_alignment(cache)
    if spec.to_dict() != teacher_meta.extra.get("alignment"):
        raise ValueError(
            f"{cfg.cache}: holds {spec.to_dict()} crops; the teacher takes {teacher_meta.extra.get('alignment')}"
        )
    rows, labels, classes = select_faces(cache, cfg)
    meta = student_meta(cfg, spec, cfg.teacher)
    recipe = cfg.student_recipe()
    write_json(run_dir / "config.json", to_dict(cfg))
    write_json(run_dir / "meta.json", meta.to_dict())
    channels_last = use_channels_last(cfg.channels_last, rt.device, cpu_default=True)
    memory = torch.channels_last if channels_last else torch.contiguous_format
    net = IdentityNet(cfg.trunk, cfg.width, cfg.depth, cfg.embedding_dim, input_size=cfg.input_size)
    net = net.to(memory_format=memory).to(rt.device)
    # the teacher as before on a CPU (contiguous; unmeasured there in NHWC), NHWC with the student on a GPU
    teacher_memory = memory if rt.cuda else torch.contiguous_format
    teacher.to(memory_format=teacher_memory).to(rt.device)
    head = build_head("arcface", cfg.embedding_dim, max(1, len(classes))) if cfg.margin_weight else None
    if head is not None:
        head.to(rt.device)
    params = list(net.parameters()) + (list(head.parameters()) if head is not None else [])
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    scaler = rt.scaler()
    print(
        f"{run_dir.name}: {len(rows)} faces ({int((labels >= 0).sum())} labelled, {len(classes)} people); "
        f"student {exported_parameters(net) / 1e6:.2f}M parameters at {cfg.input_size}px; on {rt.describe()}"
    )
    cfp_root = (Path(data_root) / "cfp" if data_root else require_data_root("cfp")) if cfg.val_cfp_folds else None
    start, best = 0, {"score": -1.0}
    last = run_dir / "last.pt"
    if last.exists():
        ckpt = load_state(last)  # on the CPU whatever device wrote it; copied onto the nets' device
        net.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        if head is not None:
            head.load_state_dict(ckpt["head"])
        if scaler.is_enabled() and "scaler" in ckpt:
            scaler.load_state_dict(ckpt["scaler"])
        start, best = ckpt["epoch"] + 1, ckpt["best"]
        print(f"resuming {run_dir} at epoch {start + 1}/{cfg.epochs}")
    batcher = ViewBatcher(cfg, teacher_meta, meta, cache["images"], cache["pose"], cache["landmarks"])
    steps = len(rows) // cfg.batch_size
    sched = dataclasses.replace(recipe, warmup_epochs=cfg.warmup_epochs)
    log_path = run_dir / "metrics.jsonl"
    for epoch in range(start, cfg.epochs):
        rng = np.random.default_rng((cfg.seed, epoch))
        order = rng.permutation(len(rows))
        net.train()
        sums: dict[str, float] = {}
        t0 = time.time()
        bar = tqdm(
            range(steps),
            desc=f"{run_dir.name} epoch {epoch + 1}/{cfg.epochs}",
            leave=False,
            mininterval=2 if sys.stderr.isatty() else 60,
        )
        for i in bar:
            for group in opt.param_groups:
                group["lr"] = lr_at(sched, epoch * steps + i, steps)
            pick = order[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            t_in, s_in, mixed = batcher(rows[pick], rng)
            t_in = t_in.to(rt.device, non_blocking=True).contiguous(memory_format=teacher_memory)
            s_in = s_in.to(rt.device, non_blocking=True).contiguous(memory_format=memory)
            with rt.autocast():
                with torch.no_grad():
                    target = teacher(t_in)
                emb = net(s_in)
            target, emb = F.normalize(target.float(), dim=1), emb.float()  # the losses in fp32
            terms = {"distill": (1.0 - F.cosine_similarity(emb, target, dim=1)).mean()}
            y = torch.from_numpy(labels[pick]).to(rt.device)
            use = (~mixed.to(rt.device)) & (y >= 0)
            if head is not None and use.any():
                logits = head(emb[use], y[use])
                terms["margin"] = cfg.margin_weight * F.cross_entropy(logits, y[use])
            terms["total"] = sum(terms.values())
            opt.zero_grad()
            scaler.scale(terms["total"]).backward()
            scaler.step(opt)
            scaler.update()
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            bar.set_postfix(loss=f"{float(terms['total'].detach()):.4f}", refresh=False)
        val = validate(net, meta, cache, cfg.val_cfp_folds, cfp_root) if cfg.val_cfp_folds else {"score": 0.0}
        row = {
            "epoch": epoch + 1,
            "lr": opt.param_groups[0]["lr"],
            "seconds": round(time.time() - t0, 1),
            **{f"loss_{k}": v / max(1, steps) for k, v in sums.items()},
            **{f"val_{k}": v for k, v in val.items()},
        }
        row["loss_ce"] = row.get("loss_distill", 0.0)  # the curve plot's second line: the distillation term
        append_metrics(log_path, row)
        print(json.dumps(row), flush=True)
        state = {"model": net.state_dict(), "config": to_dict(recipe), "meta": meta.to_dict(), "epoch": epoch}
        if val["score"] > best["score"] or not cfg.val_cfp_folds:
            best = {"score": val["score"], "epoch": epoch + 1, **{k: v for k, v in val.items() if k != "score"}}
            atomic_save({**state, "val": val}, run_dir / "best.pt")
        extra = {"head": head.state_dict()} if head is not None else {}
        if scaler.is_enabled():
            extra["scaler"] = scaler.state_dict()
        atomic_save({**state, **extra, "optimizer": opt.state_dict(), "best": best}, last)
    write_json(run_dir / "metrics.json", {"best": best, "epochs": cfg.epochs, "faces": len(rows)})
    plot_curves(log_path, run_dir / "curves.png")
    return best


def load_student_config(path) -> StudentConfig:
    from training.config import load_toml

    return load_toml(StudentConfig, Path(path)) if path else StudentConfig()
