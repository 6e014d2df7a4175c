"""The fault campaign: inject what real devices do to the service, count what survives.

    python -m edge.faults [--short] [--json OUT] [--work DIR]

Everything runs on real parts: the shipped int8 models, real CFP photos (fold 9: four faces per
frame) served as an MJPEG-over-HTTP camera by a local server, an encrypted gallery, a real
``NOTIFY_SOCKET`` datagram socket, real ``kill -9`` of real processes, a webhook receiver that
goes away. Faults:

- camera loss: the stream is cut and restored several times under the running service;
- hung stage: a pipeline stage stalls; the sd_notify watchdog pings must stop (systemd restarts);
- SIGTERM: ``python -m edge.run`` stopped mid-stream must flush every event and exit 0;
- crashes: ``kill -9`` at random moments during enrolment, gallery import and event writing;
- sink down: the webhook receiver is gone for a while; the frame loop must not block, events are
  queued (bounded, oldest dropped and counted) and delivered when it returns;
- bad input: corrupt frames in the stream, and the property-based fuzzer (``edge.tools.fuzz``) on
  every parser;
- soak: many frames with several faces each; memory and open files must stay flat.

Prints one table (fault, injected, survived, events lost, gallery records lost, detail) and the
totals; exit 1 if anything did not survive, a gallery record was lost or the fuzzer crashed.
``--short`` is the CI form (same faults, fewer repetitions).
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import random
import signal
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[2]
FOLD9 = range(401, 451)
IMPORT_SIZE = 20000


@dataclass
class Outcome:
    fault: str
    injected: int = 0
    survived: int = 0
    events_lost: int = 0
    gallery_records_lost: int = 0
    detail: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.survived == self.injected and self.gallery_records_lost == 0


# ----------------------------------------------------------------------------- real frames, a real camera


def real_frames(count: int, hold: int = 12, gap: int = 20, seed: int = 0) -> tuple[list[bytes], list[int]]:
    """A looping camera schedule of JPEG frames: ``count`` scenes of four CFP fold-9 photos (a 2x2
    grid), each held for ``hold`` frames, then ``gap`` empty frames (people leave, tracks end, the
    next people arrive); and the people shown."""
    from edge.datasets.cfp import cfp_photos, cfp_root

    photos = cfp_photos(cfp_root(), identities=FOLD9, views=("frontal",))
    rng = random.Random(seed)
    empty = cv2.imencode(".jpg", np.full((640, 640, 3), 90, np.uint8))[1].tobytes()
    schedule, people = [], set()
    for _ in range(count):
        tiles = []
        for photo in rng.sample(photos, 4):
            tiles.append(cv2.resize(cv2.imread(str(photo.image_path)), (320, 320)))
            people.add(photo.identity)
        scene = np.vstack([np.hstack(tiles[:2]), np.hstack(tiles[2:])])
        data = cv2.imencode(".jpg", scene, [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes()
        schedule += [data] * hold + [empty] * gap
    return schedule, sorted(people)


def serve_on_loopback(handler, port: int = 0) -> socketserver.ThreadingTCPServer:
    """A threading TCP server for ``handler`` on 127.0.0.1:``port`` (0: any free port), serving
    in a daemon thread; the same port can be bound again after :func:`cut_server`."""
    server = socketserver.ThreadingTCPServer(("127.0.0.1", port), handler, bind_and_activate=False)
    server.daemon_threads = True
    server.allow_reuse_address = True
    server.server_bind()
    server.server_activate()
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server


def cut_server(server, connections=()) -> None:
    """Stop listening and tear down every open connection (a camera or receiver that dies)."""
    server.shutdown()
    server.server_close()
    for connection in list(connections):
        try:
            connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class Camera:
    """An MJPEG-over-HTTP camera on 127.0.0.1 serving ``frames`` in a loop; ``cut()`` kills it
    (listening socket and every open stream), ``restore()`` brings it back on the same port.
    ``corrupt_every`` > 0 sends every n-th frame truncated (a bad frame, not a lost stream)."""

    def __init__(self, frames: list[bytes], fps: float = 30.0, corrupt_every: int = 0):
        self.frames, self.fps, self.corrupt_every = frames, fps, corrupt_every
        self.port = 0
        self.sent = 0
        self._lock = threading.Lock()
        self._connections: set = set()
        self._server = None

    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/stream.mjpg"

    def _handler(self):
        camera = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                with camera._lock:
                    camera._connections.add(self.connection)
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                try:
                    while True:
                        with camera._lock:
                            k = camera.sent
                            camera.sent += 1
                        data = camera.frames[k % len(camera.frames)]
                        if camera.corrupt_every and k % camera.corrupt_every == camera.corrupt_every - 1:
                            data = data[: len(data) // 3]
                        head = b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(data)
                        self.wfile.write(head + data + b"\r\n")
                        self.wfile.flush()
                        time.sleep(1.0 / camera.fps)
                except OSError:
                    pass
                finally:
                    with camera._lock:
                        camera._connections.discard(self.connection)

            def log_message(self, *args):
                pass

        return Handler

    def start(self) -> Camera:
        self._server = serve_on_loopback(self._handler(), self.port)
        self.port = self._server.server_address[1]
        return self

    def cut(self) -> None:
        with self._lock:
            connections = list(self._connections)
        cut_server(self._server, connections)

    def restore(self) -> None:
        self.start()


class Receiver:
    """A webhook receiver on 127.0.0.1 that counts what it is sent; ``stop()``/``start()``."""

    def __init__(self, port: int = 0):
        self.port, self.received, self._server = port, 0, None
        self._lock = threading.Lock()

    def start(self) -> Receiver:
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with owner._lock:
                    owner.received += 1
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self._server = serve_on_loopback(Handler, self.port)
        self.port = self._server.server_address[1]
        return self

    def stop(self) -> None:
        cut_server(self._server)


# ----------------------------------------------------------------------------- the service under test


def enrol_gallery(work: Path, people: list[int]) -> tuple[Path, Path]:
    """An encrypted gallery of ``people`` (one frontal photo each, the device chain, int8 models)."""
    from edge.app.enroll import build_embedder
    from edge.datasets.cfp import cfp_photos, cfp_root
    from edge.imageio import read_image_bgr
    from edge.runtime.meta import variant_path
    from edge.shipped import SHIPPED_IDENTITY, SHIPPED_LANDMARKS
    from edge.storage.gallery.store import Gallery
    from edge.storage.keys import generate_key, load_key

    embedder = build_embedder(
        {
            # the default identity model, as the service under test runs it (runtime.precision int8)
            "embedder_model": str(variant_path(SHIPPED_IDENTITY, "onnx", "int8")),
            "landmark_model": str(variant_path(SHIPPED_LANDMARKS, "onnx", "int8")),
        }
    )
    key_path = work / "gallery.key"
    if not key_path.exists():
        generate_key(key_path)
    gallery_path = work / "gallery.sqlite"
    with Gallery.open(gallery_path, dim=128, key=load_key(key_path)) as gallery:
        for person in people:
            photo = cfp_photos(cfp_root(), identities=[person], views=("frontal",))[-1]
            faces = embedder.embed_photo(read_image_bgr(photo.image_path))
            if faces and f"p{person}" not in gallery:
                from edge.storage.gallery.records import Template

                gallery.add_identity(
                    f"p{person}", [Template(faces[0].embedding, faces[0].yaw_deg, photo.image_path.name)]
                )
    return gallery_path, key_path


def service_config(camera: Camera, gallery: Path, key: Path, events: Path, **extra):
    from edge.app.config.load import load_config

    overrides = {
        "source.type": "http",
        "source.uri": camera.url(),
        "source.reconnect_initial_s": 0.1,
        "source.reconnect_max_s": 0.5,
        "gallery.path": str(gallery),
        "gallery.key_file": str(key),
        "runtime.precision": "int8",
        "runtime.threads": 1,
        "events.sinks": [{"type": "jsonl", "path": str(events)}],
        "service.notify": True,
    }
    overrides.update(extra)
    return load_config(None, overrides=overrides)


def _wait(predicate, timeout: float, step: float = 0.05) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def _events(path: Path, strict: bool = False) -> list[dict]:
    """The events written so far; while polling (not ``strict``) a line still being written is
    skipped, never fatal."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            if strict:
                raise
    return out


