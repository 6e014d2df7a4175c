"""Prometheus metrics for ``GET /metrics``, through ``prometheus_client``.

How: one :class:`SnapshotCollector` per health server, registered in that server's own
``CollectorRegistry`` (never the process-global one, so two runners or a test never share
metrics). At each scrape it turns the runner's health snapshot into metric families. The
snapshot is the one source of truth: ``/health`` and ``/metrics`` show the same numbers, the
frame loop keeps no second set of counters, and a scrape only reads a published copy (a slow
client never touches the loop).

Per-stage latency needs every observation, which the snapshot's p50/p90 (a window of recent
frames) cannot give; so the runner feeds each frame's stage timings to a :class:`StageLatency`
(cumulative bucket counts, a few integers per stage) and publishes its :meth:`~StageLatency.to_dict`
in the snapshot under ``latency_histogram``.

Metrics (every one with HELP and TYPE, labelled by ``camera``, the source's label with any URL
credentials already redacted):

- counters: frames, faces, recognised, unknown, tracks ended, bad frames, events by ``type``,
  events sent / dropped / failed by ``sink``, source reconnects, outages, outage seconds, frames
  the source dropped;
- histogram: ``poseface_stage_latency_seconds`` by ``stage`` (the pipeline's detect, landmarks,
  pose_align, embed, match and the whole frame);
- gauges: fps, event queue depth by ``sink``, source outage (1 while the camera is lost and
  being reopened), healthy, uptime, gallery identities.
"""

from __future__ import annotations

import bisect
import math
import threading
from typing import Any, Callable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.utils import floatToGoString

PREFIX = "poseface"
# Upper bounds in seconds: sub-millisecond stages (match, pose_align) to a whole frame on a Pi.
LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
UNKNOWN_CAMERA = "unknown"

# (name without prefix and _total, path in the snapshot, HELP)
COUNTERS = (
    ("frames", ("counters", "frames"), "Frames processed by the pipeline."),
    ("faces", ("counters", "faces"), "Faces found in processed frames."),
    ("recognised", ("counters", "recognised"), "Tracks recognised as a gallery identity (recognised events)."),
    ("unknown", ("counters", "unknown"), "Tracks decided as nobody in the gallery (unknown_face events)."),
    ("tracks_ended", ("counters", "tracks_ended"), "Face tracks ended (track_ended events)."),
    ("bad_frames", ("counters", "bad_frames"), "Frames the pipeline failed on and skipped."),
    ("source_reconnects", ("source", "reconnects"), "Times the source came back after an outage."),
    ("source_outages", ("source", "outages"), "Outages of the source (camera lost)."),
    ("source_outage_seconds", ("source", "outage_seconds"), "Seconds the source has been lost, in all."),
    ("source_dropped_frames", ("source", "dropped_frames"), "Frames the source dropped before the pipeline."),
)
SINK_COUNTERS = (
    ("events_sent", "sent", "Events delivered, per sink."),
    ("events_dropped", "dropped", "Events dropped, per sink (pushed out of a full queue, or queued at close)."),
    ("events_failed", "failed", "Events given up after the retries or refused by the receiver, per sink."),
)


class StageLatency:
    """Cumulative latency histograms per pipeline stage (thread-safe): the frame loop calls
    :meth:`observe` with each frame's ``timings_ms``, the health snapshot carries :meth:`to_dict`."""

    def __init__(self, buckets_s: tuple[float, ...] = LATENCY_BUCKETS_S):
        if not buckets_s or list(buckets_s) != sorted(set(buckets_s)) or buckets_s[0] <= 0:
            raise ValueError(f"StageLatency: buckets must be increasing positive seconds, got {buckets_s!r}")
        self.buckets_s = tuple(float(b) for b in buckets_s)
        self._lock = threading.Lock()
        self._counts: dict[str, list[int]] = {}  # per bucket, not cumulative; the last is +Inf
        self._sums: dict[str, float] = {}

    def observe(self, timings_ms: dict[str, float]) -> None:
        with self._lock:
            for stage, ms in timings_ms.items():
                seconds = float(ms) / 1000.0
                if not math.isfinite(seconds):
                    continue
                counts = self._counts.setdefault(stage, [0] * (len(self.buckets_s) + 1))
                counts[bisect.bisect_left(self.buckets_s, seconds)] += 1  # le: a value on a bound counts in it
                self._sums[stage] = self._sums.get(stage, 0.0) + seconds

    def to_dict(self) -> dict:
        """``{"buckets_s": [...], "stages": {stage: {"cumulative": [...], "count": n, "sum_s": s}}}``;
        ``cumulative`` has one entry per bound plus the last for +Inf (= ``count``)."""
        with self._lock:
            stages = {}
            for stage, counts in self._counts.items():
                cumulative, total = [], 0
                for c in counts:
                    total += c
                    cumulative.append(total)
                stages[stage] = {"cumulative": cumulative, "count": total, "sum_s": round(self._sums[stage], 6)}
        return {"buckets_s": list(self.buckets_s), "stages": stages}


def _number(snapshot: dict, path: tuple[str, ...]) -> float | None:
    node: Any = snapshot
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    if isinstance(node, bool) or not isinstance(node, (int, float)) or not math.isfinite(node):
        return None
    return float(node)


