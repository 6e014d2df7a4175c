"""The runtime configuration: one TOML file, typed, validated once at start.

``load_config(path, profile=None, overrides=None)`` builds a :class:`RuntimeConfig` from up to
four layers, each overriding the one before:

1. the defaults written below (each field's ``doc`` says what it means);
2. a device profile (``profile = "pi4"`` in the file, or ``profile=`` here, i.e. ``--profile``):
   ``<config folder>/profiles/NAME.toml``, else ``firmware_configs/profiles/NAME.toml`` of this
   checkout, else ``/etc/poseface-edge/profiles/NAME.toml``; or a path to a ``.toml`` file;
3. the config file itself;
4. overrides from the command line, as dotted keys: ``{"source.uri": ..., "gallery.path": ...}``.

Tables merge key by key; any other value (lists included) replaces the one below it. A
relative path resolves against the folder of the file that wrote it (overrides: the current
directory), so a config copied with its models keeps working wherever it lands.

Everything is checked here, so the rest of the runtime can trust it: an unknown key, a wrong
type, a value out of range, a missing model file all raise :class:`ConfigError` with one line
``FILE: key.path: expected ..., got ...`` naming the file the bad value came from. A camera that
cannot be opened is the frame source's to report (it may come back later); a missing model
file never comes back, so it is refused here.

``python -m edge.config CONFIG [--profile NAME] [--set key=value ...]`` prints the resolved
config as JSON, or the one-line error (exit code 2): a way to check a file before a restart.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import ipaddress
import json
import math
import os
import re
import string
import sys
from bisect import bisect_right
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Tuple, Union, get_args, get_origin, get_type_hints

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.9/3.10 (Jetson, older Raspberry Pi OS)
    import tomli as tomllib

from edge.core.matching import DEFAULT_YAW_EDGES
from edge.oneline import one_line
from edge.runtime.meta import meta_path_for, variant_path
from edge.shipped import SHIPPED_IDENTITY, SHIPPED_LANDMARKS

# The schema's dataclass fields say Optional[X], not X | None: their annotations are evaluated
# (typing.get_type_hints) to validate the TOML, and X | None does not evaluate on Python 3.9.
# ruff: noqa: UP045

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # edge/
# Where a device profile named by ``profile = "NAME"`` is looked for, after the config's own
# folder: the checkout's firmware_configs (an editable install, the tests), then the place the
# firmware README copies them to.
CHECKOUT_PROFILES = PACKAGE_DIR.parent / "firmware_configs" / "profiles"
SYSTEM_PROFILES = Path("/etc/poseface-edge/profiles")

SOURCE_TYPES = ("picamera2", "jetson_csi", "v4l2", "rtsp", "http", "video", "folder")
DETECTOR_TYPES = ("blazeface", "haar")
DETECTOR_RANGES = ("short", "full", "auto")
BACKENDS = ("onnxruntime", "tflite")
PRECISIONS = ("fp32", "fp16", "int8")
MODEL_SUFFIX = {"onnxruntime": ".onnx", "tflite": ".tflite"}
THRESHOLDS_FROM_METADATA = "from_model_metadata"
CSI_PLACEHOLDERS = ("width", "height", "framerate", "camera_index")

# The Jetson CSI camera through OpenCV's GStreamer backend. nvarguscamerasrc asks
# nvargus-daemon for frames in NVMM (GPU) memory, nvvidconv copies them to CPU memory as BGRx
# (it cannot write 3-channel BGR), videoconvert drops the fourth channel. appsink keeps only the
# newest frame: drop=1 alone drops nothing, because appsink's queue (max-buffers) is unbounded
# by default, and a slow frame loop would then fall ever further behind the camera.
DEFAULT_CSI_PIPELINE = (
    "nvarguscamerasrc sensor-id={camera_index} ! "
    "video/x-raw(memory:NVMM),width={width},height={height},framerate={framerate} ! "
    "nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! "
    "appsink drop=1 max-buffers=1"
)


class ConfigError(ValueError):
    """A config value is wrong; ``str(err)`` is one line: ``FILE: key.path: expected ..., got ...``."""

    def __init__(self, file: str, key: str, expected: str, got: str):
        self.file, self.key, self.expected, self.got = file, key, expected, got
        where = f"{file}: {key}: " if key else f"{file}: "
        super().__init__(one_line(f"{where}expected {expected}, got {got}"))


class _FieldError(Exception):
    """Raised while validating, before we know which file the key came from."""

    def __init__(self, key: str, expected: str, got: Any, related: tuple[str, ...] = ()):
        super().__init__(key)
        self.key, self.expected, self.got = key, expected, got
        # Other keys that make this one wrong (source.type for source.uri): the error is blamed
        # on whichever layer spoke last among them, the one that broke the combination.
        self.related = related


_NOTHING = object()  # "the key was absent", for messages: got nothing


class _Said(str):
    """A 'got' already worded for the message (shown as is, not repr'd)."""


def _show(value: Any) -> str:
    if value is _NOTHING:
        return "nothing"
    if isinstance(value, _Said):
        return str(value)
    if isinstance(value, dict):
        return "a table"
    text = repr(str(value)) if isinstance(value, Path) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _f(default: Any = MISSING, *, doc: str, factory: Any = MISSING, **checks: Any) -> Any:
    """A dataclass field with its documentation and checks.

    ``checks``: ``choices`` (allowed values), ``ge``/``gt``/``le``/``lt`` (numeric bounds),
    ``convert`` (a function ``(value, key, ctx)`` for the few fields a type hint cannot
    describe), ``internal`` (not a TOML key).
    """
    metadata = {"doc": doc, **checks}
    if factory is not MISSING:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


# ----------------------------------------------------------------------------- schema


@dataclass(frozen=True)
class SourceConfig:
    """Where frames come from; ``type`` picks the frame source class."""

    type: str = _f("v4l2", doc="frame source", choices=SOURCE_TYPES)
    device: str = _f("/dev/video0", doc="v4l2: device node, or a camera index such as '0'")
    uri: str = _f("", doc="rtsp: rtsp:// or rtsps:// URL; http: http:// or https:// URL (MJPEG or a stream)")
    path: Optional[Path] = _f(None, doc="video: a video file; folder: a folder of images")
    pipeline: str = _f(
        DEFAULT_CSI_PIPELINE,
        doc="jetson_csi: GStreamer pipeline for OpenCV, ending in appsink; "
        "{width} {height} {framerate} {camera_index} are filled in",
    )
    camera_index: int = _f(0, doc="picamera2: camera number; jetson_csi: sensor-id", ge=0, le=15)
    width: int = _f(1280, doc="frame width requested from the camera, pixels", ge=16, le=8192)
    height: int = _f(720, doc="frame height requested from the camera, pixels", ge=16, le=8192)
    fps: float = _f(15.0, doc="frame rate requested from the camera, frames per second", gt=0, le=240)
    loop: bool = _f(False, doc="video: start again at the end of the file")
    sequence: bool = _f(
        False, doc="folder: treat the images as consecutive frames (track across files); default: independent stills"
    )
    reconnect_initial_s: float = _f(1.0, doc="first wait before reopening a source that failed, seconds", gt=0, le=3600)
    reconnect_max_s: float = _f(
        30.0, doc="longest wait between reopen attempts (doubling backoff), seconds", gt=0, le=3600
    )

    def framerate(self) -> str:
        """``fps`` as the fraction GStreamer caps want (the jetson_csi source's own conversion)."""
        from edge.sources.jetson import gstreamer_framerate

        return gstreamer_framerate(self.fps)

    def csi_pipeline(self) -> str:
        """The jetson_csi pipeline with its placeholders filled in."""
        return self.pipeline.format(
            width=self.width, height=self.height, framerate=self.framerate(), camera_index=self.camera_index
        )


@dataclass(frozen=True)
class DetectorConfig:
    """The face detector; ``range = "auto"`` picks short or full range from the expected face size."""

    type: str = _f("blazeface", doc="face detector", choices=DETECTOR_TYPES)
    range: str = _f(
        "auto",
        doc="blazeface model: short (128x128 input, faces near the camera), full (192x192, small faces), "
        "or auto (by expected_face_fraction)",
        choices=DETECTOR_RANGES,
    )
    expected_face_fraction: float = _f(
        0.2, doc="typical face width / frame's longer side, used by range = auto", gt=0, le=1
    )
    score_threshold: Optional[float] = _f(None, doc="blazeface: minimum score; default: the model's own", gt=0, lt=1)
    nms_iou: float = _f(0.3, doc="IoU above which overlapping detections are merged", gt=0, le=1)

    def model_range(self) -> str:
        """'short' or 'full': the configured range, or for 'auto' the one the face size calls for."""
        if self.range != "auto":
            return self.range
        # Imported here: the BlazeFace module loads OpenCV and the model runner, which reading a
        # config should not need.
        from edge.detect.blazeface import choose_range

        return choose_range(self.expected_face_fraction)

    def build_options(self, threads: int = 1) -> dict[str, Any]:
        """The mapping :func:`edge.detect.build_detector` takes."""
        if self.type == "haar":
            return {"type": "haar", "nms_iou": self.nms_iou}
        options: dict[str, Any] = {
            "type": "blazeface",
            "range": self.model_range(),
            "nms_iou": self.nms_iou,
            "threads": threads,
        }
        if self.score_threshold is not None:
            options["score_threshold"] = self.score_threshold
        return options


@dataclass(frozen=True)
class LandmarksConfig:
    model: Path = _f(SHIPPED_LANDMARKS, doc="PIPNet landmark model (.onnx or .tflite, metadata .json beside it)")


@dataclass(frozen=True)
class EmbeddingConfig:
    model: Optional[Path] = _f(
        SHIPPED_IDENTITY if SHIPPED_IDENTITY.exists() else None,
        doc="identity embedding model (default: the shipped PoseFace model); unset: faces are found and tracked, "
        "not named",
    )
    test_time_flip: str = _f(
        "model",
        doc="embed each face and its mirror image and sum them (twice the embedding cost): 'model' as the "
        "model's metadata says (on where it was measured to help; its thresholds were calibrated that way), "
        "'on' or 'off'",
        choices=("model", "on", "off"),
    )


def _convert_providers(value: Any, key: str, ctx: _Context) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or not value:
        raise _FieldError(key, "a non-empty list of onnxruntime execution provider names", value)
    for i, name in enumerate(value):
        # Only the form is checked here: a config written for a Jetson must still load on a
        # laptop; which providers this onnxruntime really has is decided at start by
        # edge.app.service.choose_providers, with a logged reason for each one dropped.
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9]+ExecutionProvider", name):
            raise _FieldError(f"{key}[{i}]", "a provider name such as 'CUDAExecutionProvider'", name)
    if len(set(value)) != len(value):
        raise _FieldError(key, "each provider once", list(value))
    return tuple(value)


