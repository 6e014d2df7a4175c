"""Sources chosen by a ``type`` key: a dict of small constructor functions, no if-chains.

``build_source({"type": "folder", "path": "photos/"})``, ``build_source({"type": "v4l2",
"device": "/dev/video0", "width": 1280, "height": 720, "reconnect": {"initial": 0.5, "max": 30}})``,
``build_source({"type": "rtsp", "uri": "rtsp://cam.local/stream1"})``. Key names follow the
``[source]`` table of the runtime config (uri, device, path, camera_index, width, height, fps, loop).
Live types (picamera2, jetson_csi, v4l2, rtsp, http) come back wrapped in
:class:`~edge.sources.reconnect.ReconnectingSource`. A new type is one function and one line
in :data:`SOURCES`. Hardware packages are imported by a type's own module, when it opens.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping

from edge.registry import build_from_registry
from edge.sources.base import FrameSource
from edge.sources.capture import http_ffmpeg_source, opencv_has, rtsp_source, v4l2_source
from edge.sources.files import FolderSource, VideoSource
from edge.sources.jetson import jetson_csi_source
from edge.sources.mjpeg import MjpegHttpSource
from edge.sources.picamera import PICAMERA_FORMATS, Picamera2Source
from edge.sources.reconnect import ReconnectingSource, backoff_from_config

LIVE_KEYS = ("label", "reconnect")

_MISSING = object()


class _Options:
    """Typed reads of one source's config table; every error names the field and what was expected."""

    def __init__(self, kind: str, options: Mapping[str, Any], known: tuple[str, ...]):
        self.kind = kind
        self.options = options
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ValueError(
                f"source config: unknown key '{unknown[0]}' for type '{kind}' (known: type, {', '.join(known)})"
            )

    def _fail(self, key: str, expected: str, value: Any) -> ValueError:
        return ValueError(f"source config ({self.kind}): '{key}' must be {expected}, got {value!r}")

    def get(self, key: str, default: Any = _MISSING) -> Any:
        if key in self.options:
            return self.options[key]
        if default is _MISSING:
            raise ValueError(f"source config ({self.kind}): '{key}' is required")
        return default

    def string(self, key: str, default: Any = _MISSING) -> Any:
        value = self.get(key, default)
        if value is not None and (not isinstance(value, str) or not value):
            raise self._fail(key, "a non-empty string", value)
        return value

    def path(self, key: str) -> str:
        value = self.get(key)
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        if not isinstance(value, str) or not value:
            raise self._fail(key, "a path (string)", value)
        return value

    def integer(self, key: str, default: Any = _MISSING, minimum: int = 1) -> Any:
        value = self.get(key, default)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < minimum):
            raise self._fail(key, f"an integer >= {minimum}", value)
        return value

    def number(self, key: str, default: Any = _MISSING) -> Any:
        value = self.get(key, default)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
            raise self._fail(key, "a number > 0", value)
        return value

    def boolean(self, key: str, default: Any = _MISSING) -> Any:
        value = self.get(key, default)
        if not isinstance(value, bool):
            raise self._fail(key, "true or false", value)
        return value

    def choice(self, key: str, choices: tuple[str, ...], default: Any = _MISSING) -> Any:
        value = self.get(key, default)
        if value not in choices:
            raise self._fail(key, f"one of {', '.join(choices)}", value)
        return value


def _live(source: FrameSource, opts: _Options) -> ReconnectingSource:
    label = opts.string("label", None)
    if label is not None:
        source.label = label
    backoff, retry_first_open = backoff_from_config(opts.get("reconnect", None), f"source ({opts.kind})")
    return ReconnectingSource(source, backoff=backoff, retry_first_open=retry_first_open)


def _build_folder(options: Mapping[str, Any]) -> FrameSource:
    opts = _Options("folder", options, ("path",))
    return FolderSource(opts.path("path"))


def _build_video(options: Mapping[str, Any]) -> FrameSource:
    opts = _Options("video", options, ("path", "loop"))
    return VideoSource(opts.path("path"), loop=opts.boolean("loop", False))


