"""Live sources read through ``cv2.VideoCapture``: USB/V4L2 cameras, RTSP and HTTP streams (FFMPEG).

Each is a :class:`CaptureSource` around a function that opens the capture; the registry wraps
them in :class:`edge.sources.reconnect.ReconnectingSource`. Reads are bounded by timeouts where
the backend has them (FFMPEG: open and read timeouts), so a dead network camera is noticed.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
from typing import Any, Callable, Iterator, Union

import cv2

from edge.sources.base import Frame, FrameSource, SourceError, SourceUnavailableError, as_bgr, redact_url

# A capture-like object: isOpened(), read() -> (ok, image), release(), set()/get() optional.
CaptureFactory = Callable[[], Any]


@functools.cache
def _build_information() -> str:
    return cv2.getBuildInformation()


def opencv_has(feature: str, build_information: str | None = None) -> bool:
    """Whether this OpenCV was built with a video I/O backend, e.g. ``"GStreamer"`` or ``"FFMPEG"``.

    Read from ``cv2.getBuildInformation()`` (lines like ``GStreamer:   YES (1.20.3)``), because a
    capture that lacks its backend does not say why: it just fails to open.
    """
    text = _build_information() if build_information is None else build_information
    match = re.search(rf"^\s*{re.escape(feature)}:\s*(\S+)", text, flags=re.MULTILINE | re.IGNORECASE)
    return bool(match) and match.group(1).upper() != "NO"


def require_opencv(feature: str, where: str, hint: str, build_information: str | None = None) -> None:
    """Raise :class:`SourceUnavailableError` naming ``where`` when OpenCV lacks ``feature``."""
    if not opencv_has(feature, build_information):
        raise SourceUnavailableError(
            f"{where}: this OpenCV ({cv2.__version__}) was built without {feature} "
            f"(cv2.getBuildInformation() does not say '{feature}: YES'); {hint}"
        )


class CaptureSource(FrameSource):
    """A live ``cv2.VideoCapture``: ``open_capture()`` makes it, reads go through ``capture.read()``.

    A single failed read on a live device can be a glitch, so up to ``max_failed_reads`` in a row
    are retried before the stream counts as lost (SourceError); retried reads that were followed
    by a good one are counted as ``dropped_frames``.
    """

    def __init__(
        self,
        type_name: str,
        label: str,
        open_capture: CaptureFactory,
        open_hint: str = "",
        max_failed_reads: int = 3,
    ):
        super().__init__(label=label)
        self.type_name = type_name
        self._open_capture = open_capture
        self._open_hint = open_hint
        self.max_failed_reads = max(1, int(max_failed_reads))
        self._capture: Any = None

    def open(self) -> None:
        self.close()
        capture = self._open_capture()
        if capture is None or not capture.isOpened():
            if capture is not None:
                capture.release()
            hint = f" ({self._open_hint})" if self._open_hint else ""
            raise SourceError(f"{self.type_name} source {self.label}: OpenCV could not open it{hint}")
        self._capture = capture
        self._set_state("streaming")

    def read(self) -> Frame | None:
        if self._capture is None:
            raise SourceError(f"{self.type_name} source {self.label}: read() before open()")
        failed = 0
        while not self.stopped:
            ok, image = self._capture.read()
            if ok and image is not None and getattr(image, "size", 0):
                if failed:
                    self._note_dropped(failed)
                return self._emit(as_bgr(image, f"{self.type_name} source {self.label}"))
            failed += 1
            if failed >= self.max_failed_reads:
                raise SourceError(f"{self.type_name} source {self.label}: no frame in {failed} reads in a row")
        return None

    def close(self) -> None:
        capture, self._capture = self._capture, None
        if capture is not None:
            capture.release()
        if self._state != "idle":
            self._set_state("ended")


# -- USB / V4L2 -----------------------------------------------------------------------------------


def v4l2_device_path(device: Union[int, str]) -> str:
    """``/dev/videoN`` for an index N or a path (a ``/dev/v4l/by-id/...`` link is kept as given)."""
    if isinstance(device, bool):
        raise ValueError(f"v4l2 source: 'device' must be an index or a /dev/video path, got {device!r}")
    if isinstance(device, int) or (isinstance(device, str) and device.isdigit()):
        return f"/dev/video{int(device)}"
    if isinstance(device, str) and device:
        return device
    raise ValueError(f"v4l2 source: 'device' must be an index or a /dev/video path, got {device!r}")


def check_v4l2_device(path: str) -> None:
    """A clear error for the two usual reasons a USB camera does not open: absent, or no permission."""
    if not os.path.exists(path):
        raise SourceError(f"v4l2 source {path}: no such device (is the camera plugged in? see: ls /dev/video*)")
    if not os.access(path, os.R_OK | os.W_OK):
        raise SourceError(f"v4l2 source {path}: permission denied (add the service user to the 'video' group)")


def v4l2_source(
    device: Union[int, str] = 0,
    width: int | None = None,
    height: int | None = None,
    fps: float | None = None,
    fourcc: str | None = None,
    buffer_size: int = 1,
    open_capture: CaptureFactory | None = None,
) -> CaptureSource:
    """A USB/V4L2 camera. width/height/fps/fourcc are requests: the driver may pick the nearest mode.

    ``fourcc="MJPG"`` lets most USB cameras deliver 720p/1080p at full rate over USB 2.
    ``buffer_size=1`` keeps the driver from queueing stale frames while a slow device processes one.
    """
    path = v4l2_device_path(device)
    if fourcc is not None and len(fourcc) != 4:
        raise ValueError(f"v4l2 source {path}: 'fourcc' must be 4 characters such as 'MJPG', got {fourcc!r}")

    def open_v4l2():
        check_v4l2_device(path)
        capture = cv2.VideoCapture(path, cv2.CAP_V4L2)
        if capture.isOpened():
            # FOURCC before the size: the set of sizes a camera offers depends on the pixel format.
            if fourcc:
                capture.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*fourcc))
            if width:
                capture.set(cv2.CAP_PROP_FRAME_WIDTH, int(width))
            if height:
                capture.set(cv2.CAP_PROP_FRAME_HEIGHT, int(height))
            if fps:
                capture.set(cv2.CAP_PROP_FPS, float(fps))
            capture.set(cv2.CAP_PROP_BUFFERSIZE, int(buffer_size))
        return capture

    return CaptureSource(
        "v4l2",
        path,
        open_capture or open_v4l2,
        open_hint="the device exists but is not a capture device, or another process holds it",
    )


# -- network streams through FFMPEG ------------------------------------------------------------------


@contextlib.contextmanager
def _ffmpeg_capture_options(options: str) -> Iterator[None]:
    """Set OPENCV_FFMPEG_CAPTURE_OPTIONS for one open: OpenCV reads it only while opening a capture,
    and it is the only way to pass demuxer options such as the RTSP transport."""
    name = "OPENCV_FFMPEG_CAPTURE_OPTIONS"
    previous = os.environ.get(name)
    os.environ[name] = options
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous


def open_ffmpeg_capture(url: str, open_timeout: float, read_timeout: float, options: str = "") -> Any:
    """``cv2.VideoCapture(url, CAP_FFMPEG)`` with open/read timeouts in seconds (OpenCV >= 4.5.2)."""
    params = [
        cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
        int(open_timeout * 1000),
        cv2.CAP_PROP_READ_TIMEOUT_MSEC,
        int(read_timeout * 1000),
    ]
    with _ffmpeg_capture_options(options) if options else contextlib.nullcontext():
        return cv2.VideoCapture(url, cv2.CAP_FFMPEG, params)


def _check_url(url: Any, kind: str, schemes: tuple[str, ...]) -> str:
    if not isinstance(url, str) or not url.lower().startswith(tuple(f"{s}://" for s in schemes)):
        raise ValueError(f"{kind} source: 'uri' must start with {' or '.join(s + '://' for s in schemes)}, got {url!r}")
    return url


def _check_timeouts(kind: str, **timeouts: float) -> None:
    for key, value in timeouts.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ValueError(f"{kind} source: '{key}' must be seconds > 0, got {value!r}")


def rtsp_source(
    url: str,
    transport: str = "tcp",
    open_timeout: float = 10.0,
    read_timeout: float = 5.0,
    open_capture: CaptureFactory | None = None,
) -> CaptureSource:
    """An RTSP camera through OpenCV's FFMPEG backend.

    ``transport="tcp"`` (default) avoids the torn, grey-smeared frames UDP gives on Wi-Fi when
    packets are lost; "udp" has less latency on a clean wired network.
    """
    url = _check_url(url, "rtsp", ("rtsp", "rtsps"))
    if transport not in ("tcp", "udp"):
        raise ValueError(f"rtsp source {redact_url(url)}: 'transport' must be 'tcp' or 'udp', got {transport!r}")
    _check_timeouts("rtsp", open_timeout=open_timeout, read_timeout=read_timeout)
    label = redact_url(url)

    def open_rtsp():
        require_opencv("FFMPEG", f"rtsp source {label}", "install opencv-python-headless, which has FFMPEG")
        return open_ffmpeg_capture(url, open_timeout, read_timeout, options=f"rtsp_transport;{transport}")

    return CaptureSource(
        "rtsp", label, open_capture or open_rtsp, open_hint="check the URL, the credentials and that it is reachable"
    )


def http_ffmpeg_source(
    url: str,
    open_timeout: float = 10.0,
    read_timeout: float = 5.0,
    open_capture: CaptureFactory | None = None,
) -> CaptureSource:
    """An HTTP stream (MJPEG multipart, MPEG-TS, ...) through OpenCV's FFMPEG backend."""
    label = redact_url(url)

    def open_http():
        require_opencv("FFMPEG", f"http source {label}", "use backend = 'mjpeg' for MJPEG cameras")
        return open_ffmpeg_capture(url, open_timeout, read_timeout)

    return CaptureSource(
        "http", label, open_capture or open_http, open_hint="check the URL, the credentials and that it is reachable"
    )
