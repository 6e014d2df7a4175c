"""CFP verification of an identity model, with the device's own chain and metric code.

Two views of the same test fold:
- **protocol pairs** (the official split: 350 same + 350 different pairs per fold): accuracy at
  the threshold chosen on the calibration folds only, and accuracy per yaw bin of the probe
  (the pair's second photo: the profile photo in FP);
- **dense pairs** (every photo of the fold against every other: FF frontal x frontal, FP
  frontal x profile; ~2k genuine and ~100k impostor pairs), because 350 impostor pairs cannot
  resolve a false-accept rate of 1e-3: TAR at FAR 1e-2 / 1e-3, EER, ROC-AUC, ROC plot.
A photo where no face is found scores -1 against everything (a reject), and is counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from edge.core.faces import alignment_for, embed_batch, prepare_largest_face
from edge.datasets.cfp import cfp_photos, fold_identities, fold_of, fold_pairs
from edge.geometry.align import AlignmentSpec
from edge.imageio import read_image_bgr
from edge.metrics.verification import accuracy_at, best_threshold, eer, roc_auc, roc_curve, tar_at_far
from training.identity.prepare import cfp_fiducial_face

YAW_BINS = (0.0, 30.0, 60.0, 90.0)
MISSING_SCORE = -1.0
PROTOCOLS = ("FF", "FP")


def photo_key(path) -> str:
    """``<id>/<view>/<nn>.jpg``: the same key for a protocol path and a cache path."""
    return "/".join(Path(path).parts[-3:])


class FaceTable:
    """Per photo key: unit embedding (or None: no face) and |yaw| in degrees."""

    def __init__(self, keys: Sequence[str], embeddings: np.ndarray, yaws: Sequence[float], missing: Sequence[str] = ()):
        self.index = {k: i for i, k in enumerate(keys)}
        self.embeddings = np.asarray(embeddings, dtype=np.float32)
        self.abs_yaw = np.abs(np.asarray(yaws, dtype=np.float64))
        self.missing = set(missing)
        self.norm = None  # an edge.core.scorenorm.ScoreNorm: scores are then cohort-normalised

    def normalise_with_cohort(self, cohort_folds: Sequence[int], top_k: int) -> None:
        """Score pairs as the device does with a cohort (``edge.calibrate --cohort-folds``): one
        mean embedding per person and view of ``cohort_folds``' photos in this table."""
        from edge.core.scorenorm import ScoreNorm, cohort_means

        rows = [(k, i) for k, i in self.index.items() if fold_of(k.split("/")[0]) in set(cohort_folds)]
        if not rows:
            raise ValueError(f"--cohort-folds {list(cohort_folds)}: no face of those folds in the table")
        ids = [int(k.split("/")[0]) for k, _ in rows]
        views = [k.split("/")[1] for k, _ in rows]
        self.norm = ScoreNorm(cohort_means(ids, views, self.embeddings[[i for _, i in rows]]), top_k)

    def score(self, a: str, b: str) -> float:
        if a not in self.index or b not in self.index:
            return MISSING_SCORE
        ea, eb = self.embeddings[self.index[a]], self.embeddings[self.index[b]]
        if self.norm is not None:
            return float(self.norm.pair_scores(ea[None], eb[None])[0, 0])
        return float(ea @ eb)

    def yaw(self, key: str) -> float:
        return float(self.abs_yaw[self.index[key]]) if key in self.index else float("nan")


def protocol_scores(root, protocol: str, folds: Sequence[int], table: FaceTable):
    scores, labels, probe_yaw = [], [], []
    for fold in folds:
        for a, b, same in fold_pairs(root, protocol, fold):
            ka, kb = photo_key(a), photo_key(b)
            scores.append(table.score(ka, kb))
            labels.append(same)
            probe_yaw.append(table.yaw(kb))
    return np.array(scores), np.array(labels, dtype=bool), np.array(probe_yaw)


def yaw_bin_name(lo: float, hi: float) -> str:
    return f"{lo:g}-{hi:g}"


def per_yaw_accuracy(scores, labels, probe_yaw, threshold: float) -> dict:
    out = {}
    for lo, hi in zip(YAW_BINS[:-1], YAW_BINS[1:]):
        sel = (probe_yaw >= lo) & ((probe_yaw < hi) | (hi == YAW_BINS[-1]) & (probe_yaw <= 180))
        out[yaw_bin_name(lo, hi)] = {
            "pairs": int(sel.sum()),
            "genuine": int(labels[sel].sum()),
            "accuracy": accuracy_at(scores[sel], labels[sel], threshold) if sel.any() else None,
        }
    out["no_face"] = {"pairs": int(np.isnan(probe_yaw).sum())}
    return out


