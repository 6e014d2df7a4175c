"""Pose-aware gallery matching: cosine similarity, with an accept threshold per probe yaw bin.

A profile probe scores lower against everyone, the right person included, than a frontal one,
so one threshold is either too strict for profiles or too lax for frontal faces. The threshold
therefore depends on the probe's |yaw| bin. The values are calibrated on real CFP
frontal-frontal and frontal-profile pairs at a target false-accept rate by
``python -m edge.calibrate`` and stored as the dict of :meth:`YawThresholds.to_dict`.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from edge.core.scorenorm import ScoreNorm
from edge.storage.gallery.records import GalleryArrays

# Upper edges of the |yaw| bins in degrees: [0, 15), [15, 30), [30, 45), [45, 180].
DEFAULT_YAW_EDGES = (15.0, 30.0, 45.0)
THRESHOLDS_VERSION = 1
SCORES = ("cosine", "as-norm")


class ThresholdsError(ValueError):
    """A thresholds record is malformed; the message names the source and the field."""


@dataclass(frozen=True)
class YawThresholds:
    """Accept thresholds per probe |yaw| bin (cosines, or normalised scores: ``score``).

    ``edges_deg`` are the ascending upper edges of all bins but the last (degrees, > 0);
    ``thresholds`` has one more entry than ``edges_deg``, each a cosine in [-1, 1] (any finite
    number for normalised scores). A probe with
    |yaw| equal to an edge belongs to the bin above it.
    """

    edges_deg: tuple[float, ...]
    thresholds: tuple[float, ...]
    # Optional, from calibration: per bin, the threshold at each false-accept rate of ``far_grid``
    # (descending rates, so each bin's row ascends). :meth:`for_stranger_rate` reads it.
    far_grid: tuple[float, ...] = ()
    grid: tuple[tuple[float, ...], ...] = ()
    # What the thresholds compare: "cosine" (raw), or "as-norm" (cohort-normalised scores,
    # edge.core.scorenorm; the model's metadata then carries the cohort).
    score: str = "cosine"

    def __post_init__(self) -> None:
        object.__setattr__(self, "edges_deg", tuple(float(e) for e in self.edges_deg))
        object.__setattr__(self, "thresholds", tuple(float(t) for t in self.thresholds))
        object.__setattr__(self, "far_grid", tuple(float(f) for f in self.far_grid))
        object.__setattr__(self, "grid", tuple(tuple(float(t) for t in row) for row in self.grid))
        _check(self.edges_deg, self.thresholds, "YawThresholds", self.score)
        _check_grid(self.far_grid, self.grid, len(self.thresholds), "YawThresholds", self.score)

    def for_stranger_rate(self, templates: int, rate: float) -> YawThresholds:
        """Thresholds under which a stranger is accepted by a gallery of ``templates`` rows at
        most about ``rate`` of the time (open-set identification), instead of each pair at the
        calibrated FAR.

        A stranger is accepted when any template reaches the threshold, so by the union bound
        each pair may false-accept at ``rate / templates``; each bin's threshold is interpolated
        at that rate in log-FAR on its calibrated grid, clamped to the grid's rates. Where the
        calibration had too few impostor pairs to resolve a rate, the grid holds a nearer bin's
        threshold or the bin's strictest measured one (``edge.calibrate``), so the real stranger
        rate may then exceed ``rate``.
        """
        if not self.far_grid:
            raise ThresholdsError(
                "matching.stranger_rate needs a FAR grid in the thresholds: "
                "recalibrate the model with python -m edge.calibrate"
            )
        if not 0.0 < float(rate) < 1.0:
            raise ValueError(f"matching.stranger_rate: expected a rate in (0, 1), got {rate!r}")
        pair_far = float(rate) / max(int(templates), 1)
        log_grid = np.log10(np.asarray(self.far_grid))[::-1]  # ascending for np.interp
        target = np.clip(np.log10(pair_far), log_grid[0], log_grid[-1])
        thresholds = tuple(float(np.interp(target, log_grid, np.asarray(row)[::-1])) for row in self.grid)
        return YawThresholds(self.edges_deg, thresholds, self.far_grid, self.grid, self.score)

    @classmethod
    def uniform(cls, threshold: float, edges_deg: tuple[float, ...] = DEFAULT_YAW_EDGES) -> YawThresholds:
        """The same threshold in every bin (before calibration, or for a pose-blind baseline)."""
        return cls(tuple(edges_deg), (float(threshold),) * (len(edges_deg) + 1))

    def bin_index(self, yaw_deg: float) -> int:
        yaw = float(yaw_deg)
        if not math.isfinite(yaw):
            raise ValueError(f"YawThresholds: probe yaw must be a finite number of degrees, got {yaw_deg!r}")
        return bisect.bisect_right(self.edges_deg, abs(yaw))

    def threshold_for(self, yaw_deg: float) -> float:
        return self.thresholds[self.bin_index(yaw_deg)]

    def bin_labels(self) -> list[str]:
        """Human labels of the bins, e.g. ["0-15", "15-30", "30-45", "45+"]."""
        lows = (0.0,) + self.edges_deg
        highs = self.edges_deg + (None,)
        return [f"{lo:g}-{hi:g}" if hi is not None else f"{lo:g}+" for lo, hi in zip(lows, highs)]

    def to_dict(self) -> dict:
        out = {"version": THRESHOLDS_VERSION, "edges_deg": list(self.edges_deg), "thresholds": list(self.thresholds)}
        if self.far_grid:
            out["far_grid"] = list(self.far_grid)
            out["grid_thresholds"] = [list(row) for row in self.grid]
        if self.score != "cosine":
            out["score"] = self.score
        return out

    @classmethod
    def from_dict(cls, data: Any, source: str = "<thresholds>") -> YawThresholds:
        if not isinstance(data, Mapping):
            raise ThresholdsError(f"{source}: expected an object with edges_deg and thresholds, got {data!r}")
        known = {"version", "edges_deg", "thresholds", "far_grid", "grid_thresholds", "score"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ThresholdsError(f"{source}: unknown field '{unknown[0]}' (known: {', '.join(sorted(known))})")
        if data.get("version") != THRESHOLDS_VERSION:
            raise ThresholdsError(
                f"{source}: field 'version': expected {THRESHOLDS_VERSION}, got {data.get('version')!r}"
            )
        score = data.get("score", "cosine")  # checked by _check with the thresholds
        for name in ("edges_deg", "thresholds") + (("far_grid",) if "far_grid" in data else ()):
            value = data.get(name)
            if not isinstance(value, (list, tuple)) or not all(_is_number(v) for v in value):
                raise ThresholdsError(f"{source}: field '{name}': expected a list of numbers, got {value!r}")
        _check(tuple(data["edges_deg"]), tuple(data["thresholds"]), source, score)
        if ("far_grid" in data) != ("grid_thresholds" in data):
            raise ThresholdsError(f"{source}: fields 'far_grid' and 'grid_thresholds' come together, got only one")
        far_grid, grid = data.get("far_grid", []), data.get("grid_thresholds", [])
        if not isinstance(grid, (list, tuple)) or not all(
            isinstance(row, (list, tuple)) and all(_is_number(v) for v in row) for row in grid
        ):
            raise ThresholdsError(
                f"{source}: field 'grid_thresholds': expected a list of lists of numbers, got {grid!r}"
            )
        _check_grid(tuple(far_grid), tuple(tuple(row) for row in grid), len(data["thresholds"]), source, score)
        return cls(
            tuple(data["edges_deg"]), tuple(data["thresholds"]), tuple(far_grid), tuple(tuple(r) for r in grid), score
        )


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _in_range(value: float, score: str) -> bool:
    """A cosine lies in [-1, 1]; a normalised score is any finite number."""
    return -1.0 <= value <= 1.0 if score == "cosine" else math.isfinite(value)


def _range_text(score: str) -> str:
    return "cosines in [-1, 1]" if score == "cosine" else "finite numbers"


def _check(edges: tuple, thresholds: tuple, source: str, score: str = "cosine") -> None:
    if not all(_is_number(e) and e > 0 for e in edges) or list(edges) != sorted(set(edges)):
        raise ThresholdsError(
            f"{source}: field 'edges_deg': expected strictly ascending degrees > 0, got {list(edges)}"
        )
    if len(thresholds) != len(edges) + 1:
        raise ThresholdsError(
            f"{source}: field 'thresholds': expected {len(edges) + 1} values (one per bin), got {len(thresholds)}"
        )
    if score not in SCORES:
        raise ThresholdsError(f"{source}: field 'score': expected one of {', '.join(SCORES)}, got {score!r}")
    if not all(_is_number(t) and _in_range(t, score) for t in thresholds):
        raise ThresholdsError(f"{source}: field 'thresholds': expected {_range_text(score)}, got {list(thresholds)}")


def _check_grid(far_grid: tuple, grid: tuple, bins: int, source: str, score: str = "cosine") -> None:
    if not far_grid and not grid:
        return
    if not all(0 < f < 1 for f in far_grid) or list(far_grid) != sorted(set(far_grid), reverse=True):
        raise ThresholdsError(
            f"{source}: field 'far_grid': expected strictly descending rates in (0, 1), got {list(far_grid)}"
        )
    if len(grid) != bins or any(len(row) != len(far_grid) for row in grid):
        raise ThresholdsError(
            f"{source}: field 'grid_thresholds': expected {bins} rows (one per bin) "
            f"of {len(far_grid)} values (one per rate)"
        )
    for row in grid:
        if not all(_in_range(t, score) for t in row) or any(b < a for a, b in zip(row, row[1:])):
            raise ThresholdsError(
                f"{source}: field 'grid_thresholds': expected {_range_text(score)}, "
                f"not decreasing as the rate falls, got {list(row)}"
            )


@dataclass(frozen=True)
class MatchResult:
    """``name`` is the accepted identity or None; ``score`` the best cosine (also when rejected,
    None for an empty gallery); ``template_yaw`` the yaw of the best template (degrees);
    ``candidate`` the best identity whether accepted or not; ``threshold`` the one applied;
    ``norm_score`` the cohort-normalised score the threshold was compared with (None when the
    thresholds compare cosines)."""

    name: str | None
    score: float | None
    template_yaw: float | None
    candidate: str | None = None
    threshold: float | None = None
    norm_score: float | None = None


def _unit_probe(probe: Any, dim: int) -> np.ndarray:
    vec = np.asarray(probe, dtype=np.float32).reshape(-1)
    if dim and vec.size != dim:
        raise ValueError(f"match: probe embedding: expected {dim} values (the gallery's dim), got {vec.size}")
    if not np.isfinite(vec).all():
        raise ValueError("match: probe embedding contains NaN or infinity")
    norm = float(np.linalg.norm(vec))
    if not norm > 1e-12:
        raise ValueError("match: probe embedding has zero length")
    return vec / norm


def identity_scores(probe: Any, gallery: GalleryArrays) -> list[tuple[str, float, float]]:
    """(name, best cosine, yaw of that template) per identity, best first.

    An identity's score is its best template's: templates cover different poses, and the one
    closest to the probe's pose is the fair comparison. The gallery rows are unit vectors
    (as :meth:`edge.storage.gallery.store.Gallery.templates` returns them).
    """
    names, embeddings, yaws = gallery
    if len(names) == 0:
        return []
    scores = embeddings @ _unit_probe(probe, embeddings.shape[1])
    out, seen = [], set()
    for k in np.argsort(-scores, kind="stable"):
        if names[k] not in seen:
            seen.add(names[k])
            out.append((names[k], float(scores[k]), float(yaws[k])))
    return out


def match(
    probe: Any, probe_yaw: float, gallery: GalleryArrays, thresholds: YawThresholds, score_norm: ScoreNorm | None = None
) -> MatchResult:
    """The best identity for ``probe`` (D,), accepted when its score reaches the threshold of
    ``probe_yaw``'s bin (degrees). Thresholds calibrated on normalised scores
    (``thresholds.score == "as-norm"``) need the model's ``score_norm``; the best template is
    then the one with the best normalised score, and ``score`` stays its cosine."""
    if (thresholds.score == "as-norm") != (score_norm is not None):
        raise ValueError(
            f"match: thresholds compare {thresholds.score} scores, "
            + ("but no score normalisation was given" if score_norm is None else "but a score normalisation was given")
        )
    threshold = thresholds.threshold_for(probe_yaw)
    names, embeddings, yaws = gallery
    if len(names) == 0:
        return MatchResult(name=None, score=None, template_yaw=None, candidate=None, threshold=threshold)
    if score_norm is None:
        name, score, template_yaw = identity_scores(probe, gallery)[0]
        accepted = name if score >= threshold else None
        return MatchResult(name=accepted, score=score, template_yaw=template_yaw, candidate=name, threshold=threshold)
    unit = _unit_probe(probe, embeddings.shape[1])
    cosines = embeddings @ unit
    normed = score_norm.normalise(cosines[None, :], score_norm.stats(unit), score_norm.template_stats(embeddings))[0]
    k = int(np.argmax(normed))
    accepted = names[k] if normed[k] >= threshold else None
    return MatchResult(
        name=accepted,
        score=float(cosines[k]),
        template_yaw=float(yaws[k]),
        candidate=names[k],
        threshold=threshold,
        norm_score=float(normed[k]),
    )
