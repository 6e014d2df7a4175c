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

Beside the thresholds at ``--far`` it records each bin's thresholds on a grid of rates
(:data:`FAR_GRID`, 1e-2 down to 1e-5; a rate the bin's impostor pairs cannot resolve borrows the
nearer bin's as above, or keeps the bin's strictest resolved threshold where no bin resolves it;
the report gives each bin's ``grid_smallest_far``). The
runtime's ``matching.stranger_rate`` reads the grid to set thresholds for the gallery's size.
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

# False-accept rates at which every bin's threshold is also recorded, for matching.stranger_rate
# (edge.core.matching.YawThresholds.for_stranger_rate): descending.
FAR_GRID = (1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5)
# Cohort scores per face for --cohort-folds (edge.core.scorenorm), chosen on CFP fold 8.
DEFAULT_TOP_K = 25


def calibrate_scores(
    scores: np.ndarray,
    same: np.ndarray,
    probe_abs_yaw: np.ndarray,
    edges: tuple[float, ...],
    far: float,
    score: str = "cosine",
) -> tuple[YawThresholds, list[dict]]:
    """Per |yaw| bin: the threshold at ``far`` from impostor scores, and the TAR it gives."""
    scores, same, yaw = (np.asarray(a) for a in (scores, same, probe_abs_yaw))
    bins = np.searchsorted(np.asarray(edges), yaw, side="right")
    thresholds: list[float | None] = []
    report = []
    labels = YawThresholds.uniform(0.0, edges).bin_labels()
    grid_rows: list[list[float | None]] = []
    for b, label in enumerate(labels):
        sel = bins == b
        imp = np.sort(scores[sel & ~same])[::-1]
        gen = scores[sel & same]
        row = {"bin": label, "genuine_pairs": int(gen.size), "impostor_pairs": int(imp.size)}
        thr = _threshold_at(imp, far)
        thresholds.append(thr)
        if thr is not None:
            tar = float((gen >= thr).mean()) if gen.size else None
            row.update(threshold=round(thr, 5), far=float((imp >= thr).mean()), tar=tar)
        else:
            row.update(threshold=None, note=f"fewer than {int(10 / far)} impostor pairs: borrowed from a nearer bin")
        grid_rows.append([_threshold_at(imp, f) for f in FAR_GRID])
        row["grid_smallest_far"] = min((f for f, t in zip(FAR_GRID, grid_rows[-1]) if t is not None), default=None)
        report.append(row)
    # fill unresolved bins from the nearest resolved bin towards frontal (then outward)
    filled = _fill_from_nearer(
        thresholds, f"no |yaw| bin has enough impostor pairs to resolve FAR {far:g}: use more folds or a larger FAR"
    )
    for i, t in enumerate(thresholds):
        if t is None:
            report[i]["threshold"] = round(float(filled[i]), 5)
            sel = (bins == i) & same
            report[i]["tar"] = float((scores[sel] >= filled[i]).mean()) if sel.any() else None
    grid = _fill_grid(grid_rows)
    if grid is None:  # too few pairs for any rate of the grid: no grid
        return YawThresholds(tuple(edges), tuple(filled), score=score), report
    return YawThresholds(tuple(edges), tuple(filled), FAR_GRID, grid, score), report


def _threshold_at(impostors_desc: np.ndarray, far: float) -> float | None:
    """The lowest cosine that at most ``far`` of the impostor scores (sorted descending) reach,
    or None when fewer than 10 / far impostor pairs cannot resolve it."""
    if impostors_desc.size < max(10.0 / far, 1):
        return None
    k = int(np.floor(far * impostors_desc.size))  # at most k impostors may reach the threshold
    return float(np.nextafter(impostors_desc[k], np.inf)) if k < impostors_desc.size else float(impostors_desc[-1])


def _fill_grid(rows: list[list[float | None]]) -> tuple[tuple[float, ...], ...] | None:
    """Per bin, thresholds on the rate grid from measured ones (None: too few impostor pairs).

    An unresolved rate borrows the nearest bin's towards frontal that resolves it, as the
    thresholds at ``--far`` do (so the grid's column at that rate equals them); a rate no bin
    resolves keeps the bin's strictest measured threshold. Each row is then made non-decreasing
    as the rate falls. None when no bin resolves any rate. (A bin that resolves a rate resolves
    every larger one, so the loosest rate is resolved somewhere whenever any rate is.)"""
    if all(v is None for row in rows for v in row):
        return None
    columns = []
    for c in range(len(rows[0])):
        column = [row[c] for row in rows]
        columns.append(_fill_from_nearer(column, "") if any(v is not None for v in column) else column)
    out = []
    for b in range(len(rows)):
        row = [columns[0][b]]
        for column in columns[1:]:  # not resolved anywhere: the strictest so far
            row.append(row[-1] if column[b] is None else max(column[b], row[-1]))
        out.append(tuple(row))
    return tuple(out)


def _fill_from_nearer(values: list, error: str) -> list:
    """Each None takes the value of the nearest known entry towards frontal (lower index), else
    the first known one; ``error`` when none is known."""
    known = [i for i, v in enumerate(values) if v is not None]
    if not known:
        raise ValueError(error)
    out = []
    for i, v in enumerate(values):
        if v is None:
            lower = [k for k in known if k < i]
            v = values[lower[-1]] if lower else values[known[0]]
        out.append(v)
    return out


def dense_probe_pairs(
    identities: np.ndarray, views: np.ndarray, embeddings: np.ndarray, abs_yaw: np.ndarray, score_norm=None
):
    """(scores, same, probe |yaw|): every frontal photo as gallery against every other photo as probe;
    cosines, or with ``score_norm`` (:class:`edge.core.scorenorm.ScoreNorm`) normalised scores."""
    gallery = np.flatnonzero(views == "frontal")
    if score_norm is None:
        scores = embeddings[gallery] @ embeddings.T  # (G, N)
    else:
        scores = score_norm.pair_scores(embeddings[gallery], embeddings)
    same = identities[gallery][:, None] == identities[None, :]
    not_self = gallery[:, None] != np.arange(len(identities))[None, :]
    probe_yaw = np.broadcast_to(abs_yaw[None, :], scores.shape)
    return scores[not_self], same[not_self], probe_yaw[not_self]


def write_thresholds(
    model: Path, thresholds: YawThresholds, details: dict, cohort: np.ndarray | None = None, top_k=None
) -> Path:
    """Record the thresholds in the metadata JSON beside ``model`` (atomically). With ``cohort``
    (normalised thresholds) the cohort goes beside the model as ``<stem>.cohort.npy`` and the
    metadata names it (``extra.score_norm``); without, any earlier cohort record is dropped."""
    import hashlib
    import io

    from edge.core.scorenorm import METHOD
    from edge.runtime.meta import meta_path_for

    path = meta_path_for(model)
    data = json.loads(path.read_text())
    extra = data.setdefault("extra", {})
    extra["matching_thresholds"] = thresholds.to_dict()
    extra["matching_calibration"] = details
    extra.pop("score_norm", None)
    if cohort is not None:
        buffer = io.BytesIO()
        np.save(buffer, np.asarray(cohort, dtype=np.float16), allow_pickle=False)
        cohort_path = model.with_name(f"{model.stem}.cohort.npy")
        tmp_cohort = cohort_path.with_name(cohort_path.name + ".tmp")
        tmp_cohort.write_bytes(buffer.getvalue())
        os.replace(tmp_cohort, cohort_path)
        extra["score_norm"] = {
            "method": METHOD,
            "top_k": int(top_k),
            "cohort_file": cohort_path.name,
            "cohort_sha256": hashlib.sha256(buffer.getvalue()).hexdigest(),
            "cohort_source": details["score_norm"]["cohort"],
        }
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def chain_embeddings(photos, embedder, landmarker, detector, spec, progress: bool = True, desc: str = "faces"):
    """(identities, views, unit embeddings, |yaw|, photos without a face, the kept photos' indices in
    ``photos``) through the device chain."""
    from tqdm import tqdm

    from edge.core.faces import embed_batch, prepare_largest_face
    from edge.imageio import read_image_bgr
    from edge.landmarks.crop import BLAZEFACE_SHORT_CROP

    ids, views, faces, yaws, missing, kept = [], [], [], [], 0, []
    for k, photo in enumerate(tqdm(photos, desc=desc, disable=not progress, mininterval=5)):
        face = prepare_largest_face(read_image_bgr(photo.image_path), detector, BLAZEFACE_SHORT_CROP, landmarker, spec)
        if face is None:
            missing += 1
            continue
        kept.append(k)
        ids.append(photo.identity)
        views.append(photo.view)
        faces.append(face.aligned)
        yaws.append(abs(face.yaw))
    return np.array(ids), np.array(views), embed_batch(embedder, faces), np.array(yaws), missing, kept


def calibrate_model(
    model: Path,
    cfp_root,
    folds,
    far: float,
    edges,
    landmark_model=None,
    threads: int = 2,
    progress: bool = True,
    cohort_folds=(),
    top_k: int = DEFAULT_TOP_K,
) -> tuple[YawThresholds, dict, np.ndarray | None]:
    """Thresholds, the report, and the cohort (None without ``cohort_folds``: cosine thresholds)."""
    from edge.core.faces import alignment_for
    from edge.core.scorenorm import ScoreNorm, cohort_means
    from edge.datasets.cfp import cfp_photos, fold_identities
    from edge.detect.registry import build_detector
    from edge.landmarks.landmarker import Landmarker
    from edge.runtime.runner import load_model
    from edge.shipped import SHIPPED_LANDMARKS

    overlap = sorted(set(folds) & set(cohort_folds))
    if overlap:
        raise ValueError(f"--cohort-folds: fold(s) {overlap} are also calibrated on; the cohort must be other people")
    embedder = load_model(model, threads=threads)
    spec = alignment_for(embedder)
    landmarker = Landmarker(load_model(landmark_model or SHIPPED_LANDMARKS, threads=threads))
    detector = build_detector({"type": "blazeface", "range": "short", "threads": threads})
    photos = cfp_photos(cfp_root, identities=[i for f in folds for i in fold_identities(f)])
    if not photos:
        raise ValueError(f"--cfp-root {cfp_root}: no photos of fold(s) {folds}")
    chain = (embedder, landmarker, detector, spec, progress)
    ids, views, emb, yaws, missing, _ = chain_embeddings(photos, *chain, desc="calibration faces")
    cohort, norm, norm_details = None, None, None
    if cohort_folds:
        cohort_photos = cfp_photos(cfp_root, identities=[i for f in cohort_folds for i in fold_identities(f)])
        if not cohort_photos:
            raise ValueError(f"--cfp-root {cfp_root}: no photos of cohort fold(s) {list(cohort_folds)}")
        c_ids, c_views, c_emb, _, _, _ = chain_embeddings(cohort_photos, *chain, desc="cohort faces")
        cohort = cohort_means(c_ids, c_views, c_emb)
        norm = ScoreNorm(cohort.astype(np.float16).astype(np.float32), top_k)  # as stored
        norm_details = {
            "method": "as-norm",
            "top_k": top_k,
            "cohort": f"CFP fold(s) {list(cohort_folds)}: one mean embedding per person and view "
            f"({len(cohort)} rows from {len(cohort_photos)} photos), through the device chain",
        }
    scores, same, probe_yaw = dense_probe_pairs(ids, views, emb, yaws, norm)
    thresholds, rows = calibrate_scores(
        scores, same, probe_yaw, tuple(edges), far, "as-norm" if cohort_folds else "cosine"
    )
    details = {
        "far": far,
        "cfp_folds": list(folds),
        "photos": len(photos),
        "photos_without_face": missing,
        "landmark_model": Path(landmark_model or SHIPPED_LANDMARKS).name,
        "pairs": "dense: every frontal photo (gallery) x every other photo (probe), binned by the probe's |yaw|",
        "bins": rows,
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
    }
    if norm_details is not None:
        details["score_norm"] = norm_details
    return thresholds, details, cohort


def add_cohort_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    """``--cohort-folds`` and ``--top-k``, as calibration and training's evaluation share them."""
    parser.add_argument(
        "--cohort-folds",
        default="",
        help=f"CFP folds of other people (e.g. '1-7'): {what}; default: plain cosines",
    )
    parser.add_argument("--top-k", type=int, default=DEFAULT_TOP_K, help="cohort scores per face for --cohort-folds")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m edge.calibrate", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="identity model (.onnx/.tflite with its .json)")
    p.add_argument("--cfp-root", default=None, help="folder in the CFP layout (default: <data root>/cfp)")
    p.add_argument("--folds", default="9", help="CFP folds to calibrate on (never trained on), e.g. '9'")
    p.add_argument("--far", type=float, default=1e-3, help="target false-accept rate per yaw bin")
    p.add_argument(
        "--yaw-edges", type=float, nargs="+", default=list(DEFAULT_YAW_EDGES), help="|yaw| bin edges, degrees"
    )
    add_cohort_arguments(p, "calibrate cohort-normalised scores (AS-norm) and store the cohort beside the model")
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
        cohort_folds = parse_folds(args.cohort_folds) if args.cohort_folds else []
        thresholds, details, cohort = calibrate_model(
            model,
            root,
            parse_folds(args.folds),
            args.far,
            tuple(args.yaw_edges),
            args.landmark_model,
            args.threads,
            cohort_folds=cohort_folds,
            top_k=args.top_k,
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
        written = write_thresholds(model, thresholds, details, cohort, args.top_k)
        print(f"thresholds written to {written}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
