"""Face verification metrics: 10-fold accuracy, ROC, TAR at FAR, EER.

``scores`` are similarities (higher means more likely the same person); ``labels`` are True
for genuine (same-person) pairs. A pair is accepted when its score is >= the threshold.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _check(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).astype(bool).ravel()
    if scores.shape != labels.shape:
        raise ValueError(f"scores ({scores.size}) and labels ({labels.size}) differ in length")
    if not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or infinity")
    if labels.all() or not labels.any():
        raise ValueError("verification metrics need both genuine and impostor pairs")
    return scores, labels


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(far, tar, thresholds), one point per distinct score from the strictest threshold down.

    The first point is the threshold +inf (nothing accepted): far = tar = 0.
    """
    scores, labels = _check(scores, labels)
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order]
    last_of_value = np.r_[np.diff(s) != 0, True]  # ties are accepted together
    tp = np.cumsum(y)[last_of_value]
    fp = np.cumsum(~y)[last_of_value]
    tar = np.r_[0.0, tp / y.sum()]
    far = np.r_[0.0, fp / (~y).sum()]
    thresholds = np.r_[np.inf, s[last_of_value]]
    return far, tar, thresholds


def tar_at_far(scores: np.ndarray, labels: np.ndarray, far: float) -> tuple[float, float]:
    """(TAR, threshold) at the loosest threshold whose false-accept rate is <= ``far``."""
    fars, tars, thresholds = roc_curve(scores, labels)
    ok = np.nonzero(fars <= far)[0]
    i = ok[-1]
    return float(tars[i]), float(thresholds[i])


def eer(scores: np.ndarray, labels: np.ndarray) -> float:
    """Equal error rate: where the false-accept and false-reject rates cross (interpolated)."""
    fars, tars, _ = roc_curve(scores, labels)
    frr = 1.0 - tars
    diff = fars - frr  # rises from -1 to +1 along the curve
    i = int(np.nonzero(diff >= 0)[0][0])
    if i == 0 or diff[i] == 0:
        return float(fars[i])
    # linear interpolation between the two ROC points around the crossing
    t = -diff[i - 1] / (diff[i] - diff[i - 1])
    return float(fars[i - 1] + t * (fars[i] - fars[i - 1]))


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (probability a genuine pair outscores an impostor pair)."""
    fars, tars, _ = roc_curve(scores, labels)
    return float(np.sum(np.diff(fars) * (tars[1:] + tars[:-1]) / 2))


def best_threshold(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(threshold, accuracy) maximising accuracy; the threshold is a midpoint between scores."""
    scores, labels = _check(scores, labels)
    s = np.unique(scores)
    # beyond the ends by the score span, so the choice commutes with affine score maps
    margin = (s[-1] - s[0]) or 1.0
    candidates = np.r_[s[0] - margin, (s[:-1] + s[1:]) / 2, s[-1] + margin]
    accept = scores[None, :] >= candidates[:, None]
    acc = (accept == labels[None, :]).mean(axis=1)
    i = int(np.argmax(acc))
    return float(candidates[i]), float(acc[i])


def accuracy_at(scores: np.ndarray, labels: np.ndarray, threshold: float) -> float:
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).astype(bool).ravel()
    return float(((scores >= threshold) == labels).mean())


@dataclass(frozen=True)
class FoldedAccuracy:
    mean: float
    std: float
    per_fold: dict  # fold id -> accuracy on that fold
    thresholds: dict  # fold id -> threshold chosen on the other folds

    def as_dict(self) -> dict:
        return {
            "accuracy_mean": self.mean,
            "accuracy_std": self.std,
            "per_fold": {str(k): v for k, v in self.per_fold.items()},
            "thresholds": {str(k): v for k, v in self.thresholds.items()},
        }


def folded_accuracy(scores: np.ndarray, labels: np.ndarray, folds: np.ndarray) -> FoldedAccuracy:
    """The standard k-fold protocol: each fold is scored at the threshold best on the others.

    ``folds`` holds each pair's fold id (e.g. 1..10 for LFW View 2, the CFP split numbers).
    """
    scores, labels = _check(scores, labels)
    folds = np.asarray(folds).ravel()
    if folds.shape != scores.shape:
        raise ValueError(f"folds ({folds.size}) and scores ({scores.size}) differ in length")
    ids = np.unique(folds)
    if len(ids) < 2:
        raise ValueError("folded_accuracy needs at least two folds")
    per_fold, thresholds = {}, {}
    for k in ids:
        test = folds == k
        thr, _ = best_threshold(scores[~test], labels[~test])
        per_fold[k.item()] = accuracy_at(scores[test], labels[test], thr)
        thresholds[k.item()] = thr
    acc = np.array(list(per_fold.values()))
    return FoldedAccuracy(mean=float(acc.mean()), std=float(acc.std()), per_fold=per_fold, thresholds=thresholds)


def verification_report(
    scores: np.ndarray,
    labels: np.ndarray,
    folds: np.ndarray | None = None,
    fars: tuple[float, ...] = (1e-1, 1e-2, 1e-3),
) -> dict:
    """All verification numbers as one JSON-ready dict."""
    report: dict = {
        "pairs": int(np.size(scores)),
        "genuine": int(np.asarray(labels).astype(bool).sum()),
        "eer": eer(scores, labels),
        "roc_auc": roc_auc(scores, labels),
    }
    for far in fars:
        tar, thr = tar_at_far(scores, labels, far)
        report[f"tar@far={far:g}"] = tar
        report[f"threshold@far={far:g}"] = thr
    if folds is not None:
        report.update(folded_accuracy(scores, labels, folds).as_dict())
    return report
