"""Faces across frames: tracks with stable ids, and an identity decided from a track's evidence.

Association is greedy on IoU between a track's last box and the new detections (highest IoU
first), with a centre-distance fallback for fast motion: a detection whose centre lies within
half a box side of the track's centre continues it even at low IoU. A track not seen for
``max_age`` frames ends.

Every face a track sees is matched against the gallery on its own (pose-aware thresholds, as
calibrated for single photos). The track keeps its ``evidence_frames`` best observations (by
quality: detector score x frontalness) and names the identity that most of them accept, once
at least ``min_hits`` of them agree. One good frame is not enough and one bad frame cannot flip
a decided track, and the per-frame false-accept rate the thresholds were calibrated for still
bounds each vote.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Observation:
    """One face in one frame: ``box`` [x1, y1, x2, y2] pixels, ``yaw`` degrees, the per-frame
    match (``candidate`` the best identity, ``score`` its cosine, ``accepted`` whether it reached
    the threshold of the face's yaw bin), ``frame`` the frame's index or file name."""

    box: np.ndarray
    det_score: float
    yaw: float
    candidate: str | None
    score: float | None
    accepted: bool
    frame: int | str | None = None

    @property
    def quality(self) -> float:
        # Frontal, confidently detected faces are the most reliable evidence; a profile still
        # counts (cos 60 deg = 0.5), so a person seen only from the side can be decided.
        return float(self.det_score) * max(math.cos(math.radians(min(abs(self.yaw), 89.0))), 0.05)


@dataclass(eq=False)
class Track:
    id: int
    box: np.ndarray
    last: Observation
    hits: int = 1
    missed: int = 0
    evidence: list[Observation] = field(default_factory=list)
    identity: str | None = None
    identity_score: float | None = None
    reported: bool = False  # a recognised or unknown_face event went out for the current decision
    unknown_reported: bool = False

    def add(self, obs: Observation, keep: int) -> None:
        self.box, self.last = np.asarray(obs.box, dtype=np.float64), obs
        self.hits += 1
        self.missed = 0
        self._keep(obs, keep)

    def _keep(self, obs: Observation, keep: int) -> None:
        self.evidence.append(obs)
        if len(self.evidence) > keep:
            self.evidence.sort(key=lambda o: o.quality, reverse=True)
            del self.evidence[keep:]

    def decide(self, min_hits: int) -> tuple[str | None, float | None]:
        """(identity, its best score) from the evidence, or (None, None) while undecided."""
        votes: dict[str, list[float]] = {}
        for obs in self.evidence:
            if obs.accepted and obs.candidate is not None:
                votes.setdefault(obs.candidate, []).append(float(obs.score))
        if not votes:
            return None, None
        name, scores = max(votes.items(), key=lambda kv: (len(kv[1]), max(kv[1])))
        if len(scores) >= min_hits and 2 * len(scores) >= len(self.evidence):
            return name, max(scores)
        return None, None


def iou(a: np.ndarray, b: np.ndarray) -> float:
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def _centre_close(a: np.ndarray, b: np.ndarray) -> bool:
    ca, cb = (a[:2] + a[2:]) / 2, (b[:2] + b[2:]) / 2
    side = (max(a[2] - a[0], a[3] - a[1]) + max(b[2] - b[0], b[3] - b[1])) / 2
    return bool(np.hypot(*(ca - cb)) < 0.5 * side)


@dataclass(frozen=True)
class TrackUpdate:
    """What one frame did: ``assigned[i]`` the track of observation i; tracks that ``ended``."""

    assigned: list[Track]
    ended: list[Track]


class Tracker:
    def __init__(self, iou_threshold: float = 0.3, max_age: int = 15, min_hits: int = 2, evidence_frames: int = 5):
        self.iou_threshold, self.max_age = iou_threshold, max_age
        self.min_hits, self.evidence_frames = min_hits, evidence_frames
        self.tracks: list[Track] = []
        self._next_id = 1

    @classmethod
    def from_config(cls, cfg) -> Tracker:
        return cls(cfg.iou, cfg.max_age, cfg.min_hits, cfg.evidence_frames)

    def update(self, observations: list[Observation]) -> TrackUpdate:
        pairs = []
        for ti, track in enumerate(self.tracks):
            for oi, obs in enumerate(observations):
                box = np.asarray(obs.box, dtype=np.float64)
                overlap = iou(track.box, box)
                if overlap >= self.iou_threshold or _centre_close(track.box, box):
                    pairs.append((overlap, ti, oi))
        pairs.sort(key=lambda p: -p[0])
        used_t: set[int] = set()
        assigned: list[Track | None] = [None] * len(observations)
        for _, ti, oi in pairs:
            if ti in used_t or assigned[oi] is not None:
                continue
            used_t.add(ti)
            self.tracks[ti].add(observations[oi], self.evidence_frames)
            assigned[oi] = self.tracks[ti]
        for oi, obs in enumerate(observations):
            if assigned[oi] is None:
                track = Track(self._next_id, np.asarray(obs.box, dtype=np.float64), obs)
                track._keep(obs, self.evidence_frames)
                self._next_id += 1
                self.tracks.append(track)
                assigned[oi] = track
        ended = []
        seen = {id(t) for t in assigned}
        for track in self.tracks:
            if id(track) in seen:
                continue
            track.missed += 1
            if track.missed > self.max_age:
                ended.append(track)
        self.tracks = [t for t in self.tracks if t not in ended]
        return TrackUpdate([t for t in assigned if t is not None], ended)

    def end_all(self) -> list[Track]:
        """End every track (end of stream; after each independent still)."""
        ended, self.tracks = self.tracks, []
        return ended