# ----------------------------------------------------------------------------- the faults


def fault_camera_loss(work: Path, frames: list[bytes], gallery: Path, key: Path, cuts: int, outage_s: float) -> Outcome:
    """Cut the camera ``cuts`` times under the running service (every 7th frame also corrupt)."""
    from edge.app.run import Runner

    out = Outcome("camera stream cut and restored")
    camera = Camera(frames, corrupt_every=7).start()
    events = work / "camera_loss.jsonl"
    runner = Runner(service_config(camera, gallery, key, events, **{"service.notify": False}))
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    frames_seen = lambda: runner.pipeline.counters["frames"]  # noqa: E731
    corrupt_sent = lambda: camera.sent // camera.corrupt_every  # noqa: E731
    _wait(lambda: frames_seen() >= 10 and len(_events(events)) > 0, 60)
    identities = runner.gallery.identities
    outages = []
    tracks_kept = 0
    for _ in range(cuts):
        out.injected += 1
        before_events = len(_events(events))
        before_reconnects = runner.source.health().get("reconnects", 0)
        camera.cut()
        # The source notices the cut once it has read what the stream had buffered; the camera
        # sends 30 frames a second and a loaded CPU processes fewer, so that backlog can take a while.
        _wait(lambda: runner.source.health().get("state") == "reconnecting", 60)
        time.sleep(outage_s)
        reconnecting = runner.source.health().get("state") == "reconnecting"
        camera.restore()
        # Frames the stream had buffered before the cut are still being processed after it, so
        # "resumed" counts only from this cut's reconnect: otherwise the next cut lands while the
        # source is still reconnecting and two cuts merge into one outage.
        reconnected = _wait(lambda b=before_reconnects: runner.source.health().get("reconnects", 0) > b, 30)
        after_frames, after_events = frames_seen(), len(_events(events))
        resumed = reconnected and _wait(lambda b=after_frames: frames_seen() >= b + 10, 30)
        events_resumed = _wait(lambda b=after_events: len(_events(events)) > b + 4, 60)
        # The tracker lives on across the outage: track ids keep counting, never start again.
        seen = _events(events)
        ids_before = {e["track_id"] for e in seen[:before_events]}
        new_after = {e["track_id"] for e in seen[before_events:]} - ids_before
        kept_tracks = bool(ids_before) and bool(new_after) and min(new_after) > max(ids_before)
        tracks_kept += kept_tracks
        if reconnecting and resumed and events_resumed and kept_tracks and thread.is_alive():
            out.survived += 1
        else:  # which check failed, for the table
            out.detail.setdefault("failed_checks", []).append(
                [name for name, ok in (("reconnecting", reconnecting), ("resumed", resumed),
                                       ("events_resumed", events_resumed), ("tracks_kept", kept_tracks),
                                       ("alive", thread.is_alive())) if not ok]
            )  # fmt: skip
        outages.append(runner.source.health().get("outage_seconds"))
    runner._publish()
    snap = runner.snapshot()
    runner.stop()
    thread.join(10)
    camera.cut()
    out.gallery_records_lost = max(0, identities - runner.gallery.identities)
    out.detail = {
        **out.detail,
        "reconnects": snap["source"].get("reconnects"),
        "outage_seconds_reported": snap["source"].get("outage_seconds"),
        "tracker_kept_across_cuts": tracks_kept,
        "corrupt_frames_sent": corrupt_sent(),
        "bad_frames_counted": snap["source"].get("bad_frames", 0) + snap["counters"].get("bad_frames", 0),
        "frames": snap["counters"]["frames"],
        "events": len(_events(events)),
    }
    return out


