"""Calibrate the pose-aware accept thresholds of an identity model on real frontal/profile pairs.

    python -m edge.calibrate --model FILE [--cfp-root ROOT] [--folds 9] [--far 1e-3]
                             [--yaw-edges 15 30 45] [--json OUT] [--dry-run]

Runs the device chain (BlazeFace, PIPNet, head pose, alignment, the identity model) on every
photo of the given CFP folds (default fold 9: people the shipped models never trained on). A
gallery is the frontal photos; probes are all photos, frontal and profile. Every probe is
compared with every gallery photo of another photo (dense pairs), and the pairs are split by the
probe's |yaw| bin. In each bin the threshold is the lowest cosine whose impostor accept rate is
at most ``--far``; the true-accept rate there is reported beside it. The thresholds are written
into the model's metadata (``extra.matching_thresholds``; how they were measured in
``extra.matching_calibration``), where ``matching.thresholds = "from_model_metadata"`` (the
default) finds them. The model file itself is not touched, so its
checksum stays valid.

A bin with too few impostor pairs to resolve ``--far`` (fewer than 10 / far) borrows the
threshold of the nearest bin towards frontal, and the report says so.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from edge.core.matching import DEFAULT_YAW_EDGES, YawThresholds


def calibrate_scores(
    scores: np.ndarray, same: np.ndarray, probe_abs_yaw: np.ndarray, edges: tuple[float, ...], far: float
) -> tuple[YawThresholds, list[dict]]:
    """Per |yaw| bin: the threshold at ``far`` from impostor scores, and the TAR it gives."""
    scores, same, yaw = (np.asarray(a) for a in (scores, same, probe_abs_yaw))
    bins = np.searchsorted(np.asarray(edges), yaw, side="right")
    thresholds: list[float | None] = []
    report = []
    labels = YawThresholds.uniform(0.0, edges).bin_labels()
    for b, label in enumerate(labels):
        sel = bins == b
        imp = np.sort(scores[sel & ~same])[::-1]
        gen = scores[sel & same]
        row = {"bin": label, "genuine_pairs": int(gen.size), "impostor_pairs": int(imp.size)}
        if imp.size >= max(10.0 / far, 1):
            k = int(np.floor(far * imp.size))  # at most k impostors may reach the threshold
            thr = float(np.nextafter(imp[k], np.inf)) if k < imp.size else float(imp[-1])
            thresholds.append(thr)
            tar = float((gen >= thr).mean()) if gen.size else None
            row.update(threshold=round(thr, 5), far=float((imp >= thr).mean()), tar=tar)
        else:
            thresholds.append(None)
            row.update(threshold=None, note=f"fewer than {int(10 / far)} impostor pairs: borrowed from a nearer bin")
        report.append(row)
    # fill unresolved bins from the nearest resolved bin towards frontal (then outward)
    known = [i for i, t in enumerate(thresholds) if t is not None]
    if not known:
        raise ValueError(
            f"no |yaw| bin has enough impostor pairs to resolve FAR {far:g}: use more folds or a larger FAR"
        )
    filled = []
    for i, t in enumerate(thresholds):
        if t is None:
            lower = [k for k in known if k < i]
            t = thresholds[lower[-1]] if lower else thresholds[known[0]]
            report[i]["threshold"] = round(float(t), 5)
            sel = (bins == i) & same
            report[i]["tar"] = float((scores[sel] >= t).mean()) if sel.any() else None
        filled.append(float(t))
    return YawThresholds(tuple(edges), tuple(filled)), report


def dense_probe_pairs(identities: np.ndarray, views: np.ndarray, embeddings: np.ndarray, abs_yaw: np.ndarray):
    """(scores, same, probe |yaw|): every frontal photo as gallery against every other photo as probe."""
    gallery = np.flatnonzero(views == "frontal")
    scores = embeddings[gallery] @ embeddings.T  # (G, N)
    same = identities[gallery][:, None] == identities[None, :]
    not_self = gallery[:, None] != np.arange(len(identities))[None, :]
    probe_yaw = np.broadcast_to(abs_yaw[None, :], scores.shape)
    return scores[not_self], same[not_self], probe_yaw[not_self]


def write_thresholds(model: Path, thresholds: YawThresholds, details: dict) -> Path:
    """Record the thresholds in the metadata JSON beside ``model`` (atomically)."""
    from edge.runtime.meta import meta_path_for

    path = meta_path_for(model)
    data = json.loads(path.read_text())
    extra = data.setdefault("extra", {})
    extra["matching_thresholds"] = thresholds.to_dict()
    extra["matching_calibration"] = details
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def calibrate_model(
    model: Path, cfp_root, folds, far: float, edges, landmark_model=None, threads: int = 2, progress: bool = True
) -> tuple[YawThresholds, dict]:
    from tqdm import tqdm

    from edge.core.faces import alignment_for, embed_batch, prepare_largest_face
    from edge.datasets.cfp import cfp_photos, fold_identities
    from edge.detect.registry import build_detector
    from edge.imageio import read_image_bgr
    from edge.landmarks.crop import BLAZEFACE_SHORT_CROP
    from edge.landmarks.landmarker import Landmarker
    from edge.runtime.runner import load_model
    from edge.shipped import SHIPPED_LANDMARKS

    embedder = load_model(model, threads=threads)
    spec = alignment_for(embedder)
    landmarker = Landmarker(load_model(landmark_model or SHIPPED_LANDMARKS, threads=threads))
    detector = build_detector({"type": "blazeface", "range": "short", "threads": threads})
    photos = cfp_photos(cfp_root, identities=[i for f in folds for i in fold_identities(f)])
    if not photos:
        raise ValueError(f"--cfp-root {cfp_root}: no photos of fold(s) {folds}")
    ids, views, faces, yaws, missing = [], [], [], [], 0
    for photo in tqdm(photos, desc="calibration faces", disable=not progress, mininterval=5):
        face = prepare_largest_face(
            read_image_bgr(photo.image_path), detector, BLAZEFACE_SHORT_CROP, landmarker, spec
        )
        if face is None:
            missing += 1
            continue
        ids.append(photo.identity)
        views.append(photo.view)
        faces.append(face.aligned)
        yaws.append(abs(face.yaw))
    emb = embed_batch(embedder, faces)
    scores, same, probe_yaw = dense_probe_pairs(np.array(ids), np.array(views), emb, np.array(yaws))
    thresholds, rows = calibrate_scores(scores, same, probe_yaw, tuple(edges), far)
    details = {
        "far": far,
        "cfp_folds": list(folds),
        "photos": len(photos),
        "photos_without_face": missing,
        "pairs": "dense: every frontal photo (gallery) x every other photo (probe), binned by the probe's |yaw|",
        "bins": rows,
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
    }
    return thresholds, details


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m edge.calibrate", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="identity model (.onnx/.tflite with its .json)")
    p.add_argument("--cfp-root", default=None, help="folder in the CFP layout (default: <data root>/cfp)")
    p.add_argument("--folds", default="9", help="CFP folds to calibrate on (never trained on), e.g. '9'")
    p.add_argument("--far", type=float, default=1e-3, help="target false-accept rate per yaw bin")
    p.add_argument(
        "--yaw-edges", type=float, nargs="+", default=list(DEFAULT_YAW_EDGES), help="|yaw| bin edges, degrees"
    )
    p.add_argument("--landmark-model", default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None, help="write the calibration report here too")
    p.add_argument("--dry-run", action="store_true", help="report only; leave the metadata alone")
    args = p.parse_args(argv)
    try:
        from edge.datasets.cfp import cfp_root, parse_folds

        if not 0 < args.far < 1:
            raise ValueError(f"--far: expected a rate in (0, 1), got {args.far}")
        model = Path(args.model)
        if not model.exists():
            raise FileNotFoundError(f"--model {model}: no such file")
        root = cfp_root(args.cfp_root)
        thresholds, details = calibrate_model(
            model, root, parse_folds(args.folds), args.far, tuple(args.yaw_edges), args.landmark_model, args.threads
        )
    except (ValueError, FileNotFoundError) as err:
        print(f"edge.calibrate: {err}", file=sys.stderr)
        return 2
    report = {"model": str(model), **thresholds.to_dict(), "calibration": details}
    text = json.dumps(report, indent=1)
    print(text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text + "\n")
    if not args.dry_run:
        print(f"thresholds written to {write_thresholds(model, thresholds, details)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
