"""Face crops with the authors' augmentation plus detector-matched box jitter (numpy/OpenCV).

One affine warp does crop, scale, rotation, translation and flip together (one resampling,
exact landmark transform); occlusion, blur, grayscale and colour act on the crop after.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from edge.geometry.landmarks68 import MIRROR_68
from edge.landmarks.crop import apply_affine, crop_matrix, landmark_crop_box


@dataclass(frozen=True)
class AugmentConfig:
    # detector-matched jitter of the crop box (std of centre shift in box sides, std of log side);
    # set from the measured BlazeFace-vs-landmark-box residuals
    box_shift_std: float = 0.04
    box_log_scale_std: float = 0.06
    # the authors' geometric augmentation
    translate: float = 0.05  # max shift, fraction of the crop side
    rotate_deg: float = 30.0
    flip: float = 0.5
    # photometric
    occlude: float = 0.5  # probability of a random rectangle (up to 40% of the side)
    blur: float = 0.3
    gray: float = 0.2
    colour: float = 0.5


def _rotation_about(center: float, angle_deg: float) -> np.ndarray:
    a = np.radians(angle_deg)
    c, s = np.cos(a), np.sin(a)
    r = np.array([[c, -s], [s, c]])
    t = np.array([center, center]) - r @ np.array([center, center])
    return np.hstack([r, t[:, None]])


def _compose(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """outer o inner for 2x3 affine matrices."""
    a = np.vstack([outer, [0, 0, 1]]) @ np.vstack([inner, [0, 0, 1]])
    return a[:2]


def crop_for_training(
    image: np.ndarray,
    points: np.ndarray,
    size: int,
    rng: np.random.Generator | None,
    cfg: AugmentConfig,
    box: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(crop uint8 (size, size[, 3]), landmarks (L, 2) in crop pixels); ``rng=None``: no augmentation.

    ``box``: the square crop box before jitter (default: from the points by the test crop policy;
    partially labelled faces pass the box of their whole face). Unlabelled points (NaN) stay NaN,
    and the mirror moves them with their index."""
    box = landmark_crop_box(points) if box is None else np.asarray(box, dtype=np.float64)
    if rng is None:
        m = crop_matrix(box, size)
        return cv2.warpAffine(image, m, (size, size), flags=cv2.INTER_LINEAR), apply_affine(points, m)

    side = box[2] - box[0]
    centre = (box[:2] + box[2:]) / 2 + rng.normal(0, cfg.box_shift_std, 2) * side
    centre += rng.uniform(-cfg.translate, cfg.translate, 2) * side
    side *= float(np.exp(rng.normal(0, cfg.box_log_scale_std)))
    half = side / 2
    m = crop_matrix(np.r_[centre - half, centre + half], size)
    angle = rng.uniform(-cfg.rotate_deg, cfg.rotate_deg)
    m = _compose(_rotation_about((size - 1) / 2, angle), m)
    flipped = rng.random() < cfg.flip
    if flipped:
        m = _compose(np.array([[-1.0, 0, size - 1], [0, 1.0, 0]]), m)
    crop = cv2.warpAffine(image, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    pts = apply_affine(points, m)
    if flipped:
        pts = pts[MIRROR_68]
    return photometric(crop, rng, cfg), pts


def photometric(crop: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    size = crop.shape[0]
    out = crop.copy()
    if rng.random() < cfg.occlude:
        w, h = (rng.uniform(0.1, 0.4, 2) * size).astype(int)
        x, y = rng.integers(0, size - w), rng.integers(0, size - h)
        out[y : y + h, x : x + w] = rng.integers(0, 256, size=out.shape[2:] or (), dtype=np.uint8)
    if rng.random() < cfg.blur:
        k = int(rng.choice([3, 5]))
        out = cv2.GaussianBlur(out, (k, k), 0)
    if out.ndim == 3 and rng.random() < cfg.gray:
        out = cv2.cvtColor(cv2.cvtColor(out, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    if rng.random() < cfg.colour:
        alpha, beta = rng.uniform(0.7, 1.3), rng.uniform(-25, 25)
        out = cv2.convertScaleAbs(out, alpha=alpha, beta=beta)
    return out
