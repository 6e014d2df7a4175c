"""The Raspberry Pi camera through picamera2 (libcamera), imported only when this source opens.

Colour order: picamera2 names its formats like DRM/libcamera, by the order of a little-endian
32-bit word, so the BYTES in memory are reversed from the name. "RGB888" arrays are [B, G, R]
per pixel, exactly OpenCV's BGR: we request it and use it without a copy. "BGR888" arrays are
[R, G, B] and are swapped to BGR; "XRGB8888" is [B, G, R, X] and loses X; "XBGR8888" is
[R, G, B, X] and loses X and is swapped.

picamera2 needs libcamera's Python bindings, which Raspberry Pi OS ships as an apt package
(python3-libcamera); a virtualenv must be made with --system-site-packages to see them.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import numpy as np

from edge.sources.base import Frame, FrameSource, SourceError, SourceUnavailableError, as_bgr

PICAMERA2_MISSING = "picamera2 is not installed (pip install poseface-edge[pi] on Raspberry Pi OS)"

# format -> (channels in the array, whether the first three are R, G, B and need swapping to B, G, R)
PICAMERA_FORMATS = {
    "RGB888": (3, False),
    "BGR888": (3, True),
    "XRGB8888": (4, False),
    "XBGR8888": (4, True),
}


def import_picamera2() -> Callable[..., Any]:
    """The ``Picamera2`` class, or :class:`SourceUnavailableError` with the install command."""
    try:
        from picamera2 import Picamera2
    except ImportError as exc:
        raise SourceUnavailableError(PICAMERA2_MISSING) from exc
    return Picamera2


def picamera_array_to_bgr(array: np.ndarray, pixel_format: str, where: str = "picamera2") -> np.ndarray:
    """A picamera2 ``capture_array`` result in ``pixel_format`` as (H, W, 3) uint8 BGR (see module doc)."""
    channels, swap = PICAMERA_FORMATS[pixel_format]
    if not isinstance(array, np.ndarray) or array.ndim != 3 or array.shape[2] != channels:
        shape = getattr(array, "shape", type(array).__name__)
        raise SourceError(f"{where}: a {pixel_format} frame should have shape (H, W, {channels}), got {shape}")
    image = array[:, :, :3]
    if swap:
        image = image[:, :, ::-1]
    # Picamera2 may hand out a view of a buffer it reuses; a contiguous copy is ours to keep.
    return np.ascontiguousarray(as_bgr(image, where))


class Picamera2Source(FrameSource):
    """A Raspberry Pi camera module (CSI) via picamera2.

    ``camera_factory(camera_num)`` makes the camera object; by default it is ``Picamera2`` (imported
    here, lazily), and tests pass a fake. ``capture_timeout`` bounds a capture so a camera that
    stops delivering (ribbon cable, ISP fault) becomes a SourceError and a reconnect, not a hang.
    """

    type_name = "picamera2"

    def __init__(
        self,
        camera_num: int = 0,
        width: int = 1280,
        height: int = 720,
        fps: float | None = None,
        pixel_format: str = "RGB888",
        capture_timeout: float = 5.0,
        camera_factory: Callable[[int], Any] | None = None,
    ):
        if pixel_format not in PICAMERA_FORMATS:
            raise ValueError(
                f"picamera2 source: 'format' must be one of {', '.join(PICAMERA_FORMATS)}, got {pixel_format!r}"
            )
        super().__init__(label=f"picamera2:{camera_num}")
        self.camera_num = int(camera_num)
        self.size = (int(width), int(height))
        self.fps = fps
        self.pixel_format = pixel_format
        self.capture_timeout = float(capture_timeout)
        self._camera_factory = camera_factory
        self._camera: Any = None
        self._bounded_wait = False

    def open(self) -> None:
        self.close()
        factory = self._camera_factory or import_picamera2()
        try:
            camera = factory(self.camera_num)
        except Exception as exc:
            raise SourceError(
                f"picamera2 source camera {self.camera_num}: cannot open it ({type(exc).__name__}: {exc}); "
                "is it connected and enabled? see: rpicam-hello --list-cameras"
            ) from exc
        try:
            controls = {"FrameRate": float(self.fps)} if self.fps else {}
            config = camera.create_video_configuration(
                main={"size": self.size, "format": self.pixel_format}, controls=controls
            )
            camera.configure(config)
            camera.start()
        except Exception as exc:
            _close_quietly(camera)
            raise SourceError(
                f"picamera2 source camera {self.camera_num}: cannot start {self.size[0]}x{self.size[1]} "
                f"{self.pixel_format}: {type(exc).__name__}: {exc}"
            ) from exc
        self._camera = camera
        self._bounded_wait = _wait_takes_timeout(camera)
        self._set_state("streaming")

    def _capture(self) -> np.ndarray:
        camera = self._camera
        if self._bounded_wait:
            # Asynchronous capture + wait(timeout): a bounded wait (Picamera2 raises TimeoutError).
            job = camera.capture_array("main", wait=False)
            return camera.wait(job, timeout=self.capture_timeout)
        return camera.capture_array("main")  # older picamera2: no timeout to give, it blocks

    def read(self) -> Frame | None:
        if self._camera is None:
            raise SourceError(f"picamera2 source camera {self.camera_num}: read() before open()")
        if self.stopped:
            return None
        try:
            array = self._capture()
        except TimeoutError as exc:
            raise SourceError(
                f"picamera2 source camera {self.camera_num}: no frame within {self.capture_timeout:g} s"
            ) from exc
        except Exception as exc:
            raise SourceError(
                f"picamera2 source camera {self.camera_num}: capture failed: {type(exc).__name__}: {exc}"
            ) from exc
        return self._emit(picamera_array_to_bgr(array, self.pixel_format, f"picamera2 source camera {self.camera_num}"))

    def close(self) -> None:
        camera, self._camera = self._camera, None
        if camera is not None:
            _close_quietly(camera)
        if self._state != "idle":
            self._set_state("ended")


def _wait_takes_timeout(camera: Any) -> bool:
    """Whether ``camera.wait(job, timeout=...)`` exists: older picamera2 releases had no timeout there."""
    try:
        return "timeout" in inspect.signature(camera.wait).parameters
    except (AttributeError, TypeError, ValueError):
        return False


def _close_quietly(camera: Any) -> None:
    # A camera that failed may fail to stop as well; it must still be closed so libcamera releases it.
    for method in ("stop", "close"):
        try:
            getattr(camera, method)()
        except Exception:
            pass
