"""The health endpoint: /health (JSON), /metrics (prometheus_client, parsed back with its own
parser), the bearer token, and the metrics of a short real run of the runtime."""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from edge.app.health import HealthServer
from edge.app.metrics_prom import LATENCY_BUCKETS_S, StageLatency, metric_families

CAM = "rtsp://cam.local/stream"
TOKEN = "s3cret"

# Every family /metrics serves, with its type (the parser's names: counters without _total).
FAMILIES = {
    "poseface_frames": "counter",
    "poseface_faces": "counter",
    "poseface_recognised": "counter",
    "poseface_unknown": "counter",
    "poseface_tracks_ended": "counter",
    "poseface_bad_frames": "counter",
    "poseface_source_reconnects": "counter",
    "poseface_source_outages": "counter",
    "poseface_source_outage_seconds": "counter",
    "poseface_source_dropped_frames": "counter",
    "poseface_events": "counter",
    "poseface_events_sent": "counter",
    "poseface_events_dropped": "counter",
    "poseface_events_failed": "counter",
    "poseface_event_queue_depth": "gauge",
    "poseface_fps": "gauge",
    "poseface_uptime_seconds": "gauge",
    "poseface_gallery_identities": "gauge",
    "poseface_source_outage": "gauge",
    "poseface_healthy": "gauge",
    "poseface_stage_latency_seconds": "histogram",
}


def known_snapshot() -> dict:
    """A snapshot shaped as edge.app.run.Runner publishes it, with values chosen by hand."""
    latency = StageLatency()
    latency.observe({"detect": 0.3, "match": 0.01, "frame": 40.0})  # ms
    latency.observe({"detect": 3.0, "match": 0.02, "frame": 60.0})
    latency.observe({"detect": 7.0, "match": 0.03, "frame": 3000.0})
    return {
        "status": "degraded",
        "uptime_s": 12.5,
        "fps": 2.5,
        "counters": {"frames": 30, "faces": 12, "recognised": 3, "unknown": 2, "tracks_ended": 4, "bad_frames": 1},
        "events": {"recognised": 3, "unknown_face": 2, "track_ended": 4},
        "source": {
            "type": "rtsp",
            "source": CAM,
            "state": "reconnecting",
            "frames": 31,
            "dropped_frames": 5,
            "reconnects": 2,
            "outages": 3,
            "outage_seconds": 4.25,
            "last_error": "timeout",
        },
        "stages": {"detect": {"count": 3, "p50_ms": 3.0, "p90_ms": 6.2}},
        "latency_histogram": latency.to_dict(),
        "gallery": {"identities": 7},
        "sinks": {
            "stdout": {"sent": 9, "dropped": 0, "failed": 0, "queued": 0},
            "mqtt": {"sent": 5, "dropped": 3, "failed": 1, "queued": 6},
        },
    }


def scrape(server: HealthServer, path: str = "/metrics", token: str | None = TOKEN, accept: str | None = None):
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    if accept:
        headers["Accept"] = accept
    req = urllib.request.Request(f"http://127.0.0.1:{server.port}{path}", headers=headers)
    with urllib.request.urlopen(req, timeout=10) as response:
        return response.headers["Content-Type"], response.read().decode()