def camera_label(snapshot: dict) -> str:
    source = snapshot.get("source")
    label = source.get("source") if isinstance(source, dict) else None
    return str(label) if label else UNKNOWN_CAMERA


def _camera_families(family, specs, snapshot: dict, cam: str, prefix: str) -> list[Metric]:
    """One ``family`` (counter or gauge class) per (name, snapshot path, help) of ``specs``,
    labelled by camera; a value missing from the snapshot gives a family without samples."""
    out = []
    for name, path, doc in specs:
        fam = family(f"{prefix}_{name}", doc, labels=["camera"])
        value = _number(snapshot, path)
        if value is not None:
            fam.add_metric([cam], value)
        out.append(fam)
    return out


def metric_families(snapshot: dict, prefix: str = PREFIX) -> list[Metric]:
    """The metric families of one health snapshot. Every family is returned, with HELP and TYPE,
    even before the first frame (without samples then); values missing from the snapshot are
    left out, never invented."""
    cam = camera_label(snapshot)
    out: list[Metric] = []

    out += _camera_families(CounterMetricFamily, COUNTERS, snapshot, cam, prefix)

    events = CounterMetricFamily(f"{prefix}_events", "Events emitted, per event type.", labels=["camera", "type"])
    by_type = snapshot.get("events") if isinstance(snapshot.get("events"), dict) else {}
    for kind in sorted(by_type):
        value = _number(by_type, (kind,))
        if value is not None:
            events.add_metric([cam, str(kind)], value)
    out.append(events)

    sinks = snapshot.get("sinks") if isinstance(snapshot.get("sinks"), dict) else {}
    for name, key, doc in SINK_COUNTERS:
        fam = CounterMetricFamily(f"{prefix}_{name}", doc, labels=["camera", "sink"])
        for sink in sorted(sinks):
            value = _number(sinks, (sink, key))
            if value is not None:
                fam.add_metric([cam, str(sink)], value)
        out.append(fam)
    depth = GaugeMetricFamily(
        f"{prefix}_event_queue_depth", "Events waiting in a sink's queue (or being sent).", labels=["camera", "sink"]
    )
    for sink in sorted(sinks):
        value = _number(sinks, (sink, "queued"))
        if value is not None:
            depth.add_metric([cam, str(sink)], value)
    out.append(depth)

    gauges = (
        ("fps", ("fps",), "Frames per second since start."),
        ("uptime_seconds", ("uptime_s",), "Seconds since the runtime started."),
        ("gallery_identities", ("gallery", "identities"), "Identities in the gallery."),
    )
    out += _camera_families(GaugeMetricFamily, gauges, snapshot, cam, prefix)

    source = snapshot.get("source")
    state = source.get("state") if isinstance(source, dict) else None
    outage = GaugeMetricFamily(
        f"{prefix}_source_outage", "1 while the source is lost and being reopened, else 0.", labels=["camera"]
    )
    if state is not None:
        outage.add_metric([cam], 1.0 if state == "reconnecting" else 0.0)
    out.append(outage)
    healthy = GaugeMetricFamily(f"{prefix}_healthy", "1 when health status is ok, 0 when degraded.", labels=["camera"])
    if "status" in snapshot:
        healthy.add_metric([cam], 1.0 if snapshot["status"] == "ok" else 0.0)
    out.append(healthy)

    hist = HistogramMetricFamily(
        f"{prefix}_stage_latency_seconds", "Latency of each pipeline stage per frame.", labels=["camera", "stage"]
    )
    data = snapshot.get("latency_histogram")
    if isinstance(data, dict):
        bounds = data.get("buckets_s") or []
        for stage, h in sorted((data.get("stages") or {}).items()):
            cumulative = h.get("cumulative") or []
            if len(cumulative) != len(bounds) + 1:  # not what StageLatency writes: leave it out
                continue
            les = [floatToGoString(b) for b in bounds] + ["+Inf"]
            hist.add_metric([cam, str(stage)], list(zip(les, cumulative)), sum_value=float(h.get("sum_s", 0.0)))
    out.append(hist)
    return out


class SnapshotCollector:
    """A ``prometheus_client`` collector reading ``snapshot()`` at each scrape."""

    def __init__(self, snapshot: Callable[[], dict], prefix: str = PREFIX):
        self._snapshot, self._prefix = snapshot, prefix

    def collect(self) -> Iterator[Metric]:
        yield from metric_families(self._snapshot() or {}, self._prefix)


def snapshot_registry(snapshot: Callable[[], dict], prefix: str = PREFIX) -> CollectorRegistry:
    """A private registry (not prometheus_client's global one) holding one snapshot collector."""
    registry = CollectorRegistry(auto_describe=False)  # no collect() at registration
    registry.register(SnapshotCollector(snapshot, prefix))
    return registry


def exposition(registry: CollectorRegistry, accept: str | None = None) -> tuple[bytes, str]:
    """The registry in the format the client's ``Accept`` header asks for (Prometheus text by
    default, OpenMetrics when asked): ``(body, content type)``."""
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type
