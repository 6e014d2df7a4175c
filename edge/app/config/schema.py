"""The schema of the runtime config: every section and key, its type, default, one-line
documentation and checks.

A key is a dataclass field declared with :func:`_f`: ``doc`` (what it means), ``choices``,
numeric bounds (``ge``/``gt``/``le``/``lt``), or a ``convert`` function for the few keys a type
hint cannot describe (execution providers, credential names, thresholds, sink tables).
:class:`RuntimeConfig` is the whole config; :func:`field_docs` lists every key with its
documentation; :func:`config_to_dict` turns a config back into plain data that loads to an equal
config.

Checking a table against these classes is the loader's job (:mod:`edge.app.config.load`); a
``convert`` function gets the loader's context (:class:`ConvertContext`) for nested tables.
"""

from __future__ import annotations

import dataclasses
import re
from bisect import bisect_right
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any, Optional, Protocol, Tuple, Union, get_type_hints

from edge.app.config.errors import _NOTHING, _FieldError
from edge.core.matching import DEFAULT_YAW_EDGES
from edge.shipped import SHIPPED_IDENTITY, SHIPPED_LANDMARKS

# The schema's dataclass fields say Optional[X], not X | None: their annotations are evaluated
# (typing.get_type_hints) to validate the TOML, and X | None does not evaluate on Python 3.9.
# ruff: noqa: UP045


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


class ConvertContext(Protocol):
    """What a field's ``convert`` function gets besides the value and its key: the loader's
    context (``edge.app.config.load._Context``), which checks a nested table against a schema class."""

    def build(self, cls: type, data: Any, prefix: str) -> Any: ...


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


# ----------------------------------------------------------------------------- sections


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


def _convert_providers(value: Any, key: str, ctx: ConvertContext) -> tuple[str, ...]:
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


def _convert_credential(value: Any, key: str, ctx: ConvertContext) -> str | None:
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


def _convert_thresholds(value: Any, key: str, ctx: ConvertContext) -> Union[str, Tuple[float, ...]]:
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
    stranger_rate: Optional[float] = _f(
        None,
        doc="open-set matching: accept a stranger at most about this often whatever the gallery's size "
        "(each pair's FAR becomes this / the number of templates; needs thresholds from_model_metadata "
        "calibrated with a FAR grid); unset: every pair at the calibrated FAR",
        gt=0,
        lt=1,
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


def _convert_sinks(value: Any, key: str, ctx: ConvertContext) -> tuple:
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
        sinks.append(ctx.build(SINKS[kind], item, where))
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


# ----------------------------------------------------------------------------- the schema as data


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = get_type_hints(cls)
    return _HINTS[cls]


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


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
