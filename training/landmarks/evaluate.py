"""Landmark evaluation with the device's own code path: crop policy, runner, numpy decoder."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np

from edge.imageio import read_image_bgr
from edge.landmarks.crop import apply_affine, crop_face, invert_affine, landmark_crop_box
from edge.landmarks.landmarker import Landmarker
from edge.metrics.landmarks import nme


def predict_faces(
    landmarker: Landmarker, items: Iterable[tuple[Path, np.ndarray]], progress=None, chunk: int = 64
) -> np.ndarray:
    """Landmarks (N, 68, 2) in image pixels for (image path, crop box) items, in order.

    Crops are batched across images (``chunk`` at a time), which is what keeps evaluation
    fast on a CPU.
    """
    items = list(items)
    preds = []
    for start in (progress or (lambda r: r))(range(0, len(items), chunk)):
        crops, inverses = [], []
        for path, box in items[start : start + chunk]:
            crop, m = crop_face(read_image_bgr(path), box, landmarker.size)
            crops.append(crop)
            inverses.append(invert_affine(m))
        pts = landmarker.predict_crops(crops)
        preds += [apply_affine(p, inv) for p, inv in zip(pts, inverses)]
    return np.stack(preds)


def evaluate_labelled(landmarker: Landmarker, faces: list[tuple[Path, np.ndarray]], progress=None) -> np.ndarray:
    """Per-face NME of (image path, ground-truth points) under the test crop policy."""
    items = [(path, landmark_crop_box(gt)) for path, gt in faces]
    preds = predict_faces(landmarker, items, progress)
    return nme(preds, np.stack([gt for _, gt in faces]))