@dataclass(frozen=True)
class RuntimeSection:
    """How models run: which runtime, how many threads, which ONNX execution providers."""

    backend: str = _f("onnxruntime", doc="runtime for the landmark and embedding models", choices=BACKENDS)
    threads: int = _f(2, doc="intra-op threads per model", ge=1, le=64)
    precision: str = _f(
        "fp32",
        doc="which shipped variant of the landmark and identity models to run (int8: 1.5-1.8x faster at one "
        "thread on our x86 test CPU; accuracy cost in the model cards); ignored for a model path set explicitly",
        choices=PRECISIONS,
    )
    providers: Tuple[str, ...] = _f(
        ("CPUExecutionProvider",),
        doc="onnxruntime execution providers, preferred first; unavailable ones are dropped with a "
        "logged reason, CPU is always the last resort",
        convert=_convert_providers,
    )
    trt_cache_dir: Optional[Path] = _f(
        None, doc="TensorRT engine cache folder (must be writable); unset: engines are rebuilt at every start"
    )
    trt_fp16: bool = _f(False, doc="let TensorRT run layers in fp16")

    def provider_options(self) -> dict[str, dict[str, str]]:
        """Per-provider options for :func:`edge.app.service.choose_providers` (TensorRT's engine cache, fp16)."""
        trt: dict[str, str] = {}
        if self.trt_cache_dir is not None:
            trt["trt_engine_cache_enable"] = "True"
            trt["trt_engine_cache_path"] = str(self.trt_cache_dir)
        if self.trt_fp16:
            trt["trt_fp16_enable"] = "True"
        return {"TensorrtExecutionProvider": trt} if trt else {}


