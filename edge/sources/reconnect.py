"""Keep a live source alive: reopen it with exponential backoff whenever it fails or ends.

Cameras get unplugged, Wi-Fi drops, an RTSP server reboots. A service that runs for months must
ride that out, so :class:`ReconnectingSource` turns every failure of the source it wraps into an
outage it reports (``health()``: state "reconnecting", outage seconds, reconnect counts, the
cause) instead of an exception in the frame loop. ``read()`` blocks through the outage and
returns the next frame once the source is back; only :meth:`ReconnectingSource.stop` ends it.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, replace
from typing import Any, Mapping

from edge.sources.base import Frame, FrameSource, SourceError, SourceUnavailableError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Backoff:
    """Delays between reopen attempts: ``initial * factor**attempt``, capped at ``max``, jittered.

    Jitter (a random factor in [1 - jitter, 1 + jitter]) keeps a fleet of devices that lost the same
    server from all knocking on it in the same instant when it comes back. Seconds throughout.
    """

    initial: float = 0.5
    factor: float = 2.0
    max: float = 30.0
    jitter: float = 0.2

    KEYS = ("initial", "factor", "max", "jitter")

    def __post_init__(self) -> None:
        for key in self.KEYS:
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"reconnect.{key}: expected a number, got {value!r}")
        if self.initial <= 0:
            raise ValueError(f"reconnect.initial: expected seconds > 0, got {self.initial}")
        if self.factor < 1:
            raise ValueError(f"reconnect.factor: expected >= 1, got {self.factor}")
        if self.max < self.initial:
            raise ValueError(f"reconnect.max: expected >= initial ({self.initial}), got {self.max}")
        if not 0 <= self.jitter < 1:
            raise ValueError(f"reconnect.jitter: expected a fraction in [0, 1), got {self.jitter}")

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before reopen attempt ``attempt`` (0 for the first one after a failure)."""
        # min() on the exponent first: factor**attempt overflows a float after ~1000 attempts.
        base = self.initial * self.factor ** min(attempt, 64)
        base = min(base, self.max)
        spread = (rng or random).uniform(-self.jitter, self.jitter)
        return min(base * (1.0 + spread), self.max)


def backoff_from_config(config: Mapping[str, Any] | None, where: str) -> tuple[Backoff, bool]:
    """A :class:`Backoff` and ``retry_first_open`` from a ``reconnect`` config table.

    Keys: initial, factor, max, jitter (seconds / fractions), retry_first_open (bool).
    """
    if config is None:
        return Backoff(), False
    if not isinstance(config, Mapping):
        raise ValueError(f"{where}.reconnect: expected a table of {', '.join(Backoff.KEYS)}, got {config!r}")
    known = (*Backoff.KEYS, "retry_first_open")
    unknown = sorted(set(config) - set(known))
    if unknown:
        raise ValueError(f"{where}.reconnect: unknown key '{unknown[0]}' (known: {', '.join(known)})")
    retry = config.get("retry_first_open", False)
    if not isinstance(retry, bool):
        raise ValueError(f"{where}.reconnect.retry_first_open: expected true or false, got {retry!r}")
    return Backoff(**{k: config[k] for k in Backoff.KEYS if k in config}), retry


