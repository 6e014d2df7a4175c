"""Face crops for the landmark model: the box policy and the warp in and out of the crop.

Boxes are [x1, y1, x2, y2] in pixels. A crop is always square: the model sees a face at the
same scale whatever the box's aspect. Two policies produce the same crop on average:
- from ground-truth landmarks (training, evaluation): the landmark box's centre, side =
  ``LANDMARK_CROP_SCALE`` x its larger side;
- from a detector box (the device): the detector box's centre shifted and scaled by the
  measured relation between detector boxes and landmark boxes (``DetectorCropPolicy``).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

# The square crop side is 1.2x the larger side of the 68-point box: the jaw line and brows
# bound the face, and the margin keeps the whole contour inside under box noise.
LANDMARK_CROP_SCALE = 1.2


def square_box(center: np.ndarray, side: float) -> np.ndarray:
    cx, cy = np.asarray(center, dtype=np.float64)
    half = side / 2.0
    return np.array([cx - half, cy - half, cx + half, cy + half])


def landmark_crop_box(points: np.ndarray, scale: float = LANDMARK_CROP_SCALE) -> np.ndarray:
    """The square crop box of a face from its landmarks (any number of (x, y) points)."""
    p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    p = p[np.isfinite(p).all(axis=1)]
    if len(p) < 2:
        raise ValueError("landmark_crop_box: need at least two finite points")
    lo, hi = p.min(axis=0), p.max(axis=0)
    return square_box((lo + hi) / 2.0, float((hi - lo).max()) * scale)


@dataclass(frozen=True)
class DetectorCropPolicy:
    """Maps a detector box to the landmark crop box.

    centre = box centre + (shift_x, shift_y) * box side; side = scale * box side, where box
    side is the larger side of the detector box. The defaults are identity; the runtime
    loads the values measured for the detector in use (see the landmark model's metadata).
    """

    shift_x: float = 0.0
    shift_y: float = 0.0
    scale: float = LANDMARK_CROP_SCALE

    def crop_box(self, det_box: np.ndarray) -> np.ndarray:
        x1, y1, x2, y2 = np.asarray(det_box, dtype=np.float64)
        side = max(x2 - x1, y2 - y1)
        if not side > 0:
            raise ValueError(f"detector box {det_box} has no area")
        centre = np.array([(x1 + x2) / 2 + self.shift_x * side, (y1 + y2) / 2 + self.shift_y * side])
        return square_box(centre, self.scale * side)


def crop_matrix(box: np.ndarray, size: int) -> np.ndarray:
    """2x3 matrix taking image pixels into a ``size`` x ``size`` crop of the square ``box``.

    Pixel centres are at integer coordinates in both, and box edges are continuous: x1 maps
    to -0.5 (the crop's left edge) and x2 to size - 0.5, so the box [-0.5, -0.5, W - 0.5,
    H - 0.5] of a square image gives what cv2.resize gives.
    """
    x1, y1, x2, y2 = np.asarray(box, dtype=np.float64)
    s = size / (x2 - x1)
    sy = size / (y2 - y1)
    if not (s > 0 and sy > 0):
        raise ValueError(f"crop box {box} has no area")
    return np.array([[s, 0.0, -0.5 - x1 * s], [0.0, sy, -0.5 - y1 * sy]])


def crop_face(image: np.ndarray, box: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(crop, matrix): the square box resampled to size x size (zero outside the image)."""
    m = crop_matrix(box, size)
    crop = cv2.warpAffine(image, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    return crop, m


def invert_affine(matrix: np.ndarray) -> np.ndarray:
    a = np.vstack([matrix, [0.0, 0.0, 1.0]])
    return np.linalg.inv(a)[:2]


def apply_affine(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    p = np.asarray(points, dtype=np.float64)
    return p @ matrix[:, :2].T + matrix[:, 2]


# Measured on the 976 300-W training faces by `python -m training.landmarks.crop_policy`
# (BlazeFace short range, score >= 0.5, every face found): the landmark crop's centre sits
# 0.054 detector-box sides below the detector box's centre, and its side is 1.167x the
# detector box's. Residual spread (robust std): centre 0.032, log side 0.075; training's box
# jitter covers it.
BLAZEFACE_SHORT_CROP = DetectorCropPolicy(shift_x=0.0038, shift_y=0.0542, scale=1.1668)
