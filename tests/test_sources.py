"""Frame sources: files and folders on disk, a real MJPEG-over-HTTP server on 127.0.0.1 that is cut
and restored, and the camera types (picamera2, Jetson CSI, V4L2) with fakes where no hardware is."""

from __future__ import annotations

import http.server
import os
import random
import socket
import subprocess
import sys
import threading
import time

import cv2
import numpy as np
import pytest

from edge.sources import (
    SOURCES,
    Backoff,
    Frame,
    ReconnectingSource,
    SourceError,
    SourceUnavailableError,
    build_source,
    redact_url,
)
from edge.sources.capture import CaptureSource, opencv_has
from edge.sources.files import FolderSource, VideoSource
from edge.sources.jetson import jetson_csi_pipeline, jetson_csi_source
from edge.sources.mjpeg import MjpegHttpSource, MultipartReader, multipart_boundary
from edge.sources.picamera import PICAMERA2_MISSING, Picamera2Source
from edge.sources.reconnect import backoff_from_config
from edge.tools.faults import cut_server, serve_on_loopback
from tests.conftest import real_subset

FAST = {"initial": 0.05, "factor": 2.0, "max": 0.2, "jitter": 0.1}


def wait_until(predicate, timeout=5.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Reader(threading.Thread):
    """Runs a source's frame loop in the background, as the runtime does; keeps (index, mean grey)."""

    def __init__(self, source):
        super().__init__(daemon=True)
        self.source = source
        self.frames: list[tuple[int, float]] = []
        self.ended = False

    def run(self):
        while True:
            frame = self.source.read()
            if frame is None:
                break
            self.frames.append((frame.index, float(frame.image.mean())))
        self.ended = True

    def count_near(self, grey, tolerance=6):
        return sum(1 for _, mean in self.frames if abs(mean - grey) < tolerance)


# -- folder --------------------------------------------------------------------------------------


def test_folder_reads_images_sorted_and_skips_bad_files(tmp_path):
    cv2.imwrite(str(tmp_path / "b.png"), np.full((20, 30, 3), 200, np.uint8))
    cv2.imwrite(str(tmp_path / "a.jpg"), np.full((24, 32, 3), 100, np.uint8))
    (tmp_path / "sub").mkdir()
    cv2.imwrite(str(tmp_path / "sub" / "c.png"), np.full((10, 10), 50, np.uint8))  # gray: expanded to BGR
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    (tmp_path / "notes.txt").write_text("not an image, not listed")

    source = build_source({"type": "folder", "path": str(tmp_path)})
    assert source.health()["state"] == "idle"
    with source:
        frames = list(source)
    assert [f.name for f in frames] == ["a.jpg", "b.png", "sub/c.png"]
    assert [f.index for f in frames] == [0, 1, 2]
    assert all(f.image.dtype == np.uint8 and f.image.ndim == 3 and f.image.shape[2] == 3 for f in frames)
    assert frames[2].image.shape == (10, 10, 3)
    assert all(isinstance(f, Frame) and f.source == str(tmp_path) for f in frames)
    assert frames[0].timestamp <= frames[1].timestamp <= frames[2].timestamp
    assert frames[0].wall_time.endswith("+00:00")
    health = source.health()
    assert health["state"] == "ended"
    assert health["frames"] == 3
    assert health["bad_frames"] == 2
    assert health["files"] == 5
    assert "empty.jpg" in health["last_error"] or "corrupt.png" in health["last_error"]


def test_folder_errors_name_the_folder(tmp_path):
    with pytest.raises(SourceError, match="no such folder"):
        FolderSource(tmp_path / "absent").open()
    with pytest.raises(SourceError, match=r"no images in it"):
        FolderSource(tmp_path).open()


def test_folder_over_real_orl_subject(real_data):
    folder = real_subset(real_data, "orl") / "s1"
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent")
    with build_source({"type": "folder", "path": str(folder)}) as source:
        frames = list(source)
    assert len(frames) == 10
    # Sorted by name, as strings: 1, 10, 2, ... (predictable, documented).
    assert [f.name for f in frames][:3] == ["1.pgm", "10.pgm", "2.pgm"]
    assert all(f.image.shape == (112, 92, 3) for f in frames)  # ORL: 92x112 gray, expanded to BGR
    assert source.health()["bad_frames"] == 0


# -- video ---------------------------------------------------------------------------------------


@pytest.fixture
def small_video(tmp_path):
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    assert writer.isOpened(), "OpenCV cannot write MJPG .avi here"
    for value in (20, 70, 120, 170, 220):
        writer.write(np.full((48, 64, 3), value, np.uint8))
    writer.release()
    return path


def test_video_reads_every_frame_once(small_video):
    with build_source({"type": "video", "path": str(small_video)}) as source:
        frames = list(source)
    assert len(frames) == 5
    assert [f.index for f in frames] == list(range(5))
    assert all(f.name == "clip.avi" and f.image.shape == (48, 64, 3) for f in frames)
    means = [float(f.image.mean()) for f in frames]
    assert means == sorted(means) and abs(means[0] - 20) < 5 and abs(means[-1] - 220) < 5
    assert source.health()["state"] == "ended"


def test_video_path_may_be_a_path_object(small_video):
    with build_source({"type": "video", "path": small_video}) as source:  # as the typed runtime config holds it
        assert source.read().name == "clip.avi"


def test_video_loop_starts_over_and_keeps_counting(small_video):
    source = VideoSource(small_video, loop=True)
    with source:
        frames = [source.read() for _ in range(12)]
    assert [f.index for f in frames] == list(range(12))
    means = [round(float(f.image.mean()) / 50) for f in frames]
    assert means[:5] == means[5:10] and means[10:] == means[:2]
    assert source.health()["loops"] == 2


def test_video_errors(tmp_path):
    with pytest.raises(SourceError, match="no such file"):
        build_source({"type": "video", "path": str(tmp_path / "absent.mp4")}).open()
    bogus = tmp_path / "bogus.mp4"
    bogus.write_bytes(b"not a video at all")
    with pytest.raises(SourceError, match="OpenCV cannot open it"):
        VideoSource(bogus).open()


# -- registry ------------------------------------------------------------------------------------


def test_registry_unknown_type_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown type 'webcam'") as info:
        build_source({"type": "webcam"})
    for kind in SOURCES:
        assert kind in str(info.value)
    assert set(SOURCES) == {"folder", "video", "v4l2", "rtsp", "http", "picamera2", "jetson_csi"}


def test_registry_rejects_unknown_keys_and_wrong_types():
    with pytest.raises(ValueError, match="unknown key 'colour' for type 'folder'"):
        build_source({"type": "folder", "path": "x", "colour": 1})
    with pytest.raises(ValueError, match=r"\(v4l2\): 'width' must be an integer >= 1, got '640'"):
        build_source({"type": "v4l2", "width": "640"})
    with pytest.raises(ValueError, match=r"\(video\): 'path' is required"):
        build_source({"type": "video"})
    with pytest.raises(ValueError, match=r"reconnect.max: expected >= initial"):
        build_source({"type": "rtsp", "uri": "rtsp://127.0.0.1/x", "reconnect": {"initial": 2, "max": 1}})
    with pytest.raises(ValueError, match=r"reconnect: unknown key 'tries'"):
        build_source({"type": "http", "uri": "http://127.0.0.1/x", "reconnect": {"tries": 3}})
    with pytest.raises(ValueError, match="'uri' must be an http:// or https:// URL"):
        build_source({"type": "http", "uri": "ftp://127.0.0.1/x"})


def test_live_types_are_wrapped_for_reconnection():
    for config in (
        {"type": "v4l2", "device": 0},
        {"type": "rtsp", "uri": "rtsp://127.0.0.1:1/x"},
        {"type": "http", "uri": "http://127.0.0.1:1/x"},
        {"type": "picamera2"},
        {"type": "jetson_csi"},
    ):
        source = build_source(config)
        assert isinstance(source, ReconnectingSource), config
        assert source.health()["type"] == config["type"]


def test_importing_sources_loads_no_hardware_package():
    code = "import sys, edge.sources; bad = [m for m in ('picamera2', 'libcamera') if m in sys.modules]; print(bad)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"


def test_redact_url_hides_passwords_and_tokens():
    assert redact_url("rtsp://admin:s3cret@10.0.0.5:554/live") == "rtsp://admin:***@10.0.0.5:554/live"
    assert "abc" not in redact_url("http://cam/mjpg?token=abc&res=hd")
    assert redact_url("http://cam/mjpg?res=hd") == "http://cam/mjpg?res=hd"
    source = build_source({"type": "http", "uri": "http://user:pw123@127.0.0.1:1/x", "backend": "mjpeg"})
    assert "pw123" not in source.label and "pw123" not in str(source.health())


# -- backoff -------------------------------------------------------------------------------------


def test_backoff_grows_by_factor_up_to_max_with_bounded_jitter():
    backoff = Backoff(initial=0.5, factor=2.0, max=4.0, jitter=0.0)
    assert [backoff.delay(n) for n in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    jittered = Backoff(initial=1.0, factor=2.0, max=8.0, jitter=0.25)
    rng = random.Random(0)
    delays = [jittered.delay(1, rng) for _ in range(200)]
    assert min(delays) >= 1.5 and max(delays) <= 2.5 and len(set(delays)) > 100
    assert jittered.delay(10_000, rng) <= 8.0  # no overflow far into an outage
    assert backoff_from_config({"initial": 1, "retry_first_open": True}, "source") == (Backoff(initial=1), True)


# -- a live MJPEG-over-HTTP server on 127.0.0.1 that the tests cut and restore ------------------------


class MjpegServer:
    """Streams multipart/x-mixed-replace JPEGs on 127.0.0.1; the grey level is 40 + 60 * generation,
    and ``restore()`` starts a new generation on the same port, so a test can tell old frames from new.
    ``stall`` keeps connections open but sends nothing (a hung camera)."""

    def __init__(self, fps=25, content_length=True):
        self.fps = fps
        self.content_length = content_length
        self.generation = 0
        self.port = 0
        self.stall = threading.Event()
        self._server = None
        self._thread = None
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()

    @property
    def grey(self):
        return 40 + 60 * self.generation

    def url(self, path="/stream"):
        return f"http://127.0.0.1:{self.port}{path}"

    def _handler(self):
        owner = self
        ok, jpeg = cv2.imencode(".jpg", np.full((48, 64, 3), self.grey, np.uint8))
        data = jpeg.tobytes()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path == "/private":
                    self.send_error(401, "Unauthorized")
                    return
                if self.path == "/page":
                    body = b"<html>not a stream</html>"
                    self.send_response(200)
                    self.send_header("Content-Type", "text/html")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                with owner._lock:
                    owner._connections.add(self.connection)
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                try:
                    while True:
                        if owner.stall.is_set():
                            time.sleep(0.02)
                            continue
                        length = b"Content-Length: %d\r\n" % len(data) if owner.content_length else b""
                        self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\n" + length + b"\r\n" + data + b"\r\n")
                        self.wfile.flush()
                        time.sleep(1.0 / owner.fps)
                except OSError:
                    pass  # the client went away, or the test cut the server
                finally:
                    with owner._lock:
                        owner._connections.discard(self.connection)

            def log_message(self, *args):
                pass

        return Handler

    def start(self):
        self._server = serve_on_loopback(self._handler(), self.port)
        self.port = self._server.server_address[1]
        return self

    def cut(self):
        """The camera dies: no more listening socket, every open stream torn down."""
        with self._lock:
            connections = list(self._connections)
        cut_server(self._server, connections)

    def restore(self):
        self.generation += 1
        self.start()


@pytest.fixture
def mjpeg_server():
    server = MjpegServer().start()
    yield server
    try:
        server.cut()
    except Exception:
        pass


BACKENDS = [
    pytest.param(
        "ffmpeg", marks=pytest.mark.skipif(not opencv_has("FFMPEG"), reason="this OpenCV has no FFMPEG backend")
    ),
    "mjpeg",
]


@pytest.mark.parametrize("backend", BACKENDS)
def test_http_source_reconnects_after_each_cut_and_resumes(mjpeg_server, backend):
    started = time.monotonic()
    source = build_source(
        {
            "type": "http",
            "uri": mjpeg_server.url(),
            "backend": backend,
            "open_timeout": 1.0,
            "read_timeout": 1.0,
            "reconnect": FAST,
        }
    )
    source.open()
    reader = Reader(source)
    reader.start()
    outage = 0.3
    try:
        for cycle in range(3):
            grey = mjpeg_server.grey
            wait_until(lambda g=grey: reader.count_near(g) >= 3, what=f"frames of generation {cycle}")
            assert source.health()["state"] == "streaming"
            attempts_before = source.health()["reconnect_attempts"]
            mjpeg_server.cut()
            wait_until(lambda: source.health()["state"] == "reconnecting", what="state reconnecting")
            time.sleep(outage)
            health = source.health()
            assert health["state"] == "reconnecting"
            assert health["reconnect_attempts"] > attempts_before  # it keeps knocking, with backoff
            assert health["outage_seconds"] >= outage * 0.9
            assert health["last_error"]
            mjpeg_server.restore()
            wait_until(lambda g=mjpeg_server.grey: reader.count_near(g) >= 3, what=f"frames after restore {cycle}")
            health = source.health()
            assert health["state"] == "streaming"
            assert health["reconnects"] == cycle + 1
    finally:
        source.stop()
        reader.join(timeout=3)
    assert not reader.is_alive() and reader.ended
    health = source.health()
    assert health["state"] == "ended"
    assert health["reconnects"] == 3 and health["outages"] == 3
    assert health["outage_seconds"] >= 3 * outage
    indices = [index for index, _ in reader.frames]
    assert indices == list(range(len(indices)))  # never reset by a reconnect
    assert time.monotonic() - started < 15


@pytest.mark.parametrize("backend", BACKENDS)
def test_http_source_notices_a_stalled_stream_by_its_read_timeout(mjpeg_server, backend):
    source = build_source(
        {"type": "http", "uri": mjpeg_server.url(), "backend": backend, "read_timeout": 0.5, "reconnect": FAST}
    )
    source.open()
    reader = Reader(source)
    reader.start()
    try:
        wait_until(lambda: len(reader.frames) >= 3, what="first frames")
        mjpeg_server.stall.set()
        wait_until(lambda: source.health()["state"] == "reconnecting", timeout=6, what="the stall to be noticed")
        count = len(reader.frames)
        mjpeg_server.stall.clear()
        wait_until(lambda: len(reader.frames) >= count + 3, timeout=6, what="frames after the stall")
        assert source.health()["reconnects"] >= 1
    finally:
        source.stop()
        reader.join(timeout=3)
    assert not reader.is_alive()


def test_stop_interrupts_the_backoff_sleep_at_once(mjpeg_server):
    slow = {"initial": 5.0, "max": 5.0, "jitter": 0.0}
    source = build_source({"type": "http", "uri": mjpeg_server.url(), "backend": "mjpeg", "reconnect": slow})
    source.open()
    reader = Reader(source)
    reader.start()
    wait_until(lambda: len(reader.frames) >= 2, what="first frames")
    mjpeg_server.cut()
    wait_until(lambda: source.health()["state"] == "reconnecting", what="state reconnecting")
    stopped_at = time.monotonic()
    source.stop()
    reader.join(timeout=2)
    assert not reader.is_alive() and time.monotonic() - stopped_at < 1.0
    assert source.read() is None and source.health()["state"] == "ended"


def test_stop_interrupts_a_blocked_mjpeg_read(mjpeg_server):
    source = MjpegHttpSource(mjpeg_server.url(), read_timeout=30.0)
    source.open()
    assert source.read() is not None
    mjpeg_server.stall.set()
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("frame", source.read()), daemon=True)
    thread.start()
    time.sleep(0.2)
    stopped_at = time.monotonic()
    source.stop()  # shuts the socket down: the 30 s read timeout does not matter
    thread.join(timeout=2)
    assert not thread.is_alive() and time.monotonic() - stopped_at < 1.0
    assert result["frame"] is None
    source.close()


def test_mjpeg_reader_without_content_length(mjpeg_server):
    mjpeg_server.content_length = False
    with MjpegHttpSource(mjpeg_server.url(), read_timeout=2.0) as source:
        frames = [source.read() for _ in range(3)]
    assert all(f is not None and f.image.shape == (48, 64, 3) for f in frames)
    assert abs(frames[0].image.mean() - mjpeg_server.grey) < 6


def test_mjpeg_source_reports_what_the_server_said(mjpeg_server):
    with pytest.raises(SourceError, match="server answered 401"):
        MjpegHttpSource(mjpeg_server.url("/private")).open()
    with pytest.raises(SourceError, match=r"Content-Type is 'text/html', expected multipart/x-mixed-replace"):
        MjpegHttpSource(mjpeg_server.url("/page")).open()
    mjpeg_server.cut()
    with pytest.raises(SourceError, match="cannot connect"):
        MjpegHttpSource(mjpeg_server.url(), open_timeout=1.0).open()


def test_first_open_failure_raises_unless_retry_first_open():
    port = _free_port()
    url = f"http://127.0.0.1:{port}/stream"
    with pytest.raises(SourceError, match=f"127.0.0.1:{port}"):
        build_source({"type": "http", "uri": url, "backend": "mjpeg", "reconnect": FAST}).open()
    retry = {**FAST, "retry_first_open": True}
    source = build_source({"type": "http", "uri": url, "backend": "mjpeg", "reconnect": retry})
    source.open()  # a network camera that is not up yet at boot: wait for it
    assert source.health()["state"] == "reconnecting"
    server = MjpegServer()
    server.port = port
    reader = Reader(source)
    reader.start()
    try:
        wait_until(lambda: source.health()["reconnect_attempts"] >= 2, what="reopen attempts")
        server.start()
        wait_until(lambda: len(reader.frames) >= 2, what="frames once the server is up")
        assert source.health()["state"] == "streaming"
    finally:
        source.stop()
        reader.join(timeout=3)
        server.cut()


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("chunk", [1, 7, 4096])
@pytest.mark.parametrize("with_length", [True, False])
def test_multipart_reader_splits_parts_at_any_chunking(chunk, with_length):
    bodies = [b"\xff\xd8first\r\n--not-a-boundary\xff\xd9", b"", b"\xff\xd8third\xff\xd9"]
    stream = b"preamble\r\n"
    for body in bodies:
        length = b"Content-Length: %d\r\n" % len(body) if with_length else b""
        stream += b"--myboundary\r\nContent-Type: image/jpeg\r\n" + length + b"\r\n" + body + b"\r\n"
    stream += b"--myboundary--\r\n"
    chunks = [stream[i : i + chunk] for i in range(0, len(stream), chunk)]
    reader = MultipartReader(lambda: chunks.pop(0) if chunks else b"", "myboundary")
    parts = []
    while (part := reader.next_part()) is not None:
        parts.append(part[1])
    assert parts == bodies


def test_multipart_boundary_parsing():
    assert multipart_boundary("multipart/x-mixed-replace; boundary=frame") == "frame"
    assert multipart_boundary('multipart/x-mixed-replace;boundary="--myboundary"') == "--myboundary"
    assert multipart_boundary("image/jpeg") is None
    # A server that declares the boundary with its leading dashes and writes it as is.
    data = [b"--ipcam\r\nContent-Type: image/jpeg\r\n\r\nJPEG\r\n--ipcam\r\n\r\nMORE\r\n--ipcam--\r\n"]
    reader = MultipartReader(lambda: data.pop(0) if data else b"", "--ipcam")
    assert reader.next_part()[1] == b"JPEG" and reader.next_part()[1] == b"MORE"


# -- RTSP (no server here: the unreachable path only) ------------------------------------------------


@pytest.mark.skipif(not opencv_has("FFMPEG"), reason="this OpenCV has no FFMPEG backend")
def test_rtsp_unreachable_camera_is_a_clear_error():
    url = f"rtsp://viewer:secret@127.0.0.1:{_free_port()}/live"
    source = build_source({"type": "rtsp", "uri": url, "open_timeout": 1.0, "reconnect": FAST})
    with pytest.raises(SourceError, match=r"rtsp source rtsp://viewer:\*\*\*@127.0.0.1:\d+/live: OpenCV could not"):
        source.open()
    with pytest.raises(ValueError, match="'transport' must be one of tcp, udp"):
        build_source({"type": "rtsp", "uri": url, "transport": "http"})


# -- V4L2 (no camera here) -------------------------------------------------------------------------


def test_v4l2_missing_device_is_a_clear_error_then_the_reconnect_path():
    device = "/dev/video97"
    assert not os.path.exists(device)
    with pytest.raises(SourceError, match=r"v4l2 source /dev/video97: no such device \(is the camera plugged in"):
        build_source({"type": "v4l2", "device": device, "reconnect": FAST}).open()
    source = build_source({"type": "v4l2", "device": 97, "reconnect": {**FAST, "retry_first_open": True}})
    source.open()
    reader = Reader(source)
    reader.start()
    wait_until(lambda: source.health()["reconnect_attempts"] >= 3, what="reopen attempts")
    health = source.health()
    assert health["state"] == "reconnecting" and "no such device" in health["last_error"]
    assert health["outage_seconds"] > 0
    source.stop()
    reader.join(timeout=2)
    assert not reader.is_alive() and reader.frames == []


# -- fakes for cameras that are not here -------------------------------------------------------------


class FakeCapture:
    """A cv2.VideoCapture stand-in: ``frames`` images, then reads fail (a camera that went away)."""

    def __init__(self, frames, opened=True):
        self.frames = list(frames)
        self.opened = opened
        self.released = False

    def isOpened(self):
        return self.opened

    def read(self):
        if self.frames:
            return True, self.frames.pop(0)
        return False, None

    def release(self):
        self.released = True


def test_jetson_csi_pipeline_text():
    assert jetson_csi_pipeline() == (
        "nvarguscamerasrc sensor-id=0 ! video/x-raw(memory:NVMM),width=1280,height=720,framerate=30/1 ! "
        "nvvidconv flip-method=0 ! video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! "
        "appsink drop=1 max-buffers=1"
    )
    text = jetson_csi_pipeline(1, 1920, 1080, 60, flip_method=2, output_width=640, output_height=360)
    assert text.startswith("nvarguscamerasrc sensor-id=1 ! video/x-raw(memory:NVMM),width=1920,height=1080,")
    assert "framerate=60/1 ! " in text
    assert "nvvidconv flip-method=2 ! video/x-raw,width=640,height=360,format=BGRx" in text
    assert "framerate=15/1 ! " in jetson_csi_pipeline(fps=15.0) and "framerate=15/2 ! " in jetson_csi_pipeline(fps=7.5)
    profile_pipeline = "nvarguscamerasrc sensor-id=1 ! nvvidconv ! video/x-raw,format=BGR ! appsink max-buffers=1"
    built = build_source({"type": "jetson_csi", "pipeline": profile_pipeline})
    assert built.health()["pipeline"] == profile_pipeline  # a device profile's own pipeline, used as it is
    with pytest.raises(ValueError, match="'pipeline' must end in appsink"):
        build_source({"type": "jetson_csi", "pipeline": "nvarguscamerasrc ! fakesink"})
    with pytest.raises(ValueError, match="'flip_method' must be 0..7"):
        jetson_csi_pipeline(flip_method=9)
    with pytest.raises(ValueError, match="both 'output_width' and 'output_height'"):
        jetson_csi_pipeline(output_width=640)


def test_jetson_csi_without_gstreamer_is_a_clear_error():
    source = jetson_csi_source(build_information="Video I/O:\n    GStreamer:                   NO\n")
    with pytest.raises(SourceUnavailableError, match="built without GStreamer.*JetPack OpenCV"):
        source.open()
    if opencv_has("GStreamer"):
        return  # this OpenCV has it: the real check would pass and try to open a camera
    wrapped = build_source({"type": "jetson_csi", "reconnect": {**FAST, "retry_first_open": True}})
    with pytest.raises(SourceUnavailableError, match="GStreamer"):
        wrapped.open()  # retrying cannot install GStreamer: it raises even with retry_first_open


def test_jetson_csi_with_a_fake_capture_reconnects_and_keeps_indices():
    opened = []

    def open_capture(pipeline):
        opened.append(pipeline)
        return FakeCapture([np.full((36, 64, 3), len(opened) * 50, np.uint8)] * 3)

    raw = jetson_csi_source(sensor_id=0, width=64, height=36, open_capture=open_capture)
    assert raw.health()["pipeline"] == raw.pipeline == jetson_csi_pipeline(0, 64, 36)
    source = ReconnectingSource(raw, Backoff(initial=0.01, max=0.02, jitter=0.0))
    with source:
        frames = [source.read() for _ in range(7)]
    assert [f.index for f in frames] == list(range(7))
    assert [int(f.image.mean()) for f in frames] == [50, 50, 50, 100, 100, 100, 150]
    assert all(p == raw.pipeline for p in opened)
    health = source.health()
    assert health["reconnects"] == 2 and health["type"] == "jetson_csi"
    assert "no frame in 3 reads in a row" in health["last_error"]


def test_capture_source_counts_a_glitch_as_dropped_not_lost():
    image = np.zeros((8, 8, 3), np.uint8)

    class Glitchy(FakeCapture):
        def read(self):
            item = self.frames.pop(0) if self.frames else None
            return (item is not None), item

    glitchy = Glitchy([None, image, image])  # one failed read between good ones
    source = CaptureSource("v4l2", "fake", lambda: glitchy)
    source.open()
    assert source.read() is not None and source.read() is not None
    assert source.health()["dropped_frames"] == 1
    with pytest.raises(SourceError, match="no frame in 3 reads in a row"):
        source.read()
    source.close()
    assert glitchy.released


class FakePicamera2:
    """The part of picamera2.Picamera2 the source uses; ``arrays`` then a capture timeout."""

    def __init__(self, camera_num, arrays):
        self.camera_num = camera_num
        self.arrays = list(arrays)
        self.calls = []

    def create_video_configuration(self, main, controls):
        self.calls.append(("config", main, controls))
        return {"main": main, "controls": controls}

    def configure(self, config):
        self.calls.append("configure")

    def start(self):
        self.calls.append("start")

    def capture_array(self, name="main", wait=None):
        assert wait is False  # the source captures asynchronously and waits with a timeout
        return name

    def wait(self, job, timeout=None):
        if not self.arrays:
            raise TimeoutError
        return self.arrays.pop(0)

    def stop(self):
        self.calls.append("stop")

    def close(self):
        self.calls.append("close")


def test_picamera2_missing_package_is_the_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "picamera2", None)  # makes `import picamera2` fail, installed or not
    with pytest.raises(SourceUnavailableError) as info:
        Picamera2Source().open()
    assert str(info.value) == PICAMERA2_MISSING
    assert PICAMERA2_MISSING == "picamera2 is not installed (pip install poseface-edge[pi] on Raspberry Pi OS)"
    wrapped = build_source({"type": "picamera2", "reconnect": {**FAST, "retry_first_open": True}})
    with pytest.raises(SourceUnavailableError, match="picamera2 is not installed"):
        wrapped.open()


