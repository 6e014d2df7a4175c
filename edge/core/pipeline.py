"""One frame in, faces and events out: detect -> landmarks -> head pose + align -> embed ->
match -> tracker -> events. A plain object with the tracks as its state, so it is tested frame
by frame; the run loop (``edge.app.run``) owns the camera, timing, service protocol and sinks.

Stage latencies are measured per frame (milliseconds) and kept for health and the benchmark:
``detect``, ``landmarks``, ``pose_align``, ``embed``, ``match`` and ``frame`` (end to end).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from edge.core import events as ev
from edge.core.faces import alignment_for, device_refine, embed_batch, face_landmarks, faces_from_landmarks
from edge.core.matching import MatchResult, YawThresholds, match
from edge.core.tracker import Observation, Tracker
from edge.geometry.align import ARCFACE_112
from edge.storage.gallery.records import GalleryArrays

STAGES = ("detect", "landmarks", "pose_align", "embed", "match", "frame")


@dataclass(frozen=True, eq=False)
class FaceResult:
    """One face of a frame. ``box`` the detector's [x1, y1, x2, y2] pixels; angles in degrees;
    ``match`` the per-frame gallery match (None without an identity model); ``track_id`` its
    track; ``identity`` the track's decided identity (None while unknown or undecided)."""

    box: np.ndarray
    det_score: float
    landmarks: np.ndarray
    yaw: float
    pitch: float
    roll: float
    aligned: np.ndarray
    match: MatchResult | None
    track_id: int
    identity: str | None


@dataclass
class FrameResult:
    index: int
    name: str | None
    faces: list[FaceResult]
    events: list[ev.Event]
    timings_ms: dict[str, float]


@dataclass
class StageStats:
    """The last ``window`` latencies of each stage, for p50/p90 in health and bench reports."""

    window: int = 1000
    samples: dict[str, deque] = field(default_factory=dict)
    # health reads from its own thread while the frame loop adds
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, timings: dict[str, float]) -> None:
        with self.lock:
            for stage, ms in timings.items():
                self.samples.setdefault(stage, deque(maxlen=self.window)).append(ms)

    def clear(self) -> None:
        with self.lock:
            self.samples.clear()

    def summary(self) -> dict[str, dict[str, float]]:
        with self.lock:
            copies = {stage: list(values) for stage, values in self.samples.items()}
        out = {}
        for stage, values in copies.items():
            arr = np.asarray(values, dtype=np.float64)
            out[stage] = {
                "count": int(arr.size),
                "p50_ms": round(float(np.median(arr)), 3),
                "p90_ms": round(float(np.percentile(arr, 90)), 3),
            }
        return out


