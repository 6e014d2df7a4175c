"""Running under systemd: the sd_notify protocol, a progress-driven watchdog, clean SIGTERM.

We speak sd_notify ourselves (it is one datagram per message) rather than depend on the
``systemd`` Python package, which needs libsystemd headers to build and is absent on most
devices. With the unit's ``Type=notify``, systemd waits for ``READY=1`` before it calls the
service started; with ``WatchdogSec=``, it kills and restarts the service unless
``WATCHDOG=1`` arrives in time. :class:`Watchdog` only pings when the frame loop reports
progress, so a stage that hangs (a stuck camera read, a wedged inference call) stops the pings
and systemd restarts us; a timer thread pinging on its own would keep a hung service alive.

Also here, because it is how the service starts on a Jetson: :func:`choose_providers` keeps
the onnxruntime execution providers this machine really has, with a reason for each one
dropped, and :func:`credential_path` finds a systemd credential (``LoadCredential=``).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

# The name a log line shows (%(name)s) since before the module moved to edge/app: what an
# operator filters the journal by.
log = logging.getLogger("edge.service")

CPU_PROVIDER = "CPUExecutionProvider"
# Why a provider might be missing, for the logged reason (the common case on a Jetson is the
# PyPI onnxruntime wheel, which is CPU only, instead of NVIDIA's onnxruntime-gpu build).
_PROVIDER_HINTS = {
    "TensorrtExecutionProvider": "needs NVIDIA's onnxruntime-gpu build with TensorRT (JetPack) in place of onnxruntime",
    "CUDAExecutionProvider": "needs NVIDIA's onnxruntime-gpu build (JetPack) in place of onnxruntime",
}


# ----------------------------------------------------------------------------- sd_notify


def _notify_address(value: str) -> str | None:
    """``$NOTIFY_SOCKET`` -> a socket address: a path, or '@name' for Linux's abstract namespace."""
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None  # e.g. systemd 254's vsock: addresses (VMs), which a camera device never sees


def _one_line(value: Any) -> str:
    # A newline inside a value would start a new assignment: STATUS="x\nREADY=1" must not lie.
    return str(value).replace("\r", " ").replace("\n", " ")


def notify(*assignments: str, env: Mapping[str, str] | None = None, **fields: Any) -> bool:
    """Send one sd_notify message; True when it was sent.

    ``notify(READY=1, STATUS="watching /dev/video0")``, ``notify("WATCHDOG=1")``,
    ``notify(STOPPING=1)``; also ``EXTEND_TIMEOUT_USEC=...`` while a slow start (a TensorRT
    engine build) runs past the unit's TimeoutStartSec. Without ``$NOTIFY_SOCKET`` (not run
    by systemd, or Type= is not notify) this does nothing and returns False; a failed send is
    logged and returns False, never raises, so the frame loop does not die of it.
    """
    # A malformed call is a bug: refuse it even when no systemd is listening.
    lines = []
    for item in assignments:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"notify: expected KEY=VALUE, got {item!r}")
        lines.append(f"{key}={_one_line(value)}")
    lines += [f"{key}={_one_line(value)}" for key, value in fields.items()]
    if not lines:
        raise ValueError("notify: nothing to send")
    message = "\n".join(lines).encode("utf-8")
    env = os.environ if env is None else env
    target = env.get("NOTIFY_SOCKET")
    if not target:
        return False
    address = _notify_address(target)
    if address is None:
        log.warning("sd_notify: unsupported NOTIFY_SOCKET address %r; not notifying", target)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message)
    except OSError as err:
        log.warning("sd_notify: cannot send %r to %s: %s", message, target, err)
        return False
    return True


# ----------------------------------------------------------------------------- watchdog


class Watchdog:
    """Pings systemd's watchdog, but only from :meth:`beat`, which the frame loop calls per frame.

    ``timeout_s`` is the unit's WatchdogSec (``from_env`` reads it from ``$WATCHDOG_USEC``);
    pings go out at most every ``timeout_s / 2`` (systemd's advice), and only when a beat
    arrives: a loop that stops beating stops the pings, and systemd restarts the service
    ``timeout_s`` later. The loop should also beat while it waits out a source's reconnect
    backoff (in steps shorter than the timeout): an unplugged camera is an outage to report,
    not a hang to restart for.
    """

    def __init__(
        self,
        timeout_s: float | None,
        send: Callable[..., bool] = notify,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.timeout_s = timeout_s if timeout_s and timeout_s > 0 else None
        self.interval_s = self.timeout_s / 2 if self.timeout_s else None
        self._send = send
        self._clock = clock
        self._lock = threading.Lock()
        self.last_ping: float | None = None
        self.pings = 0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, enabled: bool = True, **kwargs: Any) -> Watchdog:
        """The watchdog systemd asked for (``$WATCHDOG_USEC``, for this process per ``$WATCHDOG_PID``).

        Disabled (beats do nothing) when ``enabled`` is False (config ``service.watchdog``),
        when the unit has no WatchdogSec, or when the variables were meant for another process.
        """
        env = os.environ if env is None else env
        timeout_s = None
        usec, pid = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
        if enabled and usec.isdigit() and (not pid or pid == str(os.getpid())):
            timeout_s = int(usec) / 1e6
        if "send" not in kwargs and env is not os.environ:
            kwargs["send"] = lambda *a, **f: notify(*a, env=env, **f)
        return cls(timeout_s, **kwargs)

    @property
    def enabled(self) -> bool:
        return self.timeout_s is not None

    def beat(self) -> bool:
        """Report progress (one processed frame); pings when half the timeout has passed. True if it pinged."""
        if self.interval_s is None:
            return False
        with self._lock:
            now = self._clock()
            if self.last_ping is not None and now - self.last_ping < self.interval_s:
                return False
            self.last_ping = now
        sent = self._send("WATCHDOG=1")
        if sent:
            self.pings += 1
        return sent


