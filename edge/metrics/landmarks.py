"""Landmark accuracy: NME (inter-ocular), CED curve, failure rate and AUC.

NME of one face is the mean point-to-point error divided by the distance between the outer
eye corners of the ground truth (iBUG points 36 and 45), the 300-W convention.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge.geometry.landmarks68 import OUTER_EYE_CORNERS

DEFAULT_THRESHOLD = 0.10


def nme(pred: np.ndarray, gt: np.ndarray, norm_points: tuple[int, int] = OUTER_EYE_CORNERS) -> np.ndarray:
    """Per-face NME of (N, P, 2) predictions against (N, P, 2) ground truth; shape (N,).

    A single face (P, 2) gives a 0-d array.
    """
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    if pred.shape != gt.shape or pred.shape[-1] != 2:
        raise ValueError(f"nme: prediction {pred.shape} and ground truth {gt.shape} must both be (..., P, 2)")
    a, b = norm_points
    norm = np.linalg.norm(gt[..., a, :] - gt[..., b, :], axis=-1)
    if np.any(norm <= 0):
        raise ValueError("nme: a ground-truth face has coincident normalising points (zero inter-ocular distance)")
    return np.linalg.norm(pred - gt, axis=-1).mean(axis=-1) / norm


def ced_curve(
    errors: np.ndarray, max_threshold: float = DEFAULT_THRESHOLD, steps: int = 1001
) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative error distribution: thresholds (steps,) and the fraction of faces at or below each."""
    errors = np.sort(np.asarray(errors, dtype=np.float64).ravel())
    if errors.size == 0:
        raise ValueError("ced_curve: no errors given")
    thresholds = np.linspace(0.0, max_threshold, steps)
    fractions = np.searchsorted(errors, thresholds, side="right") / errors.size
    return thresholds, fractions


def failure_rate(errors: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> float:
    """Fraction of faces whose NME is above ``threshold``."""
    errors = np.asarray(errors, dtype=np.float64).ravel()
    if errors.size == 0:
        raise ValueError("failure_rate: no errors given")
    return float((errors > threshold).mean())


def auc(errors: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> float:
    """Area under the CED curve from 0 to ``threshold``, divided by ``threshold`` (in [0, 1]).

    Computed exactly: the integral of the empirical CDF up to T is mean(max(0, T - e)).
    """
    errors = np.asarray(errors, dtype=np.float64).ravel()
    if errors.size == 0:
        raise ValueError("auc: no errors given")
    return float(np.clip(np.maximum(0.0, threshold - errors).mean() / threshold, 0.0, 1.0))


@dataclass(frozen=True)
class LandmarkScores:
    count: int
    nme: float
    failure_rate: float
    auc: float
    threshold: float

    def as_dict(self) -> dict:
        return {
            "count": self.count,
            "nme": self.nme,
            f"fr@{self.threshold:g}": self.failure_rate,
            f"auc@{self.threshold:g}": self.auc,
        }


def summarise(errors: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> LandmarkScores:
    """Mean NME, failure rate and AUC of per-face errors."""
    errors = np.asarray(errors, dtype=np.float64).ravel()
    return LandmarkScores(
        count=int(errors.size),
        nme=float(errors.mean()),
        failure_rate=failure_rate(errors, threshold),
        auc=auc(errors, threshold),
        threshold=threshold,
    )
