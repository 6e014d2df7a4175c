"""A Jetson CSI camera: a GStreamer ``nvarguscamerasrc`` pipeline opened by OpenCV.

The pipeline keeps the frames in NVMM (GPU) memory through the ISP, converts to BGRx with the
hardware converter (``nvvidconv``, which also flips/rotates), and only then to BGR on the CPU.
``appsink drop=1 max-buffers=1`` hands over the newest frame and drops older ones, so a slow
pipeline sees the present rather than a growing queue.

The OpenCV pip wheels are built without GStreamer; on a Jetson use the JetPack OpenCV
(``apt install nvidia-opencv`` / python3-opencv) and do not let a pip opencv shadow it.
"""

from __future__ import annotations

import fractions
from typing import Any, Callable

import cv2

from edge.sources.capture import CaptureSource, require_opencv

# nvvidconv flip-method values.
FLIP_METHODS = {
    0: "none",
    1: "counterclockwise 90",
    2: "rotate 180",
    3: "clockwise 90",
    4: "horizontal flip",
    5: "upper-right diagonal flip",
    6: "vertical flip",
    7: "upper-left diagonal flip",
}


def _positive_int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"jetson_csi source: '{key}' must be a positive integer, got {value!r}")
    return value


def gstreamer_framerate(fps: float) -> str:
    """``fps`` as the fraction GStreamer caps want: 30 -> '30/1', 7.5 -> '15/2'."""
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or fps <= 0:
        raise ValueError(f"jetson_csi source: 'fps' must be a number > 0, got {fps!r}")
    fraction = fractions.Fraction(fps).limit_denominator(1001)
    return f"{fraction.numerator}/{fraction.denominator}"


def jetson_csi_pipeline(
    sensor_id: int = 0,
    width: int = 1280,
    height: int = 720,
    fps: float = 30,
    flip_method: int = 0,
    output_width: int | None = None,
    output_height: int | None = None,
) -> str:
    """The GStreamer pipeline text for CSI sensor ``sensor_id`` at width x height @ fps.

    ``output_width``/``output_height`` make ``nvvidconv`` scale in hardware (e.g. capture a 1080p
    sensor mode, deliver 640x360 to the detector) instead of resizing on the CPU.
    """
    if isinstance(sensor_id, bool) or not isinstance(sensor_id, int) or sensor_id < 0:
        raise ValueError(f"jetson_csi source: 'camera_index' (sensor-id) must be an integer >= 0, got {sensor_id!r}")
    for key, value in (("width", width), ("height", height)):
        _positive_int(value, key)
    framerate = gstreamer_framerate(fps)
    if flip_method not in FLIP_METHODS:
        raise ValueError(f"jetson_csi source: 'flip_method' must be 0..7 (nvvidconv), got {flip_method!r}")
    if (output_width is None) != (output_height is None):
        raise ValueError("jetson_csi source: give both 'output_width' and 'output_height', or neither")
    scaled = ""
    if output_width is not None:
        scaled = f"width={_positive_int(output_width, 'output_width')},"
        scaled += f"height={_positive_int(output_height, 'output_height')},"
    return (
        f"nvarguscamerasrc sensor-id={sensor_id} ! "
        f"video/x-raw(memory:NVMM),width={width},height={height},framerate={framerate} ! "
        f"nvvidconv flip-method={flip_method} ! "
        f"video/x-raw,{scaled}format=BGRx ! "
        "videoconvert ! video/x-raw,format=BGR ! "
        "appsink drop=1 max-buffers=1"
    )


def jetson_csi_source(
    sensor_id: int = 0,
    width: int = 1280,
    height: int = 720,
    fps: float = 30,
    flip_method: int = 0,
    output_width: int | None = None,
    output_height: int | None = None,
    pipeline: str | None = None,
    open_capture: Callable[[str], Any] | None = None,
    build_information: str | None = None,
) -> JetsonCsiSource:
    """A :class:`CaptureSource` on :func:`jetson_csi_pipeline`.

    ``open_capture(pipeline)`` replaces ``cv2.VideoCapture(pipeline, cv2.CAP_GSTREAMER)`` in tests;
    ``build_information`` replaces ``cv2.getBuildInformation()`` for the GStreamer check.
    ``pipeline``, when given, is used as it is (a device profile's own pipeline) instead of building one.
    """
    if pipeline is None:
        pipeline = jetson_csi_pipeline(sensor_id, width, height, fps, flip_method, output_width, output_height)
    elif "appsink" not in pipeline.rsplit("!", 1)[-1]:
        raise ValueError(f"jetson_csi source: 'pipeline' must end in appsink for OpenCV to read it, got {pipeline!r}")
    label = f"jetson_csi:{sensor_id}"

    def open_gstreamer():
        if open_capture is not None:
            return open_capture(pipeline)
        require_opencv(
            "GStreamer",
            f"jetson_csi source {label}",
            "use the JetPack OpenCV (apt install nvidia-opencv), not the pip wheel opencv-python-headless",
            build_information,
        )
        return cv2.VideoCapture(pipeline, cv2.CAP_GSTREAMER)

    return JetsonCsiSource(
        pipeline,
        "jetson_csi",
        label,
        open_gstreamer,
        open_hint="is the camera connected and nvargus-daemon running? try: gst-launch-1.0 nvarguscamerasrc ! fakesink",
    )


class JetsonCsiSource(CaptureSource):
    """A :class:`CaptureSource` that also shows its pipeline text (logs, health, debugging a device)."""

    def __init__(self, pipeline: str, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.pipeline = pipeline

    def health(self) -> dict:
        health = super().health()
        health["pipeline"] = self.pipeline
        return health