def fault_hung_stage(work: Path, frames: list[bytes], gallery: Path, key: Path, timeout_s: float = 1.0) -> Outcome:
    """A pipeline stage stalls for 3x WatchdogSec; the pings to a real NOTIFY_SOCKET must stop."""
    from edge.app.run import Runner

    out = Outcome("hung stage vs sd_notify watchdog", injected=1)
    sock_path = str(work / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(sock_path)
    sock.settimeout(0.05)
    pings: list[float] = []
    stop = threading.Event()

    def listen():
        while not stop.is_set():
            try:
                data = sock.recv(4096)
            except socket.timeout:
                continue
            if b"WATCHDOG=1" in data:
                pings.append(time.monotonic())

    threading.Thread(target=listen, daemon=True).start()
    saved = {k: os.environ.get(k) for k in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
    os.environ.update({"NOTIFY_SOCKET": sock_path, "WATCHDOG_USEC": str(int(timeout_s * 1e6))})
    os.environ.pop("WATCHDOG_PID", None)
    camera = Camera(frames).start()
    try:
        runner = Runner(service_config(camera, gallery, key, work / "hung.jsonl"))
        process = runner.pipeline.process
        hang = {"at": None}

        def stalling(*args, **kwargs):
            if runner.pipeline.counters["frames"] == 30 and hang["at"] is None:
                hang["at"] = time.monotonic()
                time.sleep(3 * timeout_s)
            return process(*args, **kwargs)

        runner.pipeline.process = stalling
        thread = threading.Thread(target=runner.run, daemon=True)
        thread.start()
        _wait(lambda: hang["at"] is not None and time.monotonic() > hang["at"] + 3 * timeout_s + 1.5, 90)
        runner.stop()
        thread.join(10)
    finally:
        stop.set()
        camera.cut()
        sock.close()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    start = hang["at"]
    during = [t for t in pings if start is not None and start < t < start + 3 * timeout_s]
    before = [t for t in pings if start is not None and t <= start]
    after = [t for t in pings if start is not None and t >= start + 3 * timeout_s]
    gap = max(np.diff([start, *during, start + 3 * timeout_s])) if start is not None else 0.0
    # systemd restarts after WatchdogSec without a ping: the stall must leave such a gap, and the
    # pings must have been flowing before it and again after it.
    if start is not None and before and after and gap > timeout_s:
        out.survived = 1
    out.detail = {
        "watchdog_s": timeout_s,
        "pings_before": len(before),
        "pings_during_stall": len(during),
        "longest_gap_s": round(float(gap), 2),
        "pings_after": len(after),
    }
    return out


def fault_sigterm(work: Path, frames: list[bytes], gallery: Path, key: Path, times: int) -> Outcome:
    """``python -m edge.run`` stopped by SIGTERM mid-stream: exit 0, every track ended, no torn line."""
    out = Outcome("SIGTERM mid-stream (clean stop)")
    camera = Camera(frames).start()
    try:
        for k in range(times):
            out.injected += 1
            events = work / f"sigterm_{k}.jsonl"
            cmd = [
                sys.executable, "-m", "edge.run", "--source", camera.url(), "--gallery", str(gallery),
                "--set", f"gallery.key_file={key}", "--set", "runtime.precision=int8", "--set", "runtime.threads=1",
                "--set", f'events.sinks=[{{type="jsonl", path="{events}"}}]', "--log-level", "ERROR",
            ]  # fmt: skip
            proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            _wait(lambda e=events, p=proc: len(_events(e)) >= 8 or p.poll() is not None, 90)
            time.sleep(random.uniform(0.0, 0.5))
            proc.send_signal(signal.SIGTERM)
            try:
                rc = proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                rc = None
            try:
                seen = _events(events, strict=True)
                torn = 0
            except json.JSONDecodeError:
                seen, torn = [], 1
            started = {e["track_id"] for e in seen if e["type"] in ("recognised", "unknown_face")}
            ended = {e["track_id"] for e in seen if e["type"] == "track_ended"}
            lost = len(started - ended)
            out.events_lost += lost
            if rc == 0 and not torn and lost == 0:
                out.survived += 1
            out.detail[f"run_{k}"] = {"exit": rc, "events": len(seen), "tracks_without_end": lost}
    finally:
        camera.cut()
    return out


_ENROL_CHILD = """
import sys, numpy as np
from edge.storage.gallery.records import Template
from edge.storage.gallery.store import Gallery
from edge.storage.keys import load_key
g = Gallery.open(sys.argv[1], dim=128, key=load_key(sys.argv[2]))
start = int(sys.argv[3])
for k in range(start, start + 10000):
    rng = np.random.default_rng(k)
    g.add_identity(f"person{k}", [Template(rng.normal(size=128), float(rng.uniform(-80, 80)), "cam")
                                 for _ in range(3)])
    print(f"person{k}", flush=True)
"""

_IMPORT_CHILD = """
import sys
from edge.storage.gallery.store import Gallery
from edge.storage.keys import load_key
with Gallery.open(sys.argv[1], key=load_key(sys.argv[2])) as g:
    print("start", flush=True)
    g.import_(sys.argv[3], on_conflict="replace")
print("done", flush=True)
"""


def _kill_at_random(cmd: list[str], wait_line: str | None, lo: float, hi: float) -> list[str]:
    """Run ``cmd``, wait for ``wait_line`` on stdout (if given), kill -9 after a random delay;
    returns the stdout lines printed before the kill."""
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    if wait_line:
        _wait(lambda: any(line.strip() == wait_line for line in lines) or proc.poll() is not None, 60, 0.005)
    time.sleep(random.uniform(lo, hi))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    reader.join(5)
    return [line.strip() for line in lines]


def fault_kill_enrolment(work: Path, key: Path, times: int) -> Outcome:
    from edge.storage.gallery.store import Gallery
    from edge.storage.keys import load_key

    out = Outcome("kill -9 during enrolment")
    path = work / "crash_enrol.sqlite"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    committed: set[str] = set()
    for k in range(times):
        out.injected += 1
        printed = _kill_at_random([sys.executable, "-c", _ENROL_CHILD, str(path), str(key), str(k * 10000)],
                                  None, 0.3, 1.5)  # fmt: skip
        committed.update(n for n in printed if n.startswith("person"))
        try:
            with Gallery.open(path, key=load_key(key)) as g:
                report = g.integrity_check()
                names = {i.name for i in g.list()}
                complete = all(len(g.identity_templates(n)) == 3 for n in names)
        except Exception as err:  # the campaign counts, it does not stop
            out.detail.setdefault("errors", []).append(f"{type(err).__name__}: {err}")
            continue
        lost = len(committed - names)
        out.gallery_records_lost += lost
        if report.ok and complete and lost == 0:
            out.survived += 1
    out.detail["identities_committed"] = len(committed)
    return out


def write_export(path: Path, count: int, dim: int = 128) -> Path:
    """A ``poseface.gallery`` export of ``count`` random identities, written directly (fast)."""
    import base64

    from edge.storage.gallery.exchange import EXPORT_FORMAT, EXPORT_VERSION
    from edge.storage.gallery.records import utc_now

    now = utc_now()
    header = {"format": EXPORT_FORMAT, "version": EXPORT_VERSION, "dim": dim, "exported": now, "identities": count}
    lines = [json.dumps(header)]
    rng = np.random.default_rng(10**6)
    for k in range(count):
        vec = rng.normal(size=dim)
        blob = (vec / np.linalg.norm(vec)).astype("<f4").tobytes()
        template = {"embedding": base64.b64encode(blob).decode(), "yaw_deg": 0.0, "created": now, "source": "file"}
        lines.append(json.dumps({"name": f"imported{k}", "created": now, "metadata": {}, "templates": [template]}))
    path.write_text("\n".join(lines) + "\n")
    return path


def fault_kill_import(work: Path, key: Path, times: int) -> Outcome:
    """kill -9 while a 20,000-identity import runs: the gallery holds all of it or none of it."""
    from edge.storage.gallery.records import Template
    from edge.storage.gallery.store import Gallery
    from edge.storage.keys import load_key

    out = Outcome("kill -9 during gallery import")
    export = work / "import.jsonl"
    path = work / "crash_import.sqlite"
    for stale in (export, path):
        for suffix in ("", "-wal", "-shm"):
            Path(f"{stale}{suffix}").unlink(missing_ok=True)
    write_export(export, IMPORT_SIZE)
    for _ in range(times):
        out.injected += 1
        for suffix in ("", "-wal", "-shm"):  # a fresh gallery each time: a torn import cannot hide
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        with Gallery.open(path, dim=128, key=load_key(key)) as g:
            g.add_identity("resident", [Template(np.ones(128), 0.0, "cam")])
        _kill_at_random([sys.executable, "-c", _IMPORT_CHILD, str(path), str(key), str(export)], "start", 0.0, 1.5)
        with Gallery.open(path, key=load_key(key)) as g:
            report = g.integrity_check()
            names = {i.name for i in g.list()}
        imported = len([n for n in names if n.startswith("imported")])
        lost = 0 if "resident" in names else 1
        out.gallery_records_lost += lost
        if report.ok and imported in (0, IMPORT_SIZE) and lost == 0:
            out.survived += 1
        out.detail.setdefault("imported_after_kill", []).append(imported)
    found = out.detail.get("imported_after_kill", [])
    out.detail["killed_inside_import"] = sum(n == 0 for n in found)
    out.detail["killed_after_commit"] = sum(n == IMPORT_SIZE for n in found)
    return out


_JSONL_CHILD = """
import sys
from edge.app.sinks import JsonLinesFileSink
from edge.tools.faults import sample_event
sink = JsonLinesFileSink(sys.argv[1])
sink.emit(sample_event(0))
print("writing", flush=True)
k = 1
while True:
    sink.emit(sample_event(k))
    k += 1
"""


def sample_event(k: int):
    """A realistic event (the schema's own constructor) for the event-writing crash test."""
    from edge.core import events as ev

    return ev.track_ended(
        source="fault campaign", track_id=k, identity=f"person {k}", score=0.5, yaw=float(k % 90),
        box=[0.0, 0.0, 10.0, 10.0], frame=k,
    )  # fmt: skip


def fault_kill_event_writing(work: Path, times: int) -> Outcome:
    out = Outcome("kill -9 during event writing")
    path = work / "crash_events.jsonl"
    path.unlink(missing_ok=True)
    total = 0
    for _ in range(times):
        out.injected += 1
        # killed while it writes: timed from its first line, not from start-up (a loaded machine
        # can take longer than the kill delay just to import the child's modules)
        _kill_at_random([sys.executable, "-c", _JSONL_CHILD, str(path)], "writing", 0.0, 0.5)
        # the service starting again opens the file: a line the kill cut short is dropped there
        from edge.app.sinks import JsonLinesFileSink

        reopened = JsonLinesFileSink(path)
        reopened.close()
        out.detail["torn_lines_dropped"] = out.detail.get("torn_lines_dropped", 0) + bool(reopened.torn_bytes_dropped)
        text = path.read_text()
        lines = text.splitlines()
        try:
            for line in lines:
                json.loads(line)
            whole = text.endswith("\n") or not text
        except json.JSONDecodeError:
            whole = False
        total = len(lines)
        if whole:
            out.survived += 1
    out.detail["lines_written"] = total
    return out


def fault_sink_down(work: Path, down_s: float, events_per_s: float = 100.0, queue: int = 100) -> Outcome:
    """The webhook receiver is gone for ``down_s``: emit never blocks; queue bounded; delivered after."""
    from edge.app.sinks import Backoff, WebhookSink

    out = Outcome("webhook receiver down", injected=1)
    receiver = Receiver().start()
    port = receiver.port
    receiver.stop()
    sink = WebhookSink(
        f"http://127.0.0.1:{port}/events", timeout_s=1.0, retries=1000, queue_size=queue,
        backoff=Backoff(initial_s=0.05, factor=2.0, max_s=0.5, jitter=0.1), proxies={},
    )  # fmt: skip
    emitted, slowest = 0, 0.0
    end = time.monotonic() + down_s
    while time.monotonic() < end:
        t0 = time.perf_counter()
        sink.emit(sample_event(emitted))
        slowest = max(slowest, time.perf_counter() - t0)
        emitted += 1
        time.sleep(1.0 / events_per_s)
    receiver = Receiver(port).start()
    sink.flush(30)
    sink.close(10)
    counters = sink.counters()
    receiver.stop()
    accounted = counters.sent + counters.dropped + counters.failed == emitted
    # Lost = neither delivered nor counted: the oldest dropped from the full queue are counted.
    out.events_lost = max(0, emitted - counters.sent - counters.dropped - counters.failed)
    delivered_all_queued = counters.sent >= min(queue, emitted) and counters.failed == 0
    # 50 ms: one frame at 20 fps; a blocking send would take the 1 s timeout, or the whole outage.
    if slowest < 0.05 and accounted and receiver.received == counters.sent and delivered_all_queued:
        out.survived = 1
    out.detail = {"emitted": emitted, "delivered": counters.sent, "dropped_oldest_counted": counters.dropped,
                  "failed": counters.failed, "received": receiver.received, "slowest_emit_ms": round(slowest * 1e3, 2),
                  "queue_size": queue, "down_s": down_s}  # fmt: skip
    return out


def write_video(frames: list[bytes], path: Path, fps: float = 25.0) -> Path:
    """The camera schedule as a real video file (Motion-JPEG AVI) for the soak."""
    first = cv2.imdecode(np.frombuffer(frames[0], np.uint8), cv2.IMREAD_COLOR)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (first.shape[1], first.shape[0]))
    for data in frames:
        writer.write(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR))
    writer.release()
    return path