class ReconnectingSource(FrameSource):
    """Wraps a live source; reopens it with :class:`Backoff` when a read fails or the stream ends.

    - ``open()`` opens the inner source once. If that fails it raises (a wrong device or URL is a
      clear error at start-up), unless ``retry_first_open``: then it starts in "reconnecting"
      (a network camera that is not up yet when the device boots). A missing dependency
      (:class:`SourceUnavailableError`) always raises: no retry can install a package.
    - ``read()`` never raises; it returns a frame, or None only after :meth:`stop`.
    - Frame indices are this wrapper's own, so they keep increasing across reconnects.
    - ``stop()`` wakes a backoff sleep at once and pokes the inner source, so SIGTERM is prompt.
    """

    def __init__(
        self,
        inner: FrameSource,
        backoff: Backoff | None = None,
        retry_first_open: bool = False,
        rng: random.Random | None = None,
    ):
        super().__init__(label=inner.label)
        self.inner = inner
        self.type_name = inner.type_name
        self.backoff = backoff or Backoff()
        self.retry_first_open = retry_first_open
        self._rng = rng or random.Random()
        self._inner_open = False
        self._attempt = 0
        self._reconnects = 0
        self._reconnect_attempts = 0
        self._outage_started: float | None = None
        self._outage_total = 0.0
        self._outages = 0

    def open(self) -> None:
        try:
            self.inner.open()
        except SourceUnavailableError:
            raise
        except Exception as exc:
            error = _describe(exc, self.label, "could not open")
            if not self.retry_first_open:
                raise SourceError(error) from exc
            self._lose(error)
            return
        self._inner_open = True
        self._set_state("streaming")

    def read(self) -> Frame | None:
        while not self.stopped:
            if self._inner_open:
                frame = self._read_inner()
                if frame is not None:
                    return self._deliver(frame)
                continue
            delay = self.backoff.delay(self._attempt, self._rng)
            self._attempt += 1
            # Event.wait, not time.sleep: stop() must end the wait at once (SIGTERM, shutdown).
            if self._stop_event.wait(delay):
                break
            self._reopen()
        self._close_inner()
        self._set_state("ended")
        return None

    def close(self) -> None:
        self._close_inner()
        self._finish_outage()
        self._set_state("ended")

    def stop(self) -> None:
        self._stop_event.set()
        self.inner.stop()

    def health(self) -> dict:
        health = self.inner.health()
        with self._lock:
            outage = self._outage_total
            if self._outage_started is not None:
                outage += time.monotonic() - self._outage_started
            health.update(
                type=self.type_name,
                source=self.label,
                state=self._state,
                frames=self._frames,
                reconnects=self._reconnects,
                reconnect_attempts=self._reconnect_attempts,
                outages=self._outages,
                outage_seconds=round(outage, 3),
            )
            # The most recent of the two: the outage cause, or a bad frame the inner source skipped.
            inner_error_at = health.get("last_error_at")
            if self._last_error is not None and (inner_error_at is None or self._last_error_at >= inner_error_at):
                health["last_error"] = self._last_error
                health["last_error_at"] = self._last_error_at
        return health

    # -- internals -----------------------------------------------------------------------------
    def _read_inner(self) -> Frame | None:
        try:
            frame = self.inner.read()
        except Exception as exc:  # never into the frame loop: every failure becomes an outage
            self._lose(_describe(exc, self.label, "read failed"))
            return None
        if frame is not None:
            return frame
        if not self.stopped:
            self._lose(f"{self.label}: stream ended")
        return None

    def _deliver(self, frame: Frame) -> Frame:
        with self._lock:
            if self._outage_started is not None:
                self._finish_outage()
                self._reconnects += 1
                log.info("%s: frames resumed (reconnect %d)", self.label, self._reconnects)
            self._attempt = 0
            index = self._next_index
            self._next_index += 1
            self._frames += 1
            self._state = "streaming"
        return replace(frame, index=index, source=self.label)

    def _lose(self, error: str) -> None:
        self._close_inner()
        with self._lock:
            if self._outage_started is None:
                self._outage_started = time.monotonic()
                self._outages += 1
                log.warning("%s: source lost, reconnecting: %s", self.label, error)
            self._state = "reconnecting"
        self._note_error(error)

    def _reopen(self) -> None:
        with self._lock:
            self._reconnect_attempts += 1
        try:
            self.inner.open()
        except Exception as exc:
            error = _describe(exc, self.label, "reopen failed")
            log.info("%s (attempt %d)", error, self._attempt)
            self._note_error(error)
            self._close_inner()
            return
        self._inner_open = True

    def _close_inner(self) -> None:
        self._inner_open = False
        try:
            self.inner.close()
        except Exception as exc:  # a device that is gone may fail to close too; nothing to do about it
            log.debug("%s: close failed: %s", self.label, exc)

    def _finish_outage(self) -> None:
        with self._lock:
            if self._outage_started is not None:
                self._outage_total += time.monotonic() - self._outage_started
                self._outage_started = None


def _describe(exc: BaseException, label: str, what: str) -> str:
    """One line for an exception: SourceErrors already name the source; others get the label added."""
    text = str(exc) or type(exc).__name__
    if isinstance(exc, SourceError) and label in text:
        return text
    return f"{label}: {what}: {type(exc).__name__}: {text}"