def dense_scores(table: FaceTable, fold: int, protocol: str, root) -> tuple[np.ndarray, np.ndarray]:
    """Every frontal photo of the fold against every other frontal (FF) or every profile (FP)."""
    ids = fold_identities(fold)
    frontal = [(p.identity, photo_key(p.image_path)) for p in cfp_photos(root, identities=ids, views=("frontal",))]
    other = (
        frontal
        if protocol == "FF"
        else [(p.identity, photo_key(p.image_path)) for p in cfp_photos(root, identities=ids, views=("profile",))]
    )

    def matrix(items):
        emb = np.zeros((len(items), table.embeddings.shape[1]), dtype=np.float32)
        ok = np.zeros(len(items), dtype=bool)
        for i, (_, k) in enumerate(items):
            if k in table.index:
                emb[i], ok[i] = table.embeddings[table.index[k]], True
        return emb, ok, np.array([who for who, _ in items])

    ea, oka, ida = matrix(frontal)
    eb, okb, idb = matrix(other)
    s = ea @ eb.T if table.norm is None else table.norm.pair_scores(ea, eb)
    s[~oka, :] = MISSING_SCORE
    s[:, ~okb] = MISSING_SCORE
    same = ida[:, None] == idb[None, :]
    if protocol == "FF":
        upper = np.triu(np.ones_like(same), k=1)
        return s[upper], same[upper]
    return s.ravel(), same.ravel()


def dense_metrics(scores, labels) -> dict:
    out = {
        "genuine": int(labels.sum()),
        "impostor": int((~labels).sum()),
        "eer": eer(scores, labels),
        "roc_auc": roc_auc(scores, labels),
    }
    for far in (1e-2, 1e-3):
        tar, thr = tar_at_far(scores, labels, far)
        out[f"tar@far={far:g}"] = tar
        out[f"threshold@far={far:g}"] = thr
    return out


def verification_report(
    root, table: FaceTable, test_fold: int, calib_folds: Sequence[int], with_roc: bool = False
) -> dict:
    folds = {test_fold, *calib_folds}  # the table may hold a cohort's folds too
    missing = sum(fold_of(k.split("/")[0]) in folds for k in table.missing)
    report: dict = {"test_fold": test_fold, "calib_folds": list(calib_folds), "photos_without_face": missing}
    rocs = {}
    for protocol in PROTOCOLS:
        cs, cl, _ = protocol_scores(root, protocol, calib_folds, table)
        threshold, calib_acc = best_threshold(cs, cl)
        ts, tl, ty = protocol_scores(root, protocol, [test_fold], table)
        ds, dl = dense_scores(table, test_fold, protocol, root)
        report[protocol] = {
            "accuracy": accuracy_at(ts, tl, threshold),
            "threshold": threshold,
            "calib_accuracy": calib_acc,
            "protocol_eer": eer(ts, tl),
            "per_probe_yaw": per_yaw_accuracy(ts, tl, ty, threshold),
            "dense": dense_metrics(ds, dl),
        }
        if with_roc:
            rocs[protocol] = roc_curve(ds, dl)[:2]
    if with_roc:
        report["_roc"] = rocs
    return report