def families(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


def samples(fam, suffix: str = "") -> dict:
    """{frozenset(labels): value} of one family's samples named family.name + suffix."""
    return {frozenset(s.labels.items()): s.value for s in fam.samples if s.name == fam.name + suffix}


def test_metrics_follow_a_known_snapshot():
    snap = known_snapshot()
    server = HealthServer("127.0.0.1", 0, lambda: snap, token=TOKEN).start()
    try:
        kind, text = scrape(server)
    finally:
        server.close()
    assert kind.startswith("text/plain")
    fams = families(text)
    assert {name: f.type for name, f in fams.items()} == FAMILIES
    for name, fam in fams.items():  # HELP and TYPE on every metric
        exposed = name + "_total" if fam.type == "counter" else name
        assert fam.documentation, name
        assert f"# HELP {exposed} " in text and f"# TYPE {exposed} {fam.type}\n" in text, name

    cam = frozenset({("camera", CAM)})
    expected = {
        "poseface_frames": 30,
        "poseface_faces": 12,
        "poseface_recognised": 3,
        "poseface_unknown": 2,
        "poseface_tracks_ended": 4,
        "poseface_bad_frames": 1,
        "poseface_source_reconnects": 2,
        "poseface_source_outages": 3,
        "poseface_source_outage_seconds": 4.25,
        "poseface_source_dropped_frames": 5,
    }
    for name, value in expected.items():
        assert samples(fams[name], "_total") == {cam: value}, name
    assert samples(fams["poseface_fps"]) == {cam: 2.5}
    assert samples(fams["poseface_uptime_seconds"]) == {cam: 12.5}
    assert samples(fams["poseface_gallery_identities"]) == {cam: 7}
    assert samples(fams["poseface_source_outage"]) == {cam: 1.0}  # state "reconnecting"
    assert samples(fams["poseface_healthy"]) == {cam: 0.0}  # status "degraded"

    def by(label, fam, suffix=""):
        return {dict(k)[label]: v for k, v in samples(fam, suffix).items() if dict(k)["camera"] == CAM}

    assert by("type", fams["poseface_events"], "_total") == {"recognised": 3, "unknown_face": 2, "track_ended": 4}
    assert by("sink", fams["poseface_events_dropped"], "_total") == {"stdout": 0, "mqtt": 3}
    assert by("sink", fams["poseface_events_sent"], "_total") == {"stdout": 9, "mqtt": 5}
    assert by("sink", fams["poseface_events_failed"], "_total") == {"stdout": 0, "mqtt": 1}
    assert by("sink", fams["poseface_event_queue_depth"]) == {"stdout": 0, "mqtt": 6}

    hist = fams["poseface_stage_latency_seconds"]
    assert by("stage", hist, "_count") == {"detect": 3, "match": 3, "frame": 3}
    assert by("stage", hist, "_sum") == pytest.approx({"detect": 0.0103, "match": 6e-5, "frame": 3.1})
    buckets = {(s.labels["stage"], s.labels["le"]): s.value for s in hist.samples if s.name.endswith("_bucket")}
    assert {s.labels["camera"] for s in hist.samples} == {CAM}
    # detect took 0.3, 3 and 7 ms: cumulative counts at the bounds
    assert buckets[("detect", "0.0005")] == 1
    assert buckets[("detect", "0.001")] == 1
    assert buckets[("detect", "0.005")] == 2
    assert buckets[("detect", "0.01")] == 3 and buckets[("detect", "+Inf")] == 3
    assert buckets[("frame", "0.05")] == 1 and buckets[("frame", "0.1")] == 2
    assert buckets[("frame", "2.5")] == 2 and buckets[("frame", "5.0")] == 3
    assert len([k for k in buckets if k[0] == "detect"]) == len(LATENCY_BUCKETS_S) + 1


def test_health_endpoint_json_metrics_and_token():
    """Moved from test_pipeline_run.py. Kept: 401 without the token, /health JSON, fps on
    /metrics. Adapted to the prometheus_client format: fps is a labelled sample found by the
    parser (was the line "poseface_fps 2.5"); the windowed p50 gauge
    "poseface_stages_detect_p50_ms" gave way to the stage latency histogram; "poseface_source_ok"
    (any numeric leaf was flattened) gave way to the source outage gauge."""
    snap = {"fps": 2.5, "stages": {"detect": {"p50_ms": 1.5}}, "source": {"state": "streaming", "ok": True}}
    server = HealthServer("127.0.0.1", 0, lambda: snap, token=TOKEN).start()
    try:
        assert server.httpd.server_address[0] == "127.0.0.1"
        for path in ("/health", "/metrics"):
            for token in (None, "wrong", TOKEN + "x"):
                with pytest.raises(urllib.error.HTTPError) as err:
                    scrape(server, path, token=token)
                assert err.value.code == 401, (path, token)
        assert json.loads(scrape(server, "/health")[1])["fps"] == 2.5
        fams = families(scrape(server)[1])
        assert samples(fams["poseface_fps"]) == {frozenset({("camera", "unknown")}): 2.5}
        assert samples(fams["poseface_source_outage"]) == {frozenset({("camera", "unknown")}): 0.0}
        assert fams["poseface_stage_latency_seconds"].type == "histogram"
        with pytest.raises(urllib.error.HTTPError) as err:
            scrape(server, "/other")
        assert err.value.code == 404
    finally:
        server.close()


def test_metrics_before_the_first_snapshot_and_in_openmetrics():
    """The server starts before the first publish: every family is there, without samples."""
    server = HealthServer("127.0.0.1", 0, dict, token=None).start()
    try:
        _, text = scrape(server, token=None)
        kind, om = scrape(server, token=None, accept="application/openmetrics-text; version=1.0.0")
    finally:
        server.close()
    fams = families(text)
    assert {n: f.type for n, f in fams.items()} == FAMILIES
    assert all(not f.samples for f in fams.values())
    assert kind.startswith("application/openmetrics-text") and om.endswith("# EOF\n")


def test_each_server_has_its_own_registry():
    a = HealthServer("127.0.0.1", 0, lambda: {"fps": 1.0, "source": {"source": "a"}}).start()
    b = HealthServer("127.0.0.1", 0, lambda: {"fps": 2.0, "source": {"source": "b"}}).start()
    try:
        fps_a = samples(families(scrape(a, token=None)[1])["poseface_fps"])
        fps_b = samples(families(scrape(b, token=None)[1])["poseface_fps"])
    finally:
        a.close()
        b.close()
    assert fps_a == {frozenset({("camera", "a")}): 1.0} and fps_b == {frozenset({("camera", "b")}): 2.0}
    assert a.registry is not b.registry and a.registry is not REGISTRY
    assert not [m for m in REGISTRY.collect() if m.name.startswith("poseface")]  # the global one is untouched


def test_stage_latency_buckets_and_bad_input():
    lat = StageLatency((0.001, 0.01))
    lat.observe({"detect": 1.0, "embed": float("nan")})  # exactly on a bound counts in it; NaN is no time
    lat.observe({"detect": 20.0})
    assert lat.to_dict() == {
        "buckets_s": [0.001, 0.01],
        "stages": {"detect": {"cumulative": [1, 1, 2], "count": 2, "sum_s": 0.021}},
    }
    for bad in ((), (0.01, 0.001), (0.0, 1.0), (0.1, 0.1)):
        with pytest.raises(ValueError, match="increasing positive seconds"):
            StageLatency(bad)
    # a histogram in the snapshot that is not StageLatency's shape is left out, not mis-exposed
    odd = {"latency_histogram": {"buckets_s": [0.1], "stages": {"x": {"cumulative": [1]}}}}
    (hist,) = [f for f in metric_families(odd) if f.name == "poseface_stage_latency_seconds"]
    assert not hist.samples


def test_metrics_of_a_short_real_run(real_data, tmp_path):
    """The runtime on three real CFP photos; /metrics served from its snapshot agrees with it."""
    from edge.app.config.load import load_config
    from edge.app.enroll import main as enroll
    from edge.app.run import Runner
    from edge.core.pipeline import STAGES
    from edge.shipped import SHIPPED_IDENTITY_MFN

    def cfp(person: int, view: str, n: int):
        return real_data / "cfp" / "Data" / "Images" / f"{person:03d}" / view / f"{n:02d}.jpg"

    enrol, photos = tmp_path / "enrol", tmp_path / "photos"
    enrol.mkdir()
    photos.mkdir()
    for n in (1, 2):
        shutil.copy(cfp(401, "frontal", n), enrol / f"{n}.jpg")
    shutil.copy(cfp(401, "frontal", 3), photos / "a.jpg")
    shutil.copy(cfp(401, "profile", 1), photos / "b.jpg")
    shutil.copy(cfp(402, "frontal", 1), photos / "c.jpg")
    gallery = tmp_path / "g.sqlite"
    model = str(SHIPPED_IDENTITY_MFN)
    assert enroll(["add", "p401", "--images", str(enrol), "--gallery", str(gallery), "--embedder-model", model]) == 0
    overrides = {
        "source.type": "folder",
        "source.path": str(photos),
        "embedding.model": model,
        "gallery.path": str(gallery),
        "events.sinks": [{"type": "jsonl", "path": str(tmp_path / "events.jsonl")}],
        "service.notify": False,
    }
    runner = Runner(load_config(None, overrides=overrides))
    runner.run()
    snap = runner.snapshot()
    server = HealthServer("127.0.0.1", 0, runner.snapshot, token=TOKEN).start()
    try:
        fams = families(scrape(server)[1])
    finally:
        server.close()
    cam = frozenset({("camera", str(photos))})
    assert snap["counters"]["frames"] == 3 and snap["counters"]["faces"] >= 2
    for key in ("frames", "faces", "recognised", "unknown", "tracks_ended"):
        assert samples(fams[f"poseface_{key}"], "_total") == {cam: snap["counters"][key]}, key
    assert samples(fams["poseface_fps"]) == {cam: snap["fps"]}
    events = {dict(k)["type"]: v for k, v in samples(fams["poseface_events"], "_total").items()}
    assert events == snap["events"] and sum(events.values()) > 0
    sent = {dict(k)["sink"]: v for k, v in samples(fams["poseface_events_sent"], "_total").items()}
    assert sent == {f"jsonl:{tmp_path / 'events.jsonl'}": sum(events.values())}
    hist = fams["poseface_stage_latency_seconds"]
    counts = {dict(k)["stage"]: v for k, v in samples(hist, "_count").items()}
    assert counts == {stage: 3 for stage in STAGES}  # every frame, every stage
    assert all(v > 0 for v in samples(hist, "_sum").values())
    for stage in STAGES:  # cumulative buckets never decrease and end at the count
        values = [s.value for s in hist.samples if s.name.endswith("_bucket") and s.labels["stage"] == stage]
        assert values == sorted(values) and values[-1] == 3