def _convert_credential(value: Any, key: str, ctx: _Context) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9_.\-]{1,255}", value) or value in (".", ".."):
        raise _FieldError(key, "a systemd credential name such as 'gallery.key' (no '/')", value)
    return value


@dataclass(frozen=True)
class GalleryConfig:
    path: Path = _f(Path("gallery.sqlite"), doc="SQLite gallery of identities and templates")
    key_file: Optional[Path] = _f(None, doc="template encryption key file (mode 0600)")
    key_credential: Optional[str] = _f(
        None,
        doc="systemd credential holding the key (LoadCredential=); tried before key_file",
        convert=_convert_credential,
    )


def _convert_thresholds(value: Any, key: str, ctx: _Context) -> Union[str, Tuple[float, ...]]:
    if value == THRESHOLDS_FROM_METADATA:
        return value
    expected = f"{THRESHOLDS_FROM_METADATA!r} or a list of cosine thresholds in [-1, 1], one per yaw bin"
    if not isinstance(value, (list, tuple)) or not value:
        raise _FieldError(key, expected, value)
    out = []
    for i, item in enumerate(value):
        if isinstance(item, bool) or not isinstance(item, (int, float)) or not -1 <= item <= 1:
            raise _FieldError(f"{key}[{i}]", "a cosine threshold in [-1, 1]", item)
        out.append(float(item))
    return tuple(out)


@dataclass(frozen=True)
class MatchingConfig:
    """Pose-aware matching: the accept threshold depends on the probe's |yaw| bin."""

    yaw_bin_edges: Tuple[float, ...] = _f(
        DEFAULT_YAW_EDGES,
        doc="|yaw| bin edges in degrees, increasing, in (0, 90): [0, 15), [15, 30), [30, 45), [45, 90]",
    )
    thresholds: Union[str, Tuple[float, ...]] = _f(
        THRESHOLDS_FROM_METADATA,
        doc="one cosine threshold per yaw bin, or 'from_model_metadata' (written by python -m edge.calibrate)",
        convert=_convert_thresholds,
    )

    def yaw_bin(self, yaw_deg: float) -> int:
        """The bin index of a probe's yaw (the sign is ignored: left and right profiles share a bin)."""
        return bisect_right(self.yaw_bin_edges, abs(yaw_deg))


@dataclass(frozen=True)
class TrackerConfig:
    iou: float = _f(0.3, doc="minimum IoU to continue a track with a new detection", gt=0, le=1)
    max_age: int = _f(15, doc="frames a track survives without a detection", ge=0, le=100000)
    min_hits: int = _f(2, doc="detections before a track is reported", ge=1, le=1000)
    evidence_frames: int = _f(5, doc="best embeddings kept per track to decide its identity", ge=1, le=1000)


@dataclass(frozen=True)
class StdoutSink:
    type: str = _f("stdout", doc="events as JSON lines on standard output", choices=("stdout",))


@dataclass(frozen=True)
class JsonlSink:
    path: Path = _f(doc="JSON-lines file, appended to")
    type: str = _f("jsonl", doc="events appended to a JSON-lines file", choices=("jsonl",))
    fsync: bool = _f(False, doc="sync every line to disk (survives a power cut; a disk flush per event)")


@dataclass(frozen=True)
class MqttSink:
    host: str = _f(doc="broker host name or address")
    type: str = _f("mqtt", doc="events published to an MQTT broker (paho-mqtt)", choices=("mqtt",))
    port: int = _f(1883, doc="broker port (8883 is the usual TLS port)", ge=1, le=65535)
    topic: str = _f("poseface/events", doc="topic events are published to")
    qos: int = _f(1, doc="MQTT quality of service", ge=0, le=2)
    client_id: str = _f("poseface-edge", doc="MQTT client id")
    tls: bool = _f(False, doc="connect with TLS (the broker's certificate is verified)")
    ca_file: Optional[Path] = _f(None, doc="CA bundle for a private broker certificate; unset: system CAs")
    username: Optional[str] = _f(None, doc="user name")
    password_file: Optional[Path] = _f(None, doc="file holding the password (never the password itself)")
    keepalive: int = _f(60, doc="MQTT keep-alive interval, seconds", ge=5, le=3600)
    timeout_s: float = _f(5.0, doc="per-publish timeout, seconds", gt=0, le=300)
    retries: int = _f(3, doc="retries with backoff before an event is dropped (and counted)", ge=0, le=100)
    homeassistant: bool = _f(
        False,
        doc="publish Home Assistant MQTT discovery configs and states per camera (off: clear any published before)",
    )
    discovery_prefix: str = _f("homeassistant", doc="Home Assistant's MQTT discovery prefix")