def _build_v4l2(options: Mapping[str, Any]) -> FrameSource:
    opts = _Options("v4l2", options, ("device", "width", "height", "fps", "fourcc", "buffer_size", *LIVE_KEYS))
    device = opts.get("device", 0)
    if isinstance(device, bool) or not isinstance(device, (int, str)) or device == "":
        raise opts._fail("device", "an index (0) or a device path (/dev/video0)", device)
    source = v4l2_source(
        device=device,
        width=opts.integer("width", None),
        height=opts.integer("height", None),
        fps=opts.number("fps", None),
        fourcc=opts.string("fourcc", None),
        buffer_size=opts.integer("buffer_size", 1),
    )
    return _live(source, opts)


def _build_rtsp(options: Mapping[str, Any]) -> FrameSource:
    opts = _Options("rtsp", options, ("uri", "transport", "open_timeout", "read_timeout", *LIVE_KEYS))
    source = rtsp_source(
        opts.string("uri"),
        transport=opts.choice("transport", ("tcp", "udp"), "tcp"),
        open_timeout=opts.number("open_timeout", 10.0),
        read_timeout=opts.number("read_timeout", 5.0),
    )
    return _live(source, opts)


def _build_http(options: Mapping[str, Any]) -> FrameSource:
    opts = _Options("http", options, ("uri", "backend", "open_timeout", "read_timeout", *LIVE_KEYS))
    url = opts.string("uri")
    if not url.lower().startswith(("http://", "https://")):
        raise opts._fail("uri", "an http:// or https:// URL", url)
    backend = opts.choice("backend", ("auto", "ffmpeg", "mjpeg"), "auto")
    if backend == "auto":
        # FFMPEG reads MJPEG and other HTTP streams alike; our own reader covers OpenCVs without it.
        backend = "ffmpeg" if opencv_has("FFMPEG") else "mjpeg"
    timeouts = {"open_timeout": opts.number("open_timeout", 10.0), "read_timeout": opts.number("read_timeout", 5.0)}
    source = http_ffmpeg_source(url, **timeouts) if backend == "ffmpeg" else MjpegHttpSource(url, **timeouts)
    return _live(source, opts)


def _build_picamera2(options: Mapping[str, Any]) -> FrameSource:
    opts = _Options(
        "picamera2", options, ("camera_index", "width", "height", "fps", "format", "capture_timeout", *LIVE_KEYS)
    )
    source = Picamera2Source(
        camera_num=opts.integer("camera_index", 0, minimum=0),
        width=opts.integer("width", 1280),
        height=opts.integer("height", 720),
        fps=opts.number("fps", None),
        pixel_format=opts.choice("format", tuple(PICAMERA_FORMATS), "RGB888"),
        capture_timeout=opts.number("capture_timeout", 5.0),
    )
    return _live(source, opts)


def _build_jetson_csi(options: Mapping[str, Any]) -> FrameSource:
    keys = ("camera_index", "width", "height", "fps", "flip_method", "output_width", "output_height", "pipeline")
    opts = _Options("jetson_csi", options, (*keys, *LIVE_KEYS))
    source = jetson_csi_source(
        sensor_id=opts.integer("camera_index", 0, minimum=0),
        width=opts.integer("width", 1280),
        height=opts.integer("height", 720),
        fps=opts.number("fps", 30),
        flip_method=opts.integer("flip_method", 0, minimum=0),
        output_width=opts.integer("output_width", None),
        output_height=opts.integer("output_height", None),
        pipeline=opts.string("pipeline", None),
    )
    return _live(source, opts)


SOURCES: dict[str, Callable[[Mapping[str, Any]], FrameSource]] = {
    "folder": _build_folder,
    "video": _build_video,
    "v4l2": _build_v4l2,
    "rtsp": _build_rtsp,
    "http": _build_http,
    "picamera2": _build_picamera2,
    "jetson_csi": _build_jetson_csi,
}


def build_source(config: Mapping[str, Any]) -> FrameSource:
    """A source from a config mapping whose ``type`` names an entry of :data:`SOURCES`. Not opened yet."""
    return build_from_registry(config, SOURCES, "source")