def test_picamera2_rgb888_is_already_bgr_and_bgr888_is_swapped():
    # picamera2 "RGB888" arrays hold [B, G, R] per pixel (DRM naming): OpenCV's order as it is.
    pixel = np.array([[[10, 20, 200]]], np.uint8)
    cameras = []

    def factory(camera_num):
        cameras.append(FakePicamera2(camera_num, [pixel.copy()]))
        return cameras[-1]

    source = Picamera2Source(camera_num=1, width=64, height=48, fps=15, camera_factory=factory)
    with source:
        frame = source.read()
    assert frame.image.tolist() == [[[10, 20, 200]]]
    assert cameras[0].calls[0] == ("config", {"size": (64, 48), "format": "RGB888"}, {"FrameRate": 15.0})
    assert cameras[0].calls[-2:] == ["stop", "close"]
    swapped = Picamera2Source(pixel_format="BGR888", camera_factory=lambda n: FakePicamera2(n, [pixel.copy()]))
    with swapped:
        assert swapped.read().image.tolist() == [[[200, 20, 10]]]
    padded = np.array([[[10, 20, 200, 255]]], np.uint8)
    xrgb = Picamera2Source(pixel_format="XRGB8888", camera_factory=lambda n: FakePicamera2(n, [padded]))
    with xrgb:
        assert xrgb.read().image.tolist() == [[[10, 20, 200]]]