@dataclass(frozen=True)
class WebhookSink:
    url: str = _f(doc="http:// or https:// URL events are POSTed to")
    type: str = _f("webhook", doc="events POSTed as JSON", choices=("webhook",))
    timeout_s: float = _f(5.0, doc="per-request timeout, seconds", gt=0, le=300)
    retries: int = _f(3, doc="retries with backoff before an event is dropped (and counted)", ge=0, le=100)
    ca_file: Optional[Path] = _f(None, doc="CA bundle for a private server certificate; TLS is always verified")


SINKS: dict[str, type] = {"stdout": StdoutSink, "jsonl": JsonlSink, "mqtt": MqttSink, "webhook": WebhookSink}
Sink = Union[StdoutSink, JsonlSink, MqttSink, WebhookSink]


def _convert_sinks(value: Any, key: str, ctx: _Context) -> tuple:
    if not isinstance(value, (list, tuple)):
        raise _FieldError(key, "a list of sink tables ([[events.sinks]] with a type)", value)
    sinks = []
    for i, item in enumerate(value):
        where = f"{key}[{i}]"
        if dataclasses.is_dataclass(item):  # overrides from code may pass built sinks: StdoutSink()
            item = _to_plain(item)
        if not isinstance(item, dict):
            raise _FieldError(where, "a sink table with a type", item)
        kind = item.get("type", _NOTHING)
        if not isinstance(kind, str) or kind not in SINKS:
            raise _FieldError(f"{where}.type", "one of " + ", ".join(map(repr, SINKS)), kind)
        sinks.append(_build(SINKS[kind], item, where, ctx))
    return tuple(sinks)


@dataclass(frozen=True)
class EventsConfig:
    sinks: Tuple[Sink, ...] = _f((StdoutSink(),), doc="where events go", convert=_convert_sinks)
    queue_size: int = _f(
        1000, doc="events buffered per slow sink; when full the oldest is dropped and counted", ge=1, le=1_000_000
    )


@dataclass(frozen=True)
class HealthConfig:
    enabled: bool = _f(False, doc="serve JSON health and Prometheus metrics over HTTP")
    bind: str = _f("127.0.0.1", doc="address to listen on; anything but loopback needs token_file")
    port: int = _f(8765, doc="TCP port", ge=1, le=65535)
    token_file: Optional[Path] = _f(None, doc="file holding the bearer token clients must send")


@dataclass(frozen=True)
class ServiceConfig:
    notify: bool = _f(True, doc="speak sd_notify (READY, STATUS, STOPPING) when NOTIFY_SOCKET is set")
    watchdog: bool = _f(True, doc="ping systemd's watchdog while frames are processed (when WATCHDOG_USEC is set)")


@dataclass(frozen=True)
class PrivacyConfig:
    store_face_images: bool = _f(False, doc="keep face crops on disk (off: no face image is ever written)")
    face_images_dir: Optional[Path] = _f(None, doc="where face crops go when store_face_images is true")
    retention_days: int = _f(30, doc="stored face crops older than this are deleted", ge=1, le=3650)


@dataclass(frozen=True)
class RuntimeConfig:
    """The whole runtime configuration, validated; ``loaded_from`` lists its layers (not a key)."""

    profile: Optional[str] = _f(None, doc="device profile loaded beneath this file (pi4, pi5, jetson_nano, ...)")
    source: SourceConfig = _f(doc="frame source", factory=SourceConfig)
    detector: DetectorConfig = _f(doc="face detector", factory=DetectorConfig)
    landmarks: LandmarksConfig = _f(doc="landmark model", factory=LandmarksConfig)
    embedding: EmbeddingConfig = _f(doc="identity model", factory=EmbeddingConfig)
    runtime: RuntimeSection = _f(doc="inference runtime", factory=RuntimeSection)
    gallery: GalleryConfig = _f(doc="gallery", factory=GalleryConfig)
    matching: MatchingConfig = _f(doc="pose-aware matching", factory=MatchingConfig)
    tracker: TrackerConfig = _f(doc="tracker", factory=TrackerConfig)
    events: EventsConfig = _f(doc="event sinks", factory=EventsConfig)
    health: HealthConfig = _f(doc="health endpoint", factory=HealthConfig)
    service: ServiceConfig = _f(doc="systemd protocol", factory=ServiceConfig)
    privacy: PrivacyConfig = _f(doc="privacy", factory=PrivacyConfig)
    loaded_from: Tuple[str, ...] = _f((), doc="the layers this config was built from", internal=True)


# ----------------------------------------------------------------------------- layers and origins


@dataclass
class _Layer:
    name: str  # what an error names: a file path, or "command line"
    base_dir: Path  # relative paths in this layer resolve against it
    data: dict
    is_file: bool = False
    from_cli: bool = False  # strings may stand for numbers/booleans/lists (``--set source.fps=30``)