def fault_soak(work: Path, frames: list[bytes], gallery: Path, key: Path, count: int) -> Outcome:
    """``count`` frames of a looping real video (four faces a scene): memory and open files stay
    flat, fps steady."""
    from edge.app.run import Runner
    from edge.tools.bench import rss_mib

    out = Outcome("soak (4 faces per frame)", injected=1)
    video = write_video(frames, work / "soak.avi")
    samples: list[tuple[int, float, int, float]] = []

    def on_frame(frame, result):
        n = runner.pipeline.counters["frames"]
        if n % 50 == 0:
            samples.append((n, rss_mib(), len(os.listdir("/proc/self/fd")), time.monotonic()))

    camera = Camera(frames)  # not started: the config needs a camera; the source is the video
    cfg = service_config(
        camera, gallery, key, work / "soak.jsonl",
        **{"service.notify": False, "source.type": "video", "source.path": str(video), "source.loop": True},
    )  # fmt: skip
    runner = Runner(cfg, max_frames=count, on_frame=on_frame)
    runner.run()
    warm = samples[min(2, len(samples) - 1)] if samples else None
    last = samples[-1] if samples else None
    growth_mib = round(last[1] - warm[1], 1) if samples else None
    fd_growth = last[2] - warm[2] if samples else None
    rates = [50 / (b[3] - a[3]) for a, b in zip(samples, samples[1:]) if b[3] > a[3]]
    out.detail = {
        "frames": runner.pipeline.counters["frames"],
        "video": f"{video.name}, {len(frames)} frames, looped",
        "faces": runner.pipeline.counters["faces"],
        "rss_mib_after_warmup": round(warm[1], 1) if warm else None,
        "rss_mib_end": round(last[1], 1) if last else None,
        "rss_growth_mib": growth_mib,
        "open_files_growth": fd_growth,
        "fps_min_max": [round(min(rates), 1), round(max(rates), 1)] if rates else None,
    }
    # Flat: under 10 MiB of growth after warm-up (allocator noise), no leaked descriptors.
    if samples and growth_mib is not None and growth_mib < 10 and fd_growth <= 0:
        out.survived = 1
    return out


