"""The runtime chain: tracker, pipeline, calibration, health endpoint and `python -m edge.run`,
on real CFP photos with the shipped models."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge.core.tracker import Observation, Tracker
from edge.tools.calibrate import calibrate_scores, dense_probe_pairs

REPO = Path(__file__).resolve().parents[1]
SHIPPED_IDENTITY = REPO / "edge" / "models" / "identity" / "poseface_mfn.onnx"


def obs(box, name=None, score=None, accepted=False, yaw=0.0, det=0.9):
    return Observation(np.asarray(box, float), det, yaw, name, score, accepted)


# ------------------------------------------------------------------ tracker


def test_tracker_keeps_ids_across_motion_and_ends_after_max_age():
    tr = Tracker(iou_threshold=0.3, max_age=2, min_hits=2, evidence_frames=5)
    a = tr.update([obs([0, 0, 10, 10]), obs([50, 50, 60, 60])]).assigned
    ids = [t.id for t in a]
    assert ids == [1, 2]
    # both move a little (IoU > 0.3), and the order of detections changes
    b = tr.update([obs([52, 51, 62, 61]), obs([1, 1, 11, 11])]).assigned
    assert [t.id for t in b] == [2, 1]
    # fast motion: low IoU but centre within half a side continues the track
    c = tr.update([obs([5.4, 3, 15.4, 13])]).assigned
    assert c[0].id == 1
    ended = []
    for _ in range(3):
        ended += tr.update([obs([5, 4, 15, 14])]).ended
    assert [t.id for t in ended] == [2]
    assert tr.update([obs([200, 200, 210, 210])]).assigned[0].id == 3  # new ids never reuse old ones


def test_track_decides_from_evidence_not_one_frame():
    tr = Tracker(min_hits=2, evidence_frames=5)
    t = tr.update([obs([0, 0, 10, 10], "ann", 0.6, True)]).assigned[0]
    assert t.decide(2) == (None, None)  # one frame is not enough
    tr.update([obs([0, 0, 10, 10], "ann", 0.7, True)])
    assert t.decide(2) == ("ann", 0.7)
    # a single stray frame cannot flip a decided track
    tr.update([obs([0, 0, 10, 10], "bob", 0.9, True)])
    assert t.decide(2)[0] == "ann"
    # rejected frames dilute: a majority of the kept evidence must agree
    for _ in range(4):
        tr.update([obs([0, 0, 10, 10], "ann", 0.2, False, det=0.99)])
    assert t.decide(2) == (None, None)


def test_evidence_keeps_the_best_quality_frames():
    tr = Tracker(min_hits=1, evidence_frames=2)
    t = tr.update([obs([0, 0, 10, 10], yaw=80)]).assigned[0]
    tr.update([obs([0, 0, 10, 10], yaw=0)])
    tr.update([obs([0, 0, 10, 10], yaw=10)])
    assert sorted(o.yaw for o in t.evidence) == [0, 10]


# ------------------------------------------------------------------ calibration


def test_calibrate_scores_meets_far_per_bin():
    rng = np.random.default_rng(0)
    n = 200_000
    yaw = rng.uniform(0, 80, n)
    same = rng.random(n) < 0.05
    # profile probes score lower for everyone
    scores = np.where(same, 0.7, 0.1) - yaw / 200 + rng.normal(0, 0.1, n)
    thr, rows = calibrate_scores(scores, same, yaw, (15.0, 30.0, 45.0), 1e-3)
    assert len(thr.thresholds) == 4
    assert thr.thresholds[0] > thr.thresholds[-1]  # the profile bin is laxer
    for b, row in enumerate(rows):
        sel = (np.searchsorted([15, 30, 45], yaw, side="right") == b) & ~same
        assert (scores[sel] >= thr.thresholds[b]).mean() <= 1e-3
        assert row["far"] <= 1e-3


def test_calibrate_scores_borrows_for_sparse_bins():
    scores = np.r_[np.linspace(-0.5, 0.5, 20000), [0.9, 0.8]]
    same = np.r_[np.zeros(20000, bool), [True, True]]
    yaw = np.r_[np.zeros(20000), [70.0, 70.0]]
    thr, rows = calibrate_scores(scores, same, yaw, (15.0, 30.0, 45.0), 1e-3)
    assert thr.thresholds[3] == thr.thresholds[0] and "borrowed" in rows[3]["note"]
    with pytest.raises(ValueError, match="enough impostor pairs"):
        calibrate_scores(scores[:100], same[:100] | (np.arange(100) < 3), yaw[:100], (15.0,), 1e-3)


def test_calibrate_scores_records_a_far_grid_for_stranger_rates():
    from edge.tools.calibrate import FAR_GRID

    rng = np.random.default_rng(1)
    n = 300_000
    yaw = np.r_[rng.uniform(0, 44, n - 20_000), rng.uniform(45, 80, 20_000)]
    same = rng.random(n) < 0.05
    scores = np.where(same, 0.7, 0.1) - yaw / 200 + rng.normal(0, 0.1, n)
    thr, rows = calibrate_scores(scores, same, yaw, (15.0, 30.0, 45.0), 1e-3)
    assert thr.far_grid == FAR_GRID and len(thr.grid) == 4
    bins = np.searchsorted([15, 30, 45], yaw, side="right")
    for b, (row, report) in enumerate(zip(thr.grid, rows)):
        assert row[FAR_GRID.index(1e-3)] == thr.thresholds[b]  # the calibrated FAR is a column
        imp = scores[(bins == b) & ~same]
        for f, t in zip(FAR_GRID, row):
            if f >= report["grid_smallest_far"]:
                assert (imp >= t).mean() <= f  # each resolved rate is met
            else:  # borrowed or carried: never looser than this bin's own strictest measured threshold
                assert t >= row[FAR_GRID.index(report["grid_smallest_far"])]
    # the profile bin cannot resolve 3e-4: it borrows the 30-45 bin's threshold there, as --far does
    k = FAR_GRID.index(3e-4)
    assert rows[2]["grid_smallest_far"] <= 3e-4 < rows[3]["grid_smallest_far"]
    assert thr.grid[3][k] == max(thr.grid[2][k], thr.grid[3][k - 1])
    assert rows[3]["grid_smallest_far"] == 1e-3  # ~19,000 impostor pairs resolve 10 / 19,000 at best
    # a single template at 1 % is looser than the calibrated pairs; 40 templates are stricter
    assert (
        thr.for_stranger_rate(1, 0.01).thresholds[0] < thr.thresholds[0] < thr.for_stranger_rate(40, 0.01).thresholds[0]
    )


def test_dense_probe_pairs_excludes_self_pairs():
    ids = np.array([1, 1, 2])
    views = np.array(["frontal", "profile", "frontal"])
    emb = np.eye(3, dtype=np.float32)
    s, same, y = dense_probe_pairs(ids, views, emb, np.array([0.0, 70.0, 5.0]))
    assert len(s) == 2 * 3 - 2 and same.sum() == 1 and not (s == 1).any()


# ------------------------------------------------------------------ --source shorthand


def test_source_overrides(tmp_path):
    from edge.app.config.errors import ConfigError
    from edge.app.run import source_overrides

    assert source_overrides("/dev/video0") == {"source.type": "v4l2", "source.device": "/dev/video0"}
    assert source_overrides("0")["source.type"] == "v4l2"
    assert source_overrides("picamera") == {"source.type": "picamera2"}
    assert source_overrides("csi") == {"source.type": "jetson_csi"}
    assert source_overrides("rtsp://cam/1")["source.type"] == "rtsp"
    assert source_overrides("https://cam/mjpeg")["source.type"] == "http"
    assert source_overrides(str(tmp_path))["source.type"] == "folder"
    video = tmp_path / "a.mp4"
    video.write_bytes(b"x")
    assert source_overrides(str(video))["source.type"] == "video"
    with pytest.raises(ConfigError, match="--source"):
        source_overrides(str(tmp_path / "missing"))


# ------------------------------------------------------------------ real photos, real models


@pytest.fixture(scope="module")
def identity_model(tmp_path_factory):
    """The shipped identity model; before it lands, a small random net exported the same way."""
    if SHIPPED_IDENTITY.exists():
        return SHIPPED_IDENTITY
    pytest.importorskip("torch")
    import torch

    from training.config import to_dict
    from training.identity.config import IdentityTrainConfig
    from training.identity.data import identity_meta
    from training.identity.export import export_onnx
    from training.identity.model import IdentityNet

    out = tmp_path_factory.mktemp("idmodel")
    cfg = IdentityTrainConfig(width=0.25)
    ckpt = out / "net.pt"
    torch.save(
        {"model": IdentityNet(width=0.25).state_dict(), "config": to_dict(cfg), "meta": identity_meta(cfg).to_dict()},
        ckpt,
    )
    return export_onnx(ckpt, out / "id.onnx")


def _cfp(real_data, person: int, view: str, n: int) -> Path:
    return real_data / "cfp" / "Data" / "Images" / f"{person:03d}" / view / f"{n:02d}.jpg"


def test_pipeline_on_real_photos(real_data, identity_model):
    from edge.core.matching import YawThresholds
    from edge.core.pipeline import STAGES, FacePipeline
    from edge.detect.registry import build_detector
    from edge.imageio import read_image_bgr
    from edge.landmarks.crop import BLAZEFACE_SHORT_CROP
    from edge.landmarks.landmarker import Landmarker
    from edge.runtime.runner import load_model
    from edge.shipped import SHIPPED_LANDMARKS
    from edge.storage.gallery.records import gallery_arrays_from

    embedder = load_model(identity_model)
    landmarker = Landmarker(load_model(SHIPPED_LANDMARKS))
    enrol = FacePipeline(
        build_detector({"type": "blazeface", "range": "short"}),
        BLAZEFACE_SHORT_CROP,
        landmarker,
        embedder,
        None,
        YawThresholds.uniform(0.0),
        stills=True,
    )
    image = read_image_bgr(_cfp(real_data, 401, "frontal", 1))
    face = enrol.process(image).faces[0]
    from edge.core.faces import embed_batch

    emb = embed_batch(embedder, [face.aligned])[0]
    gallery = gallery_arrays_from([("p401", emb, face.yaw)])
    pipe = FacePipeline(
        build_detector({"type": "blazeface", "range": "short"}),
        BLAZEFACE_SHORT_CROP,
        landmarker,
        embedder,
        lambda: gallery,
        YawThresholds.uniform(0.99),
        stills=True,
    )
    same = pipe.process(image, 0, "same.jpg", "test")
    assert [e.type for e in same.events] == ["recognised", "track_ended"]
    assert same.events[0].identity == "p401" and same.events[0].frame == "same.jpg"
    assert set(STAGES) <= set(same.timings_ms)
    profile = pipe.process(read_image_bgr(_cfp(real_data, 401, "profile", 1)), 1, "profile.jpg", "test")
    assert abs(profile.faces[0].yaw) > 20  # the head pose of a profile photo
    assert set(pipe.stats.summary()) == set(STAGES)


def test_stranger_rate_tightens_the_threshold_as_the_gallery_grows(real_data, identity_model):
    from edge.core.faces import embed_batch
    from edge.core.matching import ThresholdsError, YawThresholds
    from edge.core.pipeline import FacePipeline
    from edge.detect.registry import build_detector
    from edge.imageio import read_image_bgr
    from edge.landmarks.crop import BLAZEFACE_SHORT_CROP
    from edge.landmarks.landmarker import Landmarker
    from edge.runtime.runner import load_model
    from edge.shipped import SHIPPED_LANDMARKS
    from edge.storage.gallery.records import gallery_arrays_from

    embedder = load_model(identity_model)
    landmarker = Landmarker(load_model(SHIPPED_LANDMARKS))
    grid = YawThresholds((15, 30, 45), (0.5,) * 4, (1e-1, 1e-2), ((0.0, 0.999),) * 4)

    def pipeline(gallery, thresholds=grid):
        det = build_detector({"type": "blazeface", "range": "short"})
        return FacePipeline(
            det,
            BLAZEFACE_SHORT_CROP,
            landmarker,
            embedder,
            lambda: gallery,
            thresholds,
            stills=True,
            stranger_rate=0.05,
        )

    face = pipeline(None).process(read_image_bgr(_cfp(real_data, 401, "frontal", 1))).faces[0]
    emb = embed_batch(embedder, [face.aligned])[0]
    rng = np.random.default_rng(0)
    small = [("p401", emb, face.yaw)]
    large = small + [(f"other{i}", rng.normal(size=emb.size), 0.0) for i in range(99)]
    probe = read_image_bgr(_cfp(real_data, 401, "frontal", 2))
    # one template: each pair may false-accept at 5 %, threshold ~0.3: the same person is named
    said = pipeline(gallery_arrays_from(small)).process(probe, 0, "p.jpg", "t").events[0]
    assert said.type == "recognised" and said.identity == "p401"
    # 100 templates: 5e-4 per pair, beyond the grid: its strictest threshold (0.999)
    said = pipeline(gallery_arrays_from(large)).process(probe, 0, "p.jpg", "t").events[0]
    assert said.type != "recognised" and said.identity is None
    with pytest.raises(ThresholdsError, match="FAR grid"):
        pipeline(None, YawThresholds.uniform(0.5))


def test_shipped_identity_thresholds_carry_a_far_grid():
    from edge.core.matching import YawThresholds
    from edge.shipped import SHIPPED_IDENTITY

    data = json.loads(SHIPPED_IDENTITY.with_suffix(".json").read_text())["extra"]["matching_thresholds"]
    t = YawThresholds.from_dict(data, source=str(SHIPPED_IDENTITY))
    assert 1e-3 in t.far_grid and t.far_grid[0] >= 1e-2
    assert tuple(row[t.far_grid.index(1e-3)] for row in t.grid) == t.thresholds


def test_edge_run_cli_on_a_folder_of_real_photos(real_data, identity_model, tmp_path):
    photos = tmp_path / "photos"
    enrol = tmp_path / "enrol"
    photos.mkdir()
    enrol.mkdir()
    for n in (1, 2):
        shutil.copy(_cfp(real_data, 401, "frontal", n), enrol / f"{n}.jpg")
    shutil.copy(_cfp(real_data, 401, "frontal", 3), photos / "a_401.jpg")
    shutil.copy(_cfp(real_data, 402, "frontal", 1), photos / "b_402.jpg")
    gallery = tmp_path / "g.sqlite"
    cmd = [sys.executable, "-m", "edge.enroll", "add", "p401", "--images", str(enrol), "--gallery", str(gallery)]
    if not SHIPPED_IDENTITY.exists():
        cmd += ["--embedder-model", str(identity_model)]
    subprocess.run(cmd, check=True, capture_output=True, cwd=REPO)
    summary = tmp_path / "summary.json"
    run = [
        sys.executable,
        "-m",
        "edge.run",
        "--source",
        str(photos),
        "--gallery",
        str(gallery),
        "--embedder-model",
        str(identity_model),
        "--summary-json",
        str(summary),
    ]
    if "matching_thresholds" not in json.loads(Path(identity_model).with_suffix(".json").read_text()).get("extra", {}):
        run += ["--set", "matching.thresholds=[0.9,0.9,0.9,0.9]"]
    out = subprocess.run(run, check=True, capture_output=True, text=True, cwd=REPO)
    events = [json.loads(line) for line in out.stdout.splitlines()]
    assert {e["frame"] for e in events} == {"a_401.jpg", "b_402.jpg"}
    assert all(e["schema"] == "poseface.event/1" for e in events)
    assert sum(e["type"] == "track_ended" for e in events) == 2
    report = json.loads(summary.read_text())
    assert report["counters"]["frames"] == 2 and report["counters"]["faces"] == 2
    assert report["stages"]["frame"]["count"] == 2


def test_edge_run_refuses_bad_input_with_one_line(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "edge.run", "--source", str(tmp_path / "nope")], capture_output=True, text=True, cwd=REPO
    )
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "--source" in out.stderr
    out = subprocess.run(
        [sys.executable, "-m", "edge.run", "--set", "tracker.iou=7"], capture_output=True, text=True, cwd=REPO
    )
    assert out.returncode == 2 and "tracker.iou" in out.stderr


def test_demo_people_reports_rates_and_writes_a_contact_sheet(real_data, identity_model, tmp_path):
    from edge.tools import demo_people

    model = identity_model
    meta = json.loads(Path(model).with_suffix(".json").read_text())
    if "matching_thresholds" not in meta.get("extra", {}):  # the stand-in model: give it thresholds
        copy = tmp_path / "id.onnx"
        shutil.copy(model, copy)
        meta.setdefault("extra", {})["matching_thresholds"] = {
            "version": 1,
            "edges_deg": [15.0, 30.0, 45.0],
            "thresholds": [0.9, 0.9, 0.9, 0.9],
        }
        copy.with_suffix(".json").write_text(json.dumps(meta))
        model = copy
    out = tmp_path / "demo"
    code = demo_people.main(
        [
            "--out",
            str(out),
            "--enrolled",
            "2",
            "--strangers",
            "1",
            "--per-person",
            "1",
            "--embedder-model",
            str(model),
            "--threads",
            "1",
        ]
    )
    assert code == 0
    report = json.loads((out / "people_demo.json").read_text())
    assert report["frontal_probes"] == 2 * 9 and report["profile_probes"] == 2 * 4
    assert report["frontal_stranger_probes"] == 10 and report["profile_stranger_probes"] == 4
    assert 0 <= report["frontal_identification_rate"] <= 1
    assert (out / "people_demo.png").stat().st_size > 1000
    assert not any(p.is_file() and not p.is_symlink() for p in (out / "stream").iterdir())  # links, not copies
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    assert sum(e["type"] == "track_ended" for e in events) == report["probes"] - report["no_face_found"]


def test_bench_pipeline_reports_every_stage(real_data, identity_model):
    from edge.core.pipeline import STAGES
    from edge.shipped import SHIPPED_LANDMARKS
    from edge.tools.bench import bench_pipeline, format_pipeline

    rows = bench_pipeline(4, 1, 5, [("onnx fp32", SHIPPED_LANDMARKS, Path(identity_model))])
    assert rows[0]["frames"] == 4 and rows[0]["faces"] >= 3
    assert set(rows[0]["stages"]) == set(STAGES) and rows[0]["per_face_p50_ms"] > 0
    assert "onnx fp32" in format_pipeline(rows)


def _video_of_real_faces(real_data, path: Path, frames: int = 30) -> Path:
    import cv2

    from edge.imageio import read_image_bgr

    image = cv2.resize(read_image_bgr(_cfp(real_data, 401, "frontal", 1)), (320, 320))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (320, 320))
    for i in range(frames):  # the face drifts a little, as in a real clip
        writer.write(np.roll(image, i, axis=1))
    writer.release()
    return path


def test_edge_run_speaks_sd_notify_and_stops_cleanly_on_sigterm(real_data, identity_model, tmp_path):
    import os
    import signal
    import socket
    import time

    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(60)
    video = _video_of_real_faces(real_data, tmp_path / "clip.avi")
    events = tmp_path / "events.jsonl"
    env = {**os.environ, "NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "2000000"}
    cmd = [
        sys.executable,
        "-m",
        "edge.run",
        "--source",
        str(video),
        "--set",
        "source.loop=true",
        "--embedder-model",
        str(identity_model),
        "--gallery",
        str(tmp_path / "none.sqlite"),
        "--set",
        f'events.sinks=[{{type="jsonl", path="{events}"}}]',
    ]
    if "matching_thresholds" not in json.loads(Path(identity_model).with_suffix(".json").read_text()).get("extra", {}):
        cmd += ["--set", "matching.thresholds=[0.9,0.9,0.9,0.9]"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        got = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any("WATCHDOG=1" in m for m in got):
            got.append(sock.recv(4096).decode())
        assert any("READY=1" in m for m in got), got
        assert any("WATCHDOG=1" in m for m in got), got
        # let the face be decided (min_hits frames) before stopping; the jsonl sink writes as it goes
        while time.monotonic() < deadline and not (events.exists() and "unknown_face" in events.read_text()):
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        sock.close()
    assert proc.returncode == 0, err
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    # the gallery is empty: the tracked face is unknown, and its track is ended on shutdown
    assert any(e["type"] == "unknown_face" for e in lines)
    assert lines[-1]["type"] == "track_ended"
    assert len({e["track_id"] for e in lines}) == 1  # one face, one stable track across frames


def test_runner_reports_a_camera_outage_in_health_and_resumes(identity_model, tmp_path):
    import threading
    import time

    from edge.app.config.load import load_config
    from edge.app.run import Runner
    from tests.test_sources import MjpegServer

    server = MjpegServer(fps=20).start()
    overrides = {
        "source.type": "http",
        "source.uri": server.url(),
        "source.reconnect_initial_s": 0.1,
        "source.reconnect_max_s": 0.2,
        "embedding.model": str(identity_model),
        "matching.thresholds": [0.9, 0.9, 0.9, 0.9],
        "gallery.path": str(tmp_path / "none.sqlite"),
        "events.sinks": [{"type": "jsonl", "path": str(tmp_path / "events.jsonl")}],
        "service.notify": False,
    }
    runner = Runner(load_config(None, overrides=overrides))
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()

    def wait_for(check, timeout=30.0):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            snap = runner.snapshot()
            if snap and check(snap):
                return snap
            time.sleep(0.05)
        raise AssertionError(f"timed out; last health: {runner.snapshot()}")

    try:
        wait_for(lambda s: s["counters"]["frames"] >= 3)
        server.cut()
        snap = wait_for(lambda s: s["source"]["state"] == "reconnecting")
        assert snap["status"] == "degraded" and snap["source"]["outages"] == 1
        frames_during_outage = snap["counters"]["frames"]
        server.restore()
        snap = wait_for(lambda s: s["source"]["reconnects"] >= 1 and s["counters"]["frames"] > frames_during_outage + 2)
        assert snap["status"] == "ok" and snap["source"]["outage_seconds"] > 0
    finally:
        runner.stop()
        thread.join(timeout=30)
        server.cut()
    assert not thread.is_alive()


def test_face_store_writes_only_when_asked_and_prunes_by_retention(tmp_path):
    import os
    import time

    from edge.storage.face_store import FaceStore

    now = [time.time()]
    store = FaceStore(tmp_path / "faces", retention_days=2, clock=lambda: now[0])
    path = store.save(np.zeros((112, 112, 3), np.uint8), 7, "recognised", "Ann/../x y")
    assert path.parent.parent == tmp_path / "faces" and "track7_recognised_Ann_.._x_y" in path.name
    assert oct(path.stat().st_mode & 0o777) == "0o600" and not list(path.parent.glob("*.tmp"))
    old = time.time() - 3 * 86400
    os.utime(path, (old, old))
    assert store.prune() == 1 and not any((tmp_path / "faces").iterdir())


def test_edge_run_stores_face_crops_only_when_configured(real_data, identity_model, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(_cfp(real_data, 401, "frontal", 1), photos / "a.jpg")
    base = [
        sys.executable,
        "-m",
        "edge.run",
        "--source",
        str(photos),
        "--embedder-model",
        str(identity_model),
        "--gallery",
        str(tmp_path / "none.sqlite"),
    ]
    if "matching_thresholds" not in json.loads(Path(identity_model).with_suffix(".json").read_text()).get("extra", {}):
        base += ["--set", "matching.thresholds=[0.9,0.9,0.9,0.9]"]
    subprocess.run(base, check=True, capture_output=True, cwd=REPO)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos"]  # nothing written by default
    faces = tmp_path / "faces"
    subprocess.run(
        base + ["--set", "privacy.store_face_images=true", "--set", f"privacy.face_images_dir={faces}"],
        check=True,
        capture_output=True,
        cwd=REPO,
    )
    crops = list(faces.glob("*/*.jpg"))
    assert len(crops) == 1 and "unknown_face" in crops[0].name