class _Context:
    """The merged layers, and for every key which layer set it, for errors and path resolution."""

    def __init__(self, layers: list[_Layer]):
        self.layers = layers
        self.origins: dict[str, int] = {}
        self.data: dict = {}
        for index, layer in enumerate(layers):
            self._merge(self.data, layer.data, index, "")
        # A key no layer set (a required key left out) is blamed on the topmost file, else on
        # the command line, else on the defaults.
        files = [i for i, layer in enumerate(layers) if layer.is_file]
        given = [i for i, layer in enumerate(layers) if layer.data]
        self.fallback = files[-1] if files else given[-1] if given else 0
        # Relative default paths (gallery.sqlite) live beside the config file: the first layer's folder.
        self.default_base = layers[0].base_dir

    def _merge(self, into: dict, new: Mapping, index: int, prefix: str) -> None:
        for key, value in new.items():
            path = f"{prefix}{key}"
            if isinstance(value, Mapping):
                if not isinstance(into.get(key), dict):
                    self._forget_below(path)
                    into[key] = {}
                self.origins[path] = index
                self._merge(into[key], value, index, path + ".")
            else:
                self._forget_below(path)
                into[key] = copy.deepcopy(value)
                self.origins[path] = index

    def _forget_below(self, path: str) -> None:
        for key in [k for k in self.origins if k.startswith(path + ".") or k.startswith(path + "[")]:
            del self.origins[key]

    def _index_of(self, key: str) -> int | None:
        probe = key
        while probe:
            if probe in self.origins:
                return self.origins[probe]
            cut = max(probe.rfind("."), probe.rfind("["))
            probe = probe[:cut] if cut > 0 else ""
        return None

    def layer_of(self, key: str) -> _Layer:
        index = self._index_of(key)
        return self.layers[self.fallback if index is None else index]

    def error(self, err: _FieldError) -> ConfigError:
        found = [i for i in map(self._index_of, (err.key, *err.related)) if i is not None]
        layer = self.layers[max(found) if found else self.fallback]
        return ConfigError(layer.name, err.key, err.expected, _show(err.got))


# ----------------------------------------------------------------------------- validation

_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = get_type_hints(cls)
    return _HINTS[cls]


_PLURAL = {int: "integers", float: "numbers", str: "strings", Path: "paths"}


def _describe(hint: Any, meta: Mapping[str, Any]) -> str:
    if "choices" in meta:
        return "one of " + ", ".join(repr(c) for c in meta["choices"])
    base = {bool: "true or false", int: "an integer", float: "a number", str: "a string", Path: "a path"}.get(
        hint, "a list of numbers" if get_origin(hint) is tuple else "a value"
    )
    low = ("[", meta["ge"]) if "ge" in meta else ("(", meta["gt"]) if "gt" in meta else None
    high = (meta["le"], "]") if "le" in meta else (meta["lt"], ")") if "lt" in meta else None
    if low and high:
        return f"{base} in {low[0]}{low[1]}, {high[0]}{high[1]}"
    if low:
        return f"{base} {'>=' if low[0] == '[' else '>'} {low[1]}"
    if high:
        return f"{base} {'<=' if high[1] == ']' else '<'} {high[0]}"
    return base


def _coerce_cli_string(value: str, hint: Any) -> Any:
    # ``--set source.fps=30`` arrives as the string "30"; read it as the TOML value it spells.
    if get_origin(hint) is Union and type(None) in get_args(hint):
        hint = next(a for a in get_args(hint) if a is not type(None))
    if hint in (str, Path):
        return value
    try:
        return tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        return value


def _check_value(value: Any, hint: Any, key: str, meta: Mapping[str, Any], ctx: _Context) -> Any:
    """One TOML value -> the field's Python value, or :class:`_FieldError`."""
    if "convert" in meta:
        return meta["convert"](value, key, ctx)
    if get_origin(hint) is Union:  # Optional[X]: None means unset (only dicts and overrides can say so)
        if value is None:
            return None
        hint = next(a for a in get_args(hint) if a is not type(None))
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key, ctx)
    expected = _describe(hint, meta)
    written = value  # what the file said, for the message (an int read as a float stays 0, not 0.0)
    if hint is bool:
        if not isinstance(value, bool):
            raise _FieldError(key, expected, value)
    elif hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _FieldError(key, expected, value)
    elif hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not _finite(value):
            raise _FieldError(key, expected, value)
        value = float(value)
    elif hint is str:
        if not isinstance(value, str):
            raise _FieldError(key, expected, value)
    elif hint is Path:
        if isinstance(value, Path):
            value = str(value)
        if not isinstance(value, str) or not value.strip():
            raise _FieldError(key, "a path", value)
        path = _expand_user(Path(value), key)
        value = path if path.is_absolute() else ctx.layer_of(key).base_dir / path
    elif get_origin(hint) is tuple:
        item_hint = get_args(hint)[0]
        if not isinstance(value, (list, tuple)):
            raise _FieldError(key, f"a list of {_PLURAL.get(item_hint, 'values')}", value)
        return tuple(_check_value(v, item_hint, f"{key}[{i}]", {}, ctx) for i, v in enumerate(value))
    else:  # pragma: no cover - a schema field of a type this function was not taught
        raise TypeError(f"config schema: no check for {hint!r} ({key})")
    if "choices" in meta and value not in meta["choices"]:
        raise _FieldError(key, expected, written)
    bad = (
        ("ge" in meta and value < meta["ge"])
        or ("gt" in meta and value <= meta["gt"])
        or ("le" in meta and value > meta["le"])
        or ("lt" in meta and value >= meta["lt"])
    )
    if bad:
        raise _FieldError(key, expected, written)
    return value


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _build(cls: type, data: Any, prefix: str, ctx: _Context) -> Any:
    """A dataclass of the schema from a table, every key checked."""
    if not isinstance(data, Mapping):
        raise _FieldError(prefix, "a table", data)
    hints = _hints(cls)
    keys = [f for f in dataclasses.fields(cls) if not f.metadata.get("internal")]
    known = [f.name for f in keys]
    for name in data:
        if name not in known:
            table = f"[{prefix}]" if prefix else "the top level"
            raise _FieldError(_join(prefix, name), f"a key of {table} ({', '.join(known)})", name)
    values = {}
    for f in keys:
        key = _join(prefix, f.name)
        if f.name in data:
            value = data[f.name]
            if ctx.layer_of(key).from_cli and isinstance(value, str):
                value = _coerce_cli_string(value, hints[f.name])
            values[f.name] = _check_value(value, hints[f.name], key, f.metadata, ctx)
        elif f.default is MISSING and f.default_factory is MISSING:
            raise _FieldError(key, _describe(hints[f.name], f.metadata) + " (required)", _NOTHING)
        elif dataclasses.is_dataclass(hints[f.name]):
            # An absent section is built from nothing, so its own defaults get the same treatment.
            values[f.name] = _build(hints[f.name], {}, key, ctx)
        elif hints[f.name] is Path and not f.default.is_absolute():
            # A relative default (gallery.sqlite) lives beside the config file, like any relative path.
            values[f.name] = ctx.default_base / f.default
    return cls(**values)


