"""Five-point similarity alignment to the standard ArcFace 112x112 template."""

from __future__ import annotations

import cv2
import numpy as np

# The widely used ArcFace (InsightFace) 112x112 reference positions, in the order of
# landmarks68.five_points: eyes, nose tip, mouth corners (image left before image right).
ARCFACE_TEMPLATE_112 = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)


def template_for_size(size: int = 112) -> np.ndarray:
    """The template scaled to a square output of ``size`` pixels."""
    return ARCFACE_TEMPLATE_112 * (size / 112.0)


def estimate_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping src to dst.

    Umeyama's closed form; returns the 2x3 matrix M with dst ~ M @ [x, y, 1]. A reflection
    is never returned, so a mirrored face is not silently un-mirrored.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
        raise ValueError(f"estimate_similarity: need two (N>=2, 2) arrays, got {src.shape} and {dst.shape}")
    mu_s, mu_d = src.mean(axis=0), dst.mean(axis=0)
    s0, d0 = src - mu_s, dst - mu_d
    var_s = (s0**2).sum() / len(src)
    if var_s <= 1e-12:
        raise ValueError("estimate_similarity: source points are all at one place")
    cov = d0.T @ s0 / len(src)
    u, sing, vt = np.linalg.svd(cov)
    sign = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[1] = -1.0
    rot = u @ np.diag(sign) @ vt
    scale = (sing * sign).sum() / var_s
    m = np.empty((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - m[:, :2] @ mu_s
    return m


def alignment_matrix(five: np.ndarray, size: int = 112) -> np.ndarray:
    """2x3 matrix taking image pixels to the aligned ``size`` x ``size`` crop."""
    return estimate_similarity(np.asarray(five, dtype=np.float64).reshape(5, 2), template_for_size(size))


def align_face(image: np.ndarray, five: np.ndarray, size: int = 112) -> np.ndarray:
    """Warp ``image`` (H, W[, C]) so the 5 points land on the template; returns (size, size[, C])."""
    m = alignment_matrix(five, size)
    return cv2.warpAffine(image, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply a 2x3 affine matrix to (..., 2) points."""
    p = np.asarray(points, dtype=np.float64)
    return p @ matrix[:, :2].T + matrix[:, 2]