def fault_bad_input(examples: int) -> Outcome:
    from edge.tools.fuzz import run_fuzz

    result = run_fuzz(examples=examples)
    out = Outcome(
        "bad input (property-based fuzzer)", injected=result["tried"], survived=result["tried"] - result["crashes"]
    )
    out.detail = {
        name: {k: v for k, v in t.items() if k != "examples_of_crashes"} for name, t in result["targets"].items()
    }
    return out


# ----------------------------------------------------------------------------- the campaign


def campaign(short: bool, work: Path, seed: int = 0) -> list[Outcome]:
    random.seed(seed)
    reps = {"cuts": 3, "sigterm": 2, "kills": 8, "imports": 5, "writes": 5, "down_s": 5.0, "soak": 300, "fuzz": 60}
    if not short:
        reps = {"cuts": 10, "sigterm": 5, "kills": 50, "imports": 20, "writes": 20, "down_s": 120.0, "soak": 3000,
                "fuzz": 300}  # fmt: skip
    frames, people = real_frames(12)
    gallery, key = enrol_gallery(work, people[:12])
    steps = [
        lambda: fault_camera_loss(work, frames, gallery, key, reps["cuts"], outage_s=1.0),
        lambda: fault_hung_stage(work, frames, gallery, key),
        lambda: fault_sigterm(work, frames, gallery, key, reps["sigterm"]),
        lambda: fault_kill_enrolment(work, key, reps["kills"]),
        lambda: fault_kill_import(work, key, reps["imports"]),
        lambda: fault_kill_event_writing(work, reps["writes"]),
        lambda: fault_sink_down(work, reps["down_s"]),
        lambda: fault_bad_input(reps["fuzz"]),
        lambda: fault_soak(work, frames, gallery, key, reps["soak"]),
    ]
    outcomes = []
    for step in steps:
        outcome = step()
        print(f"  {outcome.fault}: {outcome.survived}/{outcome.injected} survived", file=sys.stderr, flush=True)
        outcomes.append(outcome)
    return outcomes