def _finite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer too large for a float
        return False


def _expand_user(path: Path, key: str) -> Path:
    try:
        return path.expanduser()
    except RuntimeError:  # ~someone who does not exist here
        raise _FieldError(key, "a path whose ~user exists", str(path)) from None


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):  # a name too long for the file system, a NUL byte
        return False


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except (OSError, ValueError):
        return False


def _require_file(path: Path | None, key: str, what: str) -> None:
    if path is not None and not _is_file(path):
        raise _FieldError(key, f"an existing {what}", _Said(f"{path}, which does not exist"))


def _check_model(path: Path | None, key: str, backend: str) -> None:
    if path is None:
        return
    suffix = MODEL_SUFFIX[backend]
    if path.suffix != suffix:
        raise _FieldError(key, f"a {suffix} model for runtime.backend = {backend!r}", str(path), ("runtime.backend",))
    _require_file(path, key, "model file")
    meta = meta_path_for(path)
    if not _is_file(meta):
        raise _FieldError(key, f"a model with its metadata beside it ({meta.name})", _Said(f"{path} without it"))


_TYPE = ("source.type",)


def _check_across(cfg: RuntimeConfig) -> None:
    """Rules that involve more than one field (each names the field to change)."""
    src = cfg.source
    if src.type == "rtsp" and not re.match(r"rtsps?://.", src.uri):
        raise _FieldError("source.uri", "an rtsp:// or rtsps:// URL for source.type = 'rtsp'", src.uri, _TYPE)
    if src.type == "http" and not re.match(r"https?://.", src.uri):
        raise _FieldError("source.uri", "an http:// or https:// URL for source.type = 'http'", src.uri, _TYPE)
    if src.type == "v4l2" and not (src.device.startswith("/dev/") or src.device.isdigit()):
        raise _FieldError("source.device", "a device node such as '/dev/video0' or a camera index", src.device, _TYPE)
    if src.type in ("video", "folder"):
        if src.path is None:
            raise _FieldError("source.path", f"a path for source.type = {src.type!r}", _NOTHING, _TYPE)
        exists = _is_file(src.path) if src.type == "video" else _is_dir(src.path)
        if not exists:
            what = "video file" if src.type == "video" else "folder of images"
            raise _FieldError("source.path", f"an existing {what}", _Said(f"{src.path}, which does not exist"), _TYPE)
    if src.type == "jetson_csi":
        try:
            names = {name for _, name, _, _ in string.Formatter().parse(src.pipeline) if name is not None}
        except ValueError:
            names = {"?"}
        if not names <= set(CSI_PLACEHOLDERS) or "appsink" not in src.pipeline.rsplit("!", 1)[-1]:
            raise _FieldError(
                "source.pipeline",
                "a GStreamer pipeline ending in appsink, with placeholders among "
                + ", ".join("{" + n + "}" for n in CSI_PLACEHOLDERS),
                src.pipeline,
            )
    if src.reconnect_max_s < src.reconnect_initial_s:
        raise _FieldError(
            "source.reconnect_max_s",
            f"at least source.reconnect_initial_s ({src.reconnect_initial_s})",
            src.reconnect_max_s,
            ("source.reconnect_initial_s",),
        )

    _check_model(cfg.landmarks.model, "landmarks.model", cfg.runtime.backend)
    _check_model(cfg.embedding.model, "embedding.model", cfg.runtime.backend)

    edges = cfg.matching.yaw_bin_edges
    for i, edge in enumerate(edges):
        if not 0 < edge < 90 or (i and edge <= edges[i - 1]):
            raise _FieldError(f"matching.yaw_bin_edges[{i}]", "increasing |yaw| edges in (0, 90) degrees", edge)
    thresholds = cfg.matching.thresholds
    if not isinstance(thresholds, str) and len(thresholds) != len(edges) + 1:
        raise _FieldError(
            "matching.thresholds",
            f"{len(edges) + 1} thresholds (one per yaw bin)",
            _Said(f"{len(thresholds)}"),
            ("matching.yaw_bin_edges",),
        )

    for i, sink in enumerate(cfg.events.sinks):
        where = f"events.sinks[{i}]"
        if isinstance(sink, WebhookSink) and not re.match(r"https?://.", sink.url):
            raise _FieldError(f"{where}.url", "an http:// or https:// URL", sink.url)
        if isinstance(sink, MqttSink):
            if not sink.host.strip():
                raise _FieldError(f"{where}.host", "a broker host name", sink.host)
            _require_file(sink.password_file, f"{where}.password_file", "password file")
            _require_file(sink.ca_file, f"{where}.ca_file", "CA file")
            if not re.fullmatch(r"[^+#/\x00]+(/[^+#/\x00]+)*", sink.discovery_prefix):
                expected = "a topic prefix such as 'homeassistant' (no wildcards + #, no empty level)"
                raise _FieldError(f"{where}.discovery_prefix", expected, sink.discovery_prefix)
        if isinstance(sink, WebhookSink):
            _require_file(sink.ca_file, f"{where}.ca_file", "CA file")

    health = cfg.health
    try:
        loopback = ipaddress.ip_address(health.bind).is_loopback
    except ValueError:
        raise _FieldError("health.bind", "an IP address such as '127.0.0.1' or '0.0.0.0'", health.bind) from None
    if health.enabled and not loopback and health.token_file is None:
        raise _FieldError(
            "health.token_file",
            f"a token file when health.bind ({health.bind}) is not loopback",
            _NOTHING,
            ("health.bind", "health.enabled"),
        )
    _require_file(health.token_file, "health.token_file", "token file")

    if cfg.privacy.store_face_images and cfg.privacy.face_images_dir is None:
        raise _FieldError(
            "privacy.face_images_dir",
            "a folder when privacy.store_face_images = true",
            _NOTHING,
            ("privacy.store_face_images",),
        )