# ----------------------------------------------------------------------------- SIGTERM


def install_sigterm_handler(
    callback: Callable[[int], None],
    signals: Iterable[int] = (signal.SIGTERM, signal.SIGINT),
    notify_stopping: bool = True,
) -> Callable[[], None]:
    """Call ``callback(signum)`` on SIGTERM (systemctl stop) and SIGINT (Ctrl-C); returns an uninstaller.

    The callback should only ask the frame loop to stop (set an Event); the loop then flushes
    the sinks and closes the camera on its own thread. ``STOPPING=1`` goes to systemd at once,
    so ``systemctl status`` shows the service stopping. A second signal of the same kind means
    the clean stop is stuck: the default action runs (the process ends) instead of waiting for
    systemd's SIGKILL at TimeoutStopSec. Call from the main thread (Python's rule for signals).
    """
    signals = tuple(signals)
    previous = {signum: signal.getsignal(signum) for signum in signals}
    received: set[int] = set()

    def handler(signum: int, frame: Any) -> None:
        if signum in received:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        received.add(signum)
        log.info("received %s: stopping", signal.Signals(signum).name)
        if notify_stopping:
            notify(STOPPING=1, STATUS=f"stopping ({signal.Signals(signum).name})")
        callback(signum)

    for signum in signals:
        signal.signal(signum, handler)

    def uninstall() -> None:
        for signum, old in previous.items():
            signal.signal(signum, old if old is not None else signal.SIG_DFL)

    return uninstall


# ----------------------------------------------------------------------------- providers


def _available_providers() -> list[str]:
    try:
        import onnxruntime
    except ImportError:
        return []
    return list(onnxruntime.get_available_providers())


def choose_providers(
    requested: Sequence[str],
    available: Sequence[str] | None = None,
    options: Mapping[str, Mapping[str, str]] | None = None,
) -> tuple[list[str | tuple[str, dict[str, str]]], list[str]]:
    """The requested onnxruntime providers this machine has, in order, and why the others were dropped.

    Returns ``(providers, reasons)``: ``providers`` for ``load_model(..., providers=)`` (a
    provider with ``options``, e.g. TensorRT's engine cache, as ``(name, options)``), always
    ending in the CPU provider, which runs whatever the others cannot; ``reasons`` one
    sentence per provider dropped, each also logged as a warning. ``available`` defaults to
    ``onnxruntime.get_available_providers()``.
    """
    available = list(_available_providers() if available is None else available)
    options = options or {}
    kept: list[str] = []
    reasons: list[str] = []
    for name in requested:
        if name in kept:
            continue
        if name not in available:
            hint = _PROVIDER_HINTS.get(name, "not built into this onnxruntime")
            offered = ", ".join(available) or "nothing (onnxruntime is not installed)"
            reasons.append(f"{name} dropped: this onnxruntime offers {offered}; {hint}")
            continue
        kept.append(name)
    if CPU_PROVIDER not in kept:
        # TensorRT and CUDA hand the nodes they cannot run to the next provider; CPU runs them
        # all, so it is always last, even when the config left it out.
        kept.append(CPU_PROVIDER)
    wanted = [name for name in requested if name != CPU_PROVIDER]
    if wanted and kept == [CPU_PROVIDER]:
        reasons.append(f"falling back to {CPU_PROVIDER}: none of {', '.join(wanted)} is available")
    for reason in reasons:
        log.warning("onnxruntime providers: %s", reason)
    providers: list[str | tuple[str, dict[str, str]]] = [
        (name, dict(options[name])) if options.get(name) else name for name in kept
    ]
    return providers, reasons


# ----------------------------------------------------------------------------- credentials


def credential_path(name: str, env: Mapping[str, str] | None = None) -> Path | None:
    """Where systemd put credential ``name`` (``LoadCredential=name:/etc/...``), or None.

    The unit's LoadCredential copies a root-only file (the gallery key) into a private folder
    that only this service can read, named by ``$CREDENTIALS_DIRECTORY``; systemd older than
    247 (JetPack 4 and 5) has no credentials, and the config's ``gallery.key_file`` is used.
    """
    env = os.environ if env is None else env
    folder = env.get("CREDENTIALS_DIRECTORY")
    if not folder:
        return None
    path = Path(folder) / name
    return path if path.is_file() else None


def gallery_key(key_credential: str | None, key_file: Path | None, env: Mapping[str, str] | None = None):
    """The gallery key from the systemd credential (tried first) or the key file; None when
    neither is configured. A configured key that cannot be read is an error (KeyFileError),
    never a silent fall back to a plain gallery."""
    from edge.storage.keys import KeyFileError, load_key

    if key_credential:
        path = credential_path(key_credential, env)
        if path is not None:
            return load_key(path)
        if key_file is None:
            raise KeyFileError(
                f"gallery.key_credential {key_credential!r}: no such credential ($CREDENTIALS_DIRECTORY unset or "
                "without it; LoadCredential= in the unit) and no gallery.key_file to fall back on"
            )
    if key_file is not None:
        return load_key(key_file)
    return None