def table(outcomes: list[Outcome]) -> str:
    rows = [("fault", "injected", "survived", "events lost", "gallery records lost", "detail")]
    for o in outcomes:
        rows.append((o.fault, str(o.injected), str(o.survived), str(o.events_lost), str(o.gallery_records_lost),
                     json.dumps(o.detail, separators=(",", ":"))[:160]))  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:5], widths)) + "  " + r[5] for r in rows]
    soak = next((o for o in outcomes if o.fault.startswith("soak")), None)
    fuzz = next((o for o in outcomes if o.fault.startswith("bad input")), None)
    faults = [o for o in outcomes if o is not fuzz]
    lines += [
        "",
        f"faults injected {sum(o.injected for o in faults)}, survived {sum(o.survived for o in faults)}; "
        f"events lost {sum(o.events_lost for o in outcomes)}; "
        f"gallery records lost {sum(o.gallery_records_lost for o in outcomes)} (must be 0); "
        f"bad inputs tried {fuzz.injected if fuzz else 0}, crashes {fuzz.injected - fuzz.survived if fuzz else 0} "
        f"(must be 0); memory growth over the soak {soak.detail.get('rss_growth_mib') if soak else '-'} MiB "
        f"over {soak.detail.get('frames') if soak else 0} frames",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m edge.faults", description=__doc__.split("\n\n")[0])
    p.add_argument("--short", action="store_true", help="the CI form: every fault, fewer repetitions")
    p.add_argument("--json", type=Path, help="write the outcomes here")
    p.add_argument("--work", type=Path, help="scratch folder (default: a temporary one)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    from edge.datasets.root import DataNotFoundError, require_data_root

    try:
        require_data_root("cfp")
    except DataNotFoundError as err:
        print(f"edge.faults: {err} (the campaign runs on real CFP photos)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="poseface-faults-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        outcomes = campaign(args.short, work, args.seed)
    print(table(outcomes))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps([{**o.__dict__, "ok": o.ok} for o in outcomes], indent=1) + "\n")
    return 0 if all(o.ok for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