def shipped_variant(fp32_onnx: Path, backend: str, precision: str) -> Path:
    """The shipped file of a model for a runtime and precision (``edge.runtime.meta.variant_path``)."""
    return variant_path(fp32_onnx, MODEL_SUFFIX[backend].lstrip("."), precision)


def _resolve_shipped_models(cfg: RuntimeConfig, data: Mapping[str, Any]) -> RuntimeConfig:
    """Models no layer names (left at the shipped default) follow runtime.backend and
    runtime.precision; a model path given anywhere is used as given."""
    backend, precision = cfg.runtime.backend, cfg.runtime.precision
    changes = {}
    for section, shipped in (("landmarks", SHIPPED_LANDMARKS), ("embedding", SHIPPED_IDENTITY)):
        current = getattr(cfg, section)
        given = data.get(section)
        if current.model is None or (isinstance(given, Mapping) and "model" in given):
            continue
        variant = shipped_variant(shipped, backend, precision)
        if not variant.is_file():
            raise _FieldError(
                "runtime.precision",
                f"a precision shipped for runtime.backend = {backend!r}",
                _Said(f"{precision!r}, but {variant} is not installed"),
                ("runtime.backend",),
            )
        changes[section] = dataclasses.replace(current, model=variant)
    return dataclasses.replace(cfg, **changes) if changes else cfg


def _config_from_layers(layers: list[_Layer]) -> RuntimeConfig:
    ctx = _Context(layers)
    try:
        cfg = _resolve_shipped_models(_build(RuntimeConfig, ctx.data, "", ctx), ctx.data)
        _check_across(cfg)
    except _FieldError as err:
        raise ctx.error(err) from None
    names = tuple(layer.name for layer in layers if layer.is_file or layer.data)
    return dataclasses.replace(cfg, loaded_from=names)


# ----------------------------------------------------------------------------- files and profiles


def _read_toml(path: Path) -> dict:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(str(path), "", "a TOML config file", "no such file") from None
    except OSError as err:
        raise ConfigError(str(path), "", "a readable TOML config file", err.strerror or type(err).__name__) from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(str(path), "", "valid TOML", f"a syntax error: {err}") from None
    except UnicodeDecodeError:
        raise ConfigError(str(path), "", "a UTF-8 TOML file", "undecodable bytes") from None
    except (ValueError, RecursionError) as err:  # a number too long to convert, nesting too deep
        raise ConfigError(str(path), "", "usable TOML", f"{type(err).__name__}: {err}") from None


def profile_dirs(config_dir: Path | None = None) -> list[Path]:
    """Where profile names are looked up, first match wins."""
    dirs = [config_dir / "profiles"] if config_dir is not None else []
    return dirs + [CHECKOUT_PROFILES, SYSTEM_PROFILES]


def available_profiles(config_dir: Path | None = None) -> list[str]:
    names = set()
    for folder in profile_dirs(config_dir):
        if folder.is_dir():
            names.update(p.stem for p in folder.glob("*.toml"))
    return sorted(names)


def find_profile(name: Any, config_dir: Path | None, origin: str) -> Path:
    """A profile name (``pi4``) or a ``.toml`` path -> the profile file; ``origin`` is blamed on failure."""
    if isinstance(name, str) and name.endswith(".toml"):
        try:
            path = Path(name).expanduser()
        except RuntimeError:
            raise ConfigError(origin, "profile", "a path whose ~user exists", name) from None
        if not path.is_absolute():
            path = (config_dir or Path.cwd()) / path
        if _is_file(path):
            return path
        raise ConfigError(origin, "profile", "an existing profile file", f"{path}, which does not exist")
    if isinstance(name, str) and re.fullmatch(r"[A-Za-z0-9_\-]+", name):
        for folder in profile_dirs(config_dir):
            if _is_file(folder / f"{name}.toml"):
                return folder / f"{name}.toml"
    known = ", ".join(available_profiles(config_dir)) or "none found"
    raise ConfigError(origin, "profile", f"a profile name ({known}) or a path to a .toml file", _show(name))


def _overrides_to_tree(overrides: Mapping[str, Any]) -> dict:
    tree: dict = {}
    for dotted, value in overrides.items():
        parts = dotted.split(".")
        if not all(parts):
            raise ConfigError("command line", dotted, "a dotted key such as 'source.uri'", repr(dotted))
        node = tree
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError("command line", dotted, "a key that does not cross a value", repr(dotted))
        node[parts[-1]] = value
    return tree