def plot_roc(rocs: dict, out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    for name, (far, tar) in rocs.items():
        ax.plot(np.maximum(far, 1e-5), tar, label=name)
    ax.set_xscale("log")
    ax.set_xlim(1e-4, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("false accept rate (dense pairs)")
    ax.set_ylabel("true accept rate")
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------- faces of a CFP root, prepared


def fold_photos(root, folds: Sequence[int]):
    ids = [i for f in folds for i in fold_identities(f)]
    return cfp_photos(root, identities=ids)


class RunnerEmbedder:
    """Our identity model (any edge runner) on the aligned crops of :func:`edge.core.faces.prepare_faces`."""

    needs_image = False

    def __init__(self, runner, flip: bool | None = None):
        self.runner = runner
        self.alignment = alignment_for(runner)
        self.flip = flip

    def embed(self, image, faces) -> np.ndarray:
        return embed_batch(self.runner, [f.aligned for f in faces], batch_size=64, flip=self.flip)


def default_landmark_model() -> Path:
    from edge.app.enroll import LANDMARK_MODEL

    return LANDMARK_MODEL


@dataclass(frozen=True)
class PreparedPhoto:
    key: str
    path: Path
    face: object  # edge.core.faces.PreparedFace, or None when no face was found


def prepare_photos(
    root, folds: Sequence[int], landmarker, boxes: str, spec: AlignmentSpec, progress: bool = True
) -> list[PreparedPhoto]:
    """Every photo of ``folds`` under ``root`` through the device chain, aligned as ``spec`` says
    (the identity model's :func:`edge.core.faces.alignment_for`).

    ``boxes``: "fiducials" (the photo's hand-marked points give the first box: the oracle,
    no detector failure) or "detector" (BlazeFace short range, the largest face, the device's
    crop policy: what the device would see)."""
    from tqdm import tqdm

    detector = None
    if boxes == "detector":
        from edge.detect.registry import build_detector
        from edge.landmarks.crop import BLAZEFACE_SHORT_CROP

        detector = build_detector({"type": "blazeface", "range": "short"})
    elif boxes != "fiducials":
        raise ValueError(f"--boxes: expected fiducials or detector, got {boxes!r}")
    out = []
    for photo in tqdm(fold_photos(root, folds), desc=f"faces ({boxes} boxes)", disable=not progress, mininterval=5):
        image = read_image_bgr(photo.image_path)
        key = photo_key(photo.image_path)
        if detector is None:
            face = cfp_fiducial_face(photo, landmarker, spec, image)
        else:
            face = prepare_largest_face(image, detector, BLAZEFACE_SHORT_CROP, landmarker, spec)
        out.append(PreparedPhoto(key, photo.image_path, face))
    return out


def table_from(prepared: Sequence[PreparedPhoto], embedder, progress: bool = False) -> FaceTable:
    """Embed the prepared photos (``embedder.embed(image, faces)``; the image is read only for
    embedders with ``needs_image``, e.g. dlib, which aligns faces its own way)."""
    from tqdm import tqdm

    found = [p for p in prepared if p.face is not None]
    missing = [p.key for p in prepared if p.face is None]
    if getattr(embedder, "needs_image", False):
        vectors = [
            embedder.embed(read_image_bgr(p.path), [p.face])[0]
            for p in tqdm(found, disable=not progress, mininterval=5)
        ]
    else:
        vectors = list(embedder.embed(None, [p.face for p in found]))
    dim = len(vectors[0]) if vectors else 1
    return FaceTable([p.key for p in found], np.array(vectors).reshape(-1, dim), [p.face.yaw for p in found], missing)


def photo_table(root, folds: Sequence[int], landmarker, boxes: str, embedder, progress: bool = True) -> FaceTable:
    """``embedder.alignment`` says how faces are cut for it."""
    return table_from(prepare_photos(root, folds, landmarker, boxes, embedder.alignment, progress), embedder, progress)


def check_folds(root, folds: Sequence[int]) -> None:
    from edge.datasets.cfp import absent_folds

    absent = absent_folds(root, folds, ("FP", "FF"))
    if absent:
        raise ValueError(
            f"CFP root {root}: fold(s) {', '.join(map(str, absent))} not found under Protocol/Split/FF and FP"
        )


def load_embedder(model: Path, threads: int = 1):
    """An edge runner for a checkpoint (.pt, torch) or an exported ONNX/TFLite model."""
    model = Path(model)
    if not model.exists():
        raise FileNotFoundError(f"--model {model}: no such file")
    if model.suffix == ".pt":
        from training.identity.checkpoint import load_checkpoint
        from training.nn.runner import TorchRunner

        net, meta, _ = load_checkpoint(model)
        torch.set_num_threads(threads)
        return TorchRunner(net, meta)
    from edge.runtime.runner import load_model

    return load_model(model, threads=threads)


def cache_face_table(runner, cache: dict, folds: Sequence[int]) -> FaceTable:
    """A :class:`FaceTable` from the aligned-face cache (CFP, oracle boxes) for ``folds``."""
    sel = np.flatnonzero((cache["source"] == "cfp") & np.isin(cache["fold"], folds))
    keys = [photo_key(p) for p in cache["path"][sel]]
    return FaceTable(keys, embed_batch(runner, cache["images"][sel], batch_size=64), cache["pose"][sel, 0])
