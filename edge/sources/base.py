"""What every frame source yields (:class:`Frame`) and the interface it implements (:class:`FrameSource`).

A source is opened, read frame by frame and closed. ``read()`` returns ``None`` at the end of a
finite source (a folder, a video without ``loop``) or once :meth:`FrameSource.stop` was called.
Live sources (cameras, streams) are wrapped by :class:`edge.sources.reconnect.ReconnectingSource`,
which never raises into the frame loop; a raw source raises :class:`SourceError` when it fails.

``health()`` is safe to call from another thread (a health endpoint) while ``read()`` blocks.
"""

from __future__ import annotations

import abc
import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, ClassVar, Iterator
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import numpy as np

log = logging.getLogger(__name__)

# "idle": built, not opened yet; "streaming": delivering frames; "reconnecting": a live source lost
# its stream and is reopening it; "ended": a finite source is exhausted, or the source was stopped/closed.
STATES = ("idle", "streaming", "reconnecting", "ended")


class SourceError(RuntimeError):
    """A source could not be opened or stopped delivering; the message names the source and the cause."""


class SourceUnavailableError(SourceError):
    """A dependency the source needs is missing (a package, an OpenCV feature): retrying cannot help."""


def utc_now_iso() -> str:
    """Wall-clock time as ISO 8601 UTC with milliseconds, e.g. ``2026-05-09T07:35:25.123+00:00``."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


@dataclass(frozen=True, eq=False)
class Frame:
    """One image from a source.

    image: (H, W, 3) uint8, BGR channel order (OpenCV's).
    timestamp: ``time.monotonic()`` seconds when the frame was read: for intervals and latency,
        immune to clock changes. wall_time: the same moment as ISO 8601 UTC, for events and logs.
    index: 0, 1, 2, ... in delivery order; keeps increasing across reconnects and video loops.
    source: the source's label (credentials in URLs redacted).
    name: the file name, relative to the folder, for folder sources; the video's file name for
        video sources; None for live sources.
    """

    image: np.ndarray
    timestamp: float
    wall_time: str
    index: int
    source: str
    name: str | None = None

    def __post_init__(self) -> None:
        image = self.image
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            got = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
            raise ValueError(f"Frame.image: expected a BGR uint8 array of shape (H, W, 3), got {got}")

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])


def as_bgr(image: Any, where: str) -> np.ndarray:
    """``image`` as (H, W, 3) uint8 BGR: gray is expanded, a 4th (alpha/padding) channel dropped.

    The channel ORDER is not changed here: callers whose device gives RGB swap it themselves,
    because only they know what order the device delivers.
    """
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.size == 0:
        got = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise SourceError(f"{where}: expected a non-empty uint8 image, got {got}")
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim == 3 and image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    if image.ndim == 3 and image.shape[2] == 4:
        return np.ascontiguousarray(image[:, :, :3])
    if image.ndim == 3 and image.shape[2] == 3:
        return image
    raise SourceError(f"{where}: expected an image of shape (H, W), (H, W, 3) or (H, W, 4), got {image.shape}")


_SECRET_QUERY_KEYS = {"password", "pass", "pwd", "passwd", "token", "key", "auth", "secret", "apikey", "api_key"}


def redact_url(url: str) -> str:
    """``url`` with its password (and secret-looking query values) replaced by ``***``.

    Source labels end up in events, logs and the health endpoint; a camera password must not.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    netloc = parts.netloc
    if parts.password is not None:
        userinfo, _, host = netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:***@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(k.lower() in _SECRET_QUERY_KEYS for k, _ in pairs):
            query = urlencode([(k, "***" if k.lower() in _SECRET_QUERY_KEYS else v) for k, v in pairs], safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


class FrameSource(abc.ABC):
    """The interface of every source, and the bookkeeping they share (counters, state, frame stamping).

    Subclasses implement :meth:`open`, :meth:`read` and :meth:`close`; they build frames with
    :meth:`_emit` so timestamps, indices and counters are the same everywhere.
    """

    type_name: ClassVar[str] = "source"

    def __init__(self, label: str):
        self.label = label
        # Re-entrant: a signal handler runs on the main thread and may ask for health() while the
        # main thread holds the lock inside read().
        self._lock = threading.RLock()
        self._stop_event = threading.Event()
        self._state = "idle"
        self._frames = 0
        self._bad_frames = 0
        self._dropped_frames = 0
        self._next_index = 0
        self._last_error: str | None = None
        self._last_error_at: str | None = None

    # -- the interface -------------------------------------------------------------------------
    @abc.abstractmethod
    def open(self) -> None:
        """Acquire the device/stream/file; raises :class:`SourceError` naming the source when it cannot."""

    @abc.abstractmethod
    def read(self) -> Frame | None:
        """The next frame, or None at the end of the stream (or after :meth:`stop`)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the device/stream/file. Safe to call twice, and on a source that never opened."""

    def stop(self) -> None:
        """Ask the source to end: a blocked or later ``read()`` returns None as soon as it can.

        Only sets an event and pokes the device (no locks), so it is safe from a signal handler.
        """
        self._stop_event.set()
        self._interrupt()

    @property
    def stopped(self) -> bool:
        return self._stop_event.is_set()

    def health(self) -> dict:
        """A JSON-ready snapshot: state, counters and the last error (see :data:`STATES`)."""
        with self._lock:
            return {
                "type": self.type_name,
                "source": self.label,
                "state": self._state,
                "frames": self._frames,
                "bad_frames": self._bad_frames,
                "dropped_frames": self._dropped_frames,
                "reconnects": 0,
                "reconnect_attempts": 0,
                "outage_seconds": 0.0,
                "last_error": self._last_error,
                "last_error_at": self._last_error_at,
            }

    def __enter__(self) -> FrameSource:
        self.open()
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __iter__(self) -> Iterator[Frame]:
        while True:
            frame = self.read()
            if frame is None:
                return
            yield frame

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.label!r} {self._state}>"

    # -- for subclasses ------------------------------------------------------------------------
    def _interrupt(self) -> None:
        """Unblock a read in progress (e.g. shut a socket down); by default there is nothing to poke."""
        return None

    def _emit(self, image: np.ndarray, name: str | None = None) -> Frame:
        frame = Frame(
            image=image,
            timestamp=time.monotonic(),
            wall_time=utc_now_iso(),
            index=self._next_index,
            source=self.label,
            name=name,
        )
        with self._lock:
            self._next_index += 1
            self._frames += 1
            self._state = "streaming"
        return frame

    def _set_state(self, state: str) -> None:
        with self._lock:
            self._state = state

    def _note_error(self, message: str) -> None:
        with self._lock:
            self._last_error = message
            self._last_error_at = utc_now_iso()

    def _note_bad_frame(self, message: str) -> None:
        """Data arrived but is not a usable image: skipped, counted, reported, never fatal."""
        log.warning("%s: skipped a bad frame: %s", self.label, message)
        with self._lock:
            self._bad_frames += 1
        self._note_error(message)

    def _note_dropped(self, count: int = 1) -> None:
        """Reads that returned nothing while the stream stayed up."""
        with self._lock:
            self._dropped_frames += count