def load_config(
    path: os.PathLike | str | None,
    profile: str | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> RuntimeConfig:
    """The validated runtime config: defaults < profile < the file at ``path`` < ``overrides``.

    ``path`` None: defaults (and profile, overrides) only. ``profile`` (``--profile``) wins
    over the file's own ``profile`` key. ``overrides`` are dotted keys from the command line;
    their relative paths resolve against the current directory. Raises :class:`ConfigError`.
    """
    overrides = dict(overrides or {})
    if "profile" in overrides:
        profile = overrides.pop("profile")
    file_layer = None
    config_dir = None
    if path is not None:
        path = Path(path).expanduser().absolute()
        config_dir = path.parent
        file_layer = _Layer(str(path), config_dir, _read_toml(path), is_file=True)
    layers = [_Layer(str(path) if path else "defaults", config_dir or Path.cwd(), {})]

    if profile is not None:
        name, origin = profile, "command line"
    elif file_layer is not None and "profile" in file_layer.data:
        name, origin = file_layer.data["profile"], file_layer.name
    else:
        name, origin = None, ""
    if name is not None:
        profile_path = find_profile(name, config_dir, origin)
        data = _read_toml(profile_path)
        if "profile" in data:
            raise ConfigError(str(profile_path), "profile", "no profile key inside a profile", _show(data["profile"]))
        layers.append(_Layer(str(profile_path), profile_path.parent, data, is_file=True))
    if file_layer is not None:
        layers.append(file_layer)
    if overrides or profile is not None:
        tree = _overrides_to_tree(overrides)
        if profile is not None:
            tree["profile"] = profile
        layers.append(_Layer("command line", Path.cwd(), tree, from_cli=True))
    return _config_from_layers(layers)


def apply_overrides(
    config: RuntimeConfig, overrides: Mapping[str, Any], base_dir: os.PathLike | str | None = None
) -> RuntimeConfig:
    """``config`` with dotted-key overrides applied and everything validated again.

    ``apply_overrides(cfg, {"source.uri": "rtsp://cam/1", "gallery.path": "g.sqlite"})``.
    Relative paths resolve against ``base_dir`` (default: the current directory).
    """
    if "profile" in overrides:
        raise ConfigError(
            "command line", "profile", "the profile given to load_config (it loads beneath the file)", "an override"
        )
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    files = [name for name in config.loaded_from if name != "command line"]
    # Every key of the loaded config is present (and its paths absolute), so a value that goes
    # wrong only through an override is blamed on the command line.
    layers = [
        _Layer(files[-1] if files else "config", base, config_to_dict(config), is_file=True),
        _Layer("command line", base, _overrides_to_tree(overrides), from_cli=True),
    ]
    cfg = _config_from_layers(layers)
    return dataclasses.replace(cfg, loaded_from=config.loaded_from + ("command line",))


def source_overrides(value: str) -> dict[str, Any]:
    """What a ``--source`` argument means, as overrides: a device, a URL, a file or a folder.

    ``/dev/video0`` or ``0`` -> v4l2, ``picamera``/``picamera2`` -> the Pi camera,
    ``jetson_csi``/``csi`` -> the Jetson CSI camera, ``rtsp://...`` -> rtsp, ``http(s)://...``
    -> http, a folder -> folder, anything else -> a video file.
    """
    if value in ("picamera", "picamera2"):
        return {"source.type": "picamera2"}
    if value in ("jetson_csi", "csi"):
        return {"source.type": "jetson_csi"}
    if value.startswith("/dev/") or value.isdigit():
        return {"source.type": "v4l2", "source.device": value}
    if re.match(r"rtsps?://", value):
        return {"source.type": "rtsp", "source.uri": value}
    if re.match(r"https?://", value):
        return {"source.type": "http", "source.uri": value}
    kind = "folder" if Path(value).expanduser().is_dir() else "video"
    return {"source.type": kind, "source.path": value}


def _to_plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {
            f.name: _to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj) if not f.metadata.get("internal")
        }
    if isinstance(obj, (list, tuple)):
        return [_to_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def config_to_dict(config: RuntimeConfig) -> dict[str, Any]:
    """The config as plain JSON-able data (paths as absolute strings, unset values as None).

    Loading it back (as a layer, or through :func:`apply_overrides`) gives an equal config.
    """
    return _to_plain(config)


def field_docs(cls: type = RuntimeConfig, prefix: str = "") -> dict[str, str]:
    """``{"source.type": "frame source", ...}``: every key and its one-line documentation."""
    docs: dict[str, str] = {}
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("internal"):
            continue
        key = _join(prefix, f.name)
        if dataclasses.is_dataclass(hints[f.name]):
            docs.update(field_docs(hints[f.name], key))
        else:
            docs[key] = f.metadata.get("doc", "")
    return docs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m edge.config", description="Validate a runtime config; print it as JSON."
    )
    parser.add_argument("config", nargs="?", help="config TOML (default: defaults only)")
    parser.add_argument("--profile", help="device profile name or .toml path (overrides the file's profile key)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a key, e.g. source.fps=30"
    )
    args = parser.parse_args(argv)
    overrides: dict[str, Any] = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set {item!r}: expected KEY=VALUE")
        overrides[key.strip()] = value.strip()
    try:
        cfg = load_config(args.config, profile=args.profile, overrides=overrides)
    except ConfigError as err:
        print(err, file=sys.stderr)
        return 2
    print(json.dumps({"loaded_from": list(cfg.loaded_from), **config_to_dict(cfg)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
