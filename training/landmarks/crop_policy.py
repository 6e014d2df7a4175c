"""Measure how detector boxes sit against the landmark crop box on real 300-W faces.

On the device the landmark crop comes from a detector box; in training and evaluation it
comes from the 68 ground-truth points. This fits the map between them (``DetectorCropPolicy``:
centre shift and scale, medians over the training faces) and reports the residual spread,
which is what the training box jitter must cover. Validation faces are reported separately.

    python -m training.landmarks.crop_policy [--detector blazeface] [--range short] --json OUT
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from edge.datasets.w300 import list_300w, load_landmarks, split_300w
from edge.detect.base import box_iou
from edge.detect.registry import build_detector
from edge.imageio import read_image_bgr
from edge.landmarks.crop import LANDMARK_CROP_SCALE, landmark_crop_box


def box_relation(det_box: np.ndarray, crop_box: np.ndarray) -> tuple[float, float, float]:
    """(shift_x, shift_y, log scale) taking the detector box to the crop box, in det-box sides."""
    side = max(det_box[2] - det_box[0], det_box[3] - det_box[1])
    dc = (det_box[:2] + det_box[2:]) / 2
    cc = (crop_box[:2] + crop_box[2:]) / 2
    shift = (cc - dc) / side
    return float(shift[0]), float(shift[1]), float(np.log((crop_box[2] - crop_box[0]) / side))


def measure(detector, faces, progress=True) -> dict:
    rows, missed = [], 0
    for face in tqdm(faces, disable=not progress, desc="detect"):
        pts = load_landmarks(face)
        crop_box = landmark_crop_box(pts)
        tight = np.r_[pts.min(axis=0), pts.max(axis=0)]
        dets = detector.detect(read_image_bgr(face.image_path))
        if not dets:
            missed += 1
            continue
        ious = box_iou(tight, np.stack([d.box for d in dets]))
        best = int(np.argmax(ious))
        if ious[best] < 0.3:
            missed += 1
            continue
        rows.append(box_relation(dets[best].box, crop_box))
    return {"rows": np.array(rows), "missed": missed, "faces": len(faces)}


def fit_policy(rows: np.ndarray) -> dict:
    med = np.median(rows, axis=0)
    resid = rows - med
    # robust spread (1.4826 x MAD ~ std for a normal distribution)
    spread = 1.4826 * np.median(np.abs(resid), axis=0)
    return {
        "shift_x": round(float(med[0]), 4),
        "shift_y": round(float(med[1]), 4),
        "scale": round(float(np.exp(med[2])), 4),
        "residual_shift_std": round(float(np.hypot(spread[0], spread[1]) / np.sqrt(2)), 4),
        "residual_log_scale_std": round(float(spread[2]), 4),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--detector", default="blazeface")
    parser.add_argument("--range", default="short", choices=["short", "full"])
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args(argv)
    cfg = {"type": args.detector, **({"range": args.range} if args.detector == "blazeface" else {})}
    detector = build_detector(cfg)
    train, val = split_300w(list_300w())
    m_train, m_val = measure(detector, train), measure(detector, val)
    policy = fit_policy(m_train["rows"])
    val_resid = m_val["rows"] - np.array([policy["shift_x"], policy["shift_y"], np.log(policy["scale"])])
    report = {
        "detector": cfg,
        "landmark_crop_scale": LANDMARK_CROP_SCALE,
        "policy": policy,
        "train": {"faces": m_train["faces"], "matched": len(m_train["rows"]), "missed": m_train["missed"]},
        "val": {
            "faces": m_val["faces"],
            "matched": len(m_val["rows"]),
            "missed": m_val["missed"],
            "residual_shift_p90": round(float(np.percentile(np.abs(val_resid[:, :2]), 90)), 4),
            "residual_log_scale_p90": round(float(np.percentile(np.abs(val_resid[:, 2]), 90)), 4),
        },
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