def test_picamera2_timeout_reconnects_through_the_wrapper():
    made = []

    def factory(camera_num):
        made.append(FakePicamera2(camera_num, [np.full((4, 4, 3), 30 * (len(made) + 1), np.uint8)] * 2))
        return made[-1]

    raw = Picamera2Source(capture_timeout=0.1, camera_factory=factory)
    source = ReconnectingSource(raw, Backoff(initial=0.01, max=0.02, jitter=0.0))
    with source:
        frames = [source.read() for _ in range(5)]
    assert [f.index for f in frames] == [0, 1, 2, 3, 4]
    assert [int(f.image[0, 0, 0]) for f in frames] == [30, 30, 60, 60, 90]
    health = source.health()
    assert health["reconnects"] == 2 and "no frame within 0.1 s" in health["last_error"]
    assert all(camera.calls[-1] == "close" for camera in made[:-1])  # each lost camera was released


def test_picamera2_open_failure_names_the_camera():
    def factory(camera_num):
        raise IndexError("list index out of range")  # what Picamera2 raises when no camera is attached

    with pytest.raises(SourceError, match=r"picamera2 source camera 0: cannot open it .*rpicam-hello --list-cameras"):
        Picamera2Source(camera_factory=factory).open()


def test_picamera2_without_a_wait_timeout_falls_back_to_a_blocking_capture():
    class OlderPicamera2(FakePicamera2):
        def wait(self, job):  # older releases: no timeout parameter
            raise AssertionError("not called")

        def capture_array(self, name="main", wait=None):
            assert wait is None
            return self.arrays.pop(0)

    source = Picamera2Source(camera_factory=lambda n: OlderPicamera2(n, [np.zeros((4, 6, 3), np.uint8)]))
    with source:
        assert source.read().image.shape == (4, 6, 3)
