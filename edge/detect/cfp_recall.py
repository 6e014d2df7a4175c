"""Detector recall on CFP: does the detector find the face that the fiducials mark?

    python -m edge.detect.cfp_recall --root CFP_ROOT --folds 1-9 [--detector blazeface|haar]
        [--range short|full] [--score-threshold X] [--iou 0.3] [--every N] --json OUT

A photo counts as found when some detection's box has IoU >= ``--iou`` with the box around
its 30 hand-marked fiducials. CFP's frontal fiducials cover one half of the face (jaw line
to the nose bridge), so even a perfect face box reaches an IoU of only ~0.45 on frontal
photos; 0.3 is therefore the bar. A looser criterion is reported beside it:
``recall_centre_inside``, the centre of the fiducials' box lying inside some detection box
(it tells a face found with a loose box from a face not found at all).

Timing is of the ``detect`` call alone (decoding from disk excluded), on the thread count
given (default 1), after one warm-up call.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import cv2
import numpy as np

from edge.datasets.cfp import (
    VIEWS,
    absent_folds,
    available_folds,
    cfp_photos,
    cfp_root,
    fiducial_box,
    fold_identities,
    parse_folds,
    read_fiducials,
)
from edge.datasets.root import data_root
from edge.detect.base import Detection, FaceDetector, box_iou
from edge.detect.registry import add_detector_arguments, build_detector, detector_config_from_args
from edge.imageio import ImageReadError, read_image_bgr


def score_photo(detections: Sequence[Detection], points: np.ndarray) -> dict[str, float]:
    """Best IoU with the fiducials' box, and whether that box's centre is inside a detection."""
    if not detections:
        return {"best_iou": 0.0, "centre_inside": False}
    truth = fiducial_box(points)
    boxes = np.stack([d.box for d in detections])
    cx, cy = (truth[0] + truth[2]) / 2, (truth[1] + truth[3]) / 2
    inside = (boxes[:, 0] <= cx) & (cx <= boxes[:, 2]) & (boxes[:, 1] <= cy) & (cy <= boxes[:, 3])
    return {"best_iou": float(box_iou(truth, boxes).max()), "centre_inside": bool(inside.any())}


def _summary(rows: list[dict[str, Any]], iou: float) -> dict[str, Any]:
    if not rows:
        return {"photos": 0}
    best = np.array([r["best_iou"] for r in rows])
    inside = np.array([r["centre_inside"] for r in rows])
    times = np.array([r["ms"] for r in rows])
    return {
        "photos": len(rows),
        "found": int((best >= iou).sum()),
        "recall": round(float((best >= iou).mean()), 5),
        "recall_centre_inside": round(float(inside.mean()), 5),
        "no_detection": int(sum(r["detections"] == 0 for r in rows)),
        "median_best_iou": round(float(np.median(best)), 4),
        "time_ms_mean": round(float(times.mean()), 3),
        "time_ms_median": round(float(np.median(times)), 3),
    }


def evaluate(
    detector: FaceDetector,
    photos: Iterable,
    iou: float = 0.3,
    progress: Callable[[Iterable], Iterable] | None = None,
) -> dict[str, Any]:
    """Run ``detector`` over CFP photos; per-view and per-fold recall, timing, misses."""
    photos = list(photos)
    # One warm-up call so the first photo's time holds no one-off interpreter set-up.
    detector.detect(np.zeros((64, 64, 3), np.uint8))
    rows: list[dict[str, Any]] = []
    failed: list[str] = []
    for photo in progress(photos) if progress else photos:
        try:
            image = read_image_bgr(photo.image_path)
            points = read_fiducials(photo.fiducials_path)
        except (ImageReadError, ValueError) as err:
            failed.append(str(err))
            continue
        start = time.perf_counter()
        detections = detector.detect(image)
        elapsed_ms = (time.perf_counter() - start) * 1000.0
        fold = (photo.identity - 1) // 50 + 1
        row = {
            "identity": photo.identity,
            "view": photo.view,
            "number": photo.number,
            "fold": fold,
            "ms": elapsed_ms,
            "detections": len(detections),
        }
        row.update(score_photo(detections, points))
        rows.append(row)

    folds = sorted({r["fold"] for r in rows})
    all_times = np.array([r["ms"] for r in rows]) if rows else np.zeros(1)
    return {
        "iou_threshold": iou,
        "photos": len(rows),
        "views": {v: _summary([r for r in rows if r["view"] == v], iou) for v in VIEWS},
        "per_fold": {
            str(f): {v: _summary([r for r in rows if r["fold"] == f and r["view"] == v], iou) for v in VIEWS}
            for f in folds
        },
        "time_ms": {
            "mean": round(float(all_times.mean()), 3),
            "median": round(float(np.median(all_times)), 3),
            "p95": round(float(np.percentile(all_times, 95)), 3),
        },
        "no_detection": int(sum(r["detections"] == 0 for r in rows)),
        "missed": [f"{r['identity']:03d}/{r['view']}/{r['number']:02d}" for r in rows if r["best_iou"] < iou],
        "unreadable": failed,
    }


def _progress_bar() -> Callable[[Iterable], Iterable] | None:
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return lambda items: tqdm(items, unit="photo", file=sys.stderr)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m edge.detect.cfp_recall",
        description="Face detector recall on CFP (frontal and profile) against the fiducials.",
    )
    parser.add_argument("--root", type=Path, default=None, help="CFP folder (default: DATA/cfp)")
    parser.add_argument("--folds", default="1-9", help="e.g. 1-9 or 1,3,5 (default 1-9)")
    add_detector_arguments(parser)
    parser.add_argument("--iou", type=float, default=0.3)
    parser.add_argument("--every", type=int, default=1, help="use every Nth identity (default 1)")
    parser.add_argument("--json", type=Path, required=True, dest="json_out")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    try:
        folds = parse_folds(args.folds)
        root = cfp_root(args.root if args.root is not None else data_root() / "cfp")
        absent = absent_folds(root, folds)
        if absent:
            raise ValueError(f"--folds: fold(s) {absent} are not in {root} (present: {available_folds(root)})")
        if not 0 < args.iou <= 1:
            raise ValueError(f"--iou: expected a value in (0, 1], got {args.iou}")
        if args.every < 1:
            raise ValueError(f"--every: expected a positive integer, got {args.every}")
        identities = [i for f in folds for i in fold_identities(f)][:: args.every]
        photos = cfp_photos(root, identities=identities)
        if args.threads < 1:
            raise ValueError(f"--threads: expected a positive integer, got {args.threads}")
        # OpenCV's own pool (resizing, Haar cascades) is held to the same count, so timings
        # compare detectors on equal terms.
        cv2.setNumThreads(args.threads)
        config = detector_config_from_args(args)
        detector = build_detector(config)
    except (ValueError, OSError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    result = {"detector": config, "root": str(root), "folds": folds, "every": args.every}
    result.update(evaluate(detector, photos, iou=args.iou, progress=_progress_bar()))
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")

    name = config["type"] + (f" {config['range']}" if "range" in config else "")
    for view in VIEWS:
        s = result["views"][view]
        if s["photos"]:
            print(
                f"{name:16s} {view:8s} recall@iou{args.iou:g} {s['recall']:.4f} "
                f"({s['found']}/{s['photos']}), centre-inside {s['recall_centre_inside']:.4f}, "
                f"no detection {s['no_detection']}, median {s['time_ms_median']:.2f} ms"
            )
    if result["unreadable"]:
        print(f"error: {len(result['unreadable'])} photo(s) unreadable", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