class FacePipeline:
    """``detector`` (``.detect(image) -> [Detection]``), ``crop_policy`` (detector box -> landmark
    crop), ``landmarker`` (:class:`edge.landmarks.Landmarker`), ``embedder`` an identity model
    runner or None (faces are then found and tracked, not named), ``gallery`` a callable returning
    the current :class:`GalleryArrays`, ``thresholds`` the pose-aware :class:`YawThresholds`.

    ``stills``: frames are independent photos (an image folder): every face is decided from its
    own frame and its track ends with the frame. Otherwise tracks live across frames."""

    def __init__(
        self,
        detector,
        crop_policy,
        landmarker,
        embedder=None,
        gallery: Callable[[], GalleryArrays] | None = None,
        thresholds: YawThresholds | None = None,
        tracker: Tracker | None = None,
        stills: bool = False,
        refine: int | None = None,
        clock: Callable[[], float] = time.perf_counter,
        flip: bool | None = None,
        stranger_rate: float | None = None,
        score_norm=None,
    ):
        if embedder is not None and thresholds is None:
            raise ValueError("FacePipeline: an identity model needs matching thresholds")
        if thresholds is not None and (thresholds.score == "as-norm") != (score_norm is not None):
            raise ValueError(
                f"FacePipeline: the thresholds compare {thresholds.score} scores; "
                "normalised scores need the model's cohort (edge.core.scorenorm) and cosines none"
            )
        self.score_norm = score_norm  # edge.core.scorenorm.ScoreNorm when the thresholds are normalised
        self.detector, self.crop_policy, self.landmarker = detector, crop_policy, landmarker
        self.embedder, self.gallery, self.thresholds = embedder, gallery, thresholds
        # The crop the identity model expects (its metadata); without one, faces are still
        # aligned (the face store keeps them) to the ArcFace template.
        self.alignment = alignment_for(embedder) if embedder is not None else ARCFACE_112
        self.flip = flip  # test-time flip; None: as the identity model's metadata says
        # None: each pair at the calibrated FAR; else thresholds follow the gallery's size so a
        # stranger is accepted at most about this often (YawThresholds.for_stranger_rate).
        self.stranger_rate = stranger_rate
        if stranger_rate is not None and thresholds is not None:
            thresholds.for_stranger_rate(1, stranger_rate)  # fail at start-up, not on the first face
        self.stills = stills
        self.tracker = tracker or Tracker()
        if stills:
            self.tracker.min_hits = 1
        self.refine = device_refine(landmarker) if refine is None else refine  # None: the landmark model's
        self.clock = clock
        self.stats = StageStats()
        self.counters = {"frames": 0, "faces": 0, "recognised": 0, "unknown": 0, "tracks_ended": 0}
        self.source_label = "unknown"

    # ------------------------------------------------------------------ one frame
    def process(
        self, image: np.ndarray, index: int = 0, name: str | None = None, source: str | None = None, wall_time=None
    ) -> FrameResult:
        clock, t = self.clock, {}
        start = clock()
        detections = self.detector.detect(image)
        t["detect"] = (clock() - start) * 1000

        t0 = clock()
        crops = [self.crop_policy.crop_box(d.box) for d in detections]
        points = face_landmarks(image, crops, self.landmarker, self.refine) if crops else []
        t["landmarks"] = (clock() - t0) * 1000

        t0 = clock()
        kept, poses, aligned = [], [], []
        for det, face in zip(detections, faces_from_landmarks(image, points, self.alignment)):
            if face is None:
                continue  # degenerate landmarks: no pose, no face
            kept.append((det, face.landmarks))
            poses.append(face)  # a PreparedFace carries yaw, pitch and roll
            aligned.append(face.aligned)
        t["pose_align"] = (clock() - t0) * 1000

        t0 = clock()
        embeddings = (
            embed_batch(self.embedder, aligned, flip=self.flip) if self.embedder is not None and aligned else None
        )
        t["embed"] = (clock() - t0) * 1000

        t0 = clock()
        gallery = self.gallery() if (self.gallery is not None and embeddings is not None) else None
        thresholds = self.thresholds
        if self.stranger_rate is not None and embeddings is not None:  # only for frames with faces to match
            thresholds = thresholds.for_stranger_rate(
                len(gallery.names) if gallery is not None else 0, self.stranger_rate
            )
        matches: list[MatchResult | None] = []
        for i, pose in enumerate(poses):
            if embeddings is None:
                matches.append(None)
            elif gallery is None or len(gallery.names) == 0:
                matches.append(MatchResult(None, None, None, None, thresholds.threshold_for(pose.yaw)))
            else:
                matches.append(match(embeddings[i], pose.yaw, gallery, thresholds, self.score_norm))
        t["match"] = (clock() - t0) * 1000

        observations = [
            Observation(
                box=np.asarray(det.box, dtype=np.float64),
                det_score=float(det.score),
                yaw=float(pose.yaw),
                candidate=None if m is None else m.candidate,
                score=None if m is None else m.score,
                accepted=bool(m is not None and m.name is not None),
                frame=name if name is not None else index,
            )
            for (det, _), pose, m in zip(kept, poses, matches)
        ]
        update = self.tracker.update(observations)
        frame_ref = name if name is not None else index
        src = source or self.source_label
        events = self._decide(update.assigned, src, frame_ref, wall_time)
        ended = update.ended + (self.tracker.end_all() if self.stills else [])
        events += self._ended(ended, src, frame_ref, wall_time)
        t["frame"] = (clock() - start) * 1000

        faces = [
            FaceResult(
                box=np.asarray(det.box, dtype=np.float64),
                det_score=float(det.score),
                landmarks=pts,
                yaw=pose.yaw,
                pitch=pose.pitch,
                roll=pose.roll,
                aligned=al,
                match=m,
                track_id=track.id,
                identity=track.identity,
            )
            for (det, pts), pose, al, m, track in zip(kept, poses, aligned, matches, update.assigned)
        ]
        self.stats.add(t)
        self.counters["frames"] += 1
        self.counters["faces"] += len(faces)
        return FrameResult(index, name, faces, events, t)

    def finish(self, source: str | None = None, wall_time=None) -> list[ev.Event]:
        """End every open track (end of the stream, shutdown): their track_ended events."""
        return self._ended(self.tracker.end_all(), source or self.source_label, None, wall_time)

    # ------------------------------------------------------------------ events
    def _decide(self, tracks, source, frame_ref, wall_time) -> list[ev.Event]:
        out = []
        if self.embedder is None:
            return out
        for track in tracks:
            obs = track.last
            box = [float(v) for v in obs.box]
            name, score = track.decide(self.tracker.min_hits)
            if name is not None and name != track.identity:
                track.identity, track.identity_score = name, score
                self.counters["recognised"] += 1
                out.append(
                    ev.recognised(
                        source=source,
                        track_id=track.id,
                        identity=name,
                        score=float(score),
                        yaw=obs.yaw,
                        box=box,
                        frame=frame_ref,
                        time=wall_time,
                    )
                )
            elif (
                name is None
                and track.identity is None
                and not track.unknown_reported
                and (track.hits >= self.tracker.min_hits)
            ):
                track.unknown_reported = True
                self.counters["unknown"] += 1
                best = max((o.score for o in track.evidence if o.score is not None), default=None)
                out.append(
                    ev.unknown_face(
                        source=source,
                        track_id=track.id,
                        score=best,
                        yaw=obs.yaw,
                        box=box,
                        frame=frame_ref,
                        time=wall_time,
                    )
                )
        return out

    def _ended(self, tracks, source, frame_ref, wall_time) -> list[ev.Event]:
        out = []
        for track in tracks:
            self.counters["tracks_ended"] += 1
            obs = track.last
            out.append(
                ev.track_ended(
                    source=source,
                    track_id=track.id,
                    identity=track.identity,
                    score=track.identity_score,
                    yaw=obs.yaw,
                    box=[float(v) for v in obs.box],
                    frame=obs.frame,
                    time=wall_time,
                )
            )
        return out
