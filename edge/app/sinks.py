"""Where events go: standard output, a JSON-lines file, an MQTT broker, a webhook.

Every sink has ``emit(event)``, ``counters()`` and ``close(timeout)``. ``emit`` never raises
for a delivery problem and never blocks the frame loop for long:

- local sinks (stdout, JSON-lines file) write synchronously: one line, one ``write`` call;
- network sinks (MQTT, webhook) put the event on a bounded queue drained by one background
  thread per sink, which sends it with retries and exponential backoff. When the queue is full
  the OLDEST queued event is dropped: on a link that is down, the newest events are the ones
  still worth delivering when it comes back.

Counters per sink: ``sent`` (delivered), ``dropped`` (pushed out of a full queue, or still
queued when the sink was closed), ``failed`` (given up after the retries, or refused by the
receiver), ``queued`` (waiting now).

Sinks are chosen by a ``type`` key, like detectors: ``build_sink({"type": "webhook", "url":
...})``; the keys are those of the ``[[events.sinks]]`` tables of the runtime config.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import ssl
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from edge import __version__
from edge.app.homeassistant import DEFAULT_DISCOVERY_PREFIX, OFFLINE, ONLINE, HomeAssistant, HomeAssistantError
from edge.core.events import Event

# The name a log line shows (%(name)s) since before the module moved to edge/app: what an
# operator filters the journal by.
log = logging.getLogger("edge.sinks")

DEFAULT_QUEUE_SIZE = 1000


class SinkError(ValueError):
    """A sink cannot be built as configured; the message names the sink and the field."""


class SendError(RuntimeError):
    """One delivery attempt failed in a way that may succeed later (retried)."""


class PermanentSendError(RuntimeError):
    """The receiver refused the event; sending it again would be refused again (not retried)."""


@dataclass(frozen=True)
class SinkCounters:
    sent: int = 0
    dropped: int = 0
    failed: int = 0
    queued: int = 0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Backoff:
    """Wait before retry ``k`` (0-based): min(max_s, initial_s * factor**k), spread by +/- jitter.

    The jitter (a fraction) keeps many devices that lost the same server from retrying in step.
    """

    initial_s: float = 0.5
    factor: float = 2.0
    max_s: float = 30.0
    jitter: float = 0.1

    def __post_init__(self) -> None:
        if not (self.initial_s >= 0 and self.factor >= 1 and self.max_s >= self.initial_s and 0 <= self.jitter < 1):
            raise SinkError(
                f"backoff: expected initial_s >= 0, factor >= 1, max_s >= initial_s, 0 <= jitter < 1: {self}"
            )

    def delay(self, retry: int, rng: random.Random | None = None) -> float:
        base = min(self.max_s, self.initial_s * self.factor ** min(retry, 64))
        spread = (rng or random).uniform(-self.jitter, self.jitter)
        return max(0.0, base * (1.0 + spread))


def _is_power_of_ten(n: int) -> bool:
    while n >= 10 and n % 10 == 0:
        n //= 10
    return n == 1


class Sink:
    """The interface: ``emit``, ``counters``, ``close``. ``name`` identifies the sink in logs and metrics."""

    name = "sink"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sent = 0
        self._dropped = 0
        self._failed = 0

    def emit(self, event: Event) -> None:
        raise NotImplementedError

    def counters(self) -> SinkCounters:
        with self._lock:
            return SinkCounters(sent=self._sent, dropped=self._dropped, failed=self._failed)

    def close(self, timeout: float = 5.0) -> None:
        pass

    def _count_failure(self, err: BaseException) -> None:
        with self._lock:
            self._failed += 1
            failed = self._failed
        # Logged at 1, 10, 100, ... failures: a sink that is down must not flood the journal.
        if _is_power_of_ten(failed):
            log.warning("%s: event not delivered (%d failed so far): %s", self.name, failed, err)

    def __enter__(self) -> Sink:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ----------------------------------------------------------------------------- local sinks


class StdoutSink(Sink):
    """One JSON line per event on standard output (or ``stream``), flushed at once."""

    name = "stdout"

    def __init__(self, stream=None):
        super().__init__()
        self._stream = stream

    def emit(self, event: Event) -> None:
        line = event.to_json() + "\n"
        # sys.stdout looked up per call: tests and daemons replace it after the sink is built.
        stream = self._stream if self._stream is not None else sys.stdout
        try:
            with self._lock:
                stream.write(line)
                stream.flush()
                self._sent += 1
        except (OSError, ValueError) as err:  # a closed pipe (| head) or a closed stream
            self._count_failure(err)


class JsonLinesFileSink(Sink):
    """Append one JSON line per event to ``path``.

    The file is opened with O_APPEND and each line goes out in a single ``os.write`` of the
    whole encoded line (no userspace buffer to flush), so concurrent writers, threads or other
    processes, never interleave inside a line, and a reader that consumes complete lines (up
    to the last newline) never sees a torn one. ``fsync=True`` also syncs each line to the disk
    (survives a power cut; costs a disk flush per event).

    A process killed with SIGKILL inside that ``os.write`` can still leave the start of a line
    (Linux stops a write to a regular file at a page boundary once a fatal signal is pending).
    So on opening, a last line without its newline is cut off (logged): the event it began was
    never stored, and every line before it stays intact, with the next line starting clean.
    """

    def __init__(self, path: os.PathLike | str, fsync: bool = False):
        super().__init__()
        self.path = Path(path)
        self.fsync = bool(fsync)
        self.name = f"jsonl:{self.path}"
        if not self.path.parent.is_dir():
            raise SinkError(f"jsonl sink: path {self.path}: folder {self.path.parent} does not exist")
        try:
            self._fd = os.open(str(self.path), os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
            self.torn_bytes_dropped = _drop_torn_tail(self._fd)
        except OSError as err:
            raise SinkError(f"jsonl sink: path {self.path}: cannot open for appending ({err.strerror})") from None
        if self.torn_bytes_dropped:
            log.warning(
                "jsonl sink: %s: cut off a partial last line (%d bytes) left by a writer that was killed",
                self.path,
                self.torn_bytes_dropped,
            )

    def emit(self, event: Event) -> None:
        data = (event.to_json() + "\n").encode("utf-8")
        try:
            with self._lock:
                if self._fd < 0:
                    raise ValueError("sink is closed")
                written = os.write(self._fd, data)
                # A short write happens only when the disk is full or on a signal; finish the line
                # rather than leave half of it (the lock keeps our own threads out meanwhile).
                while written < len(data):
                    written += os.write(self._fd, data[written:])
                if self.fsync:
                    os.fsync(self._fd)
                self._sent += 1
        except (OSError, ValueError) as err:
            self._count_failure(err)

    def close(self, timeout: float = 5.0) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


def _drop_torn_tail(fd: int, chunk: int = 65536) -> int:
    """Truncate an open file after its last newline (nothing if it ends with one, or is empty);
    returns the number of bytes cut off."""
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return 0
    end = size
    while end > 0:
        start = max(0, end - chunk)
        at = os.pread(fd, end - start, start).rfind(b"\n")
        if at >= 0:
            keep = start + at + 1
            break
        end = start
    else:
        keep = 0
    os.ftruncate(fd, keep)
    return size - keep


# ----------------------------------------------------------------------------- queued sinks


class QueuedSink(Sink):
    """A sink whose deliveries run on a background thread, from a bounded drop-oldest queue.

    Subclasses implement ``_send(payload: str)``: raise :class:`PermanentSendError` for a
    refusal, any other exception for a failure worth retrying. ``retries`` is the number of
    further attempts after the first.
    """

    def __init__(
        self,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        retries: int = 3,
        backoff: Backoff | None = None,
    ):
        super().__init__()
        if isinstance(queue_size, bool) or not isinstance(queue_size, int) or queue_size < 1:
            raise SinkError(f"{self.name}: queue_size: expected an integer >= 1, got {queue_size!r}")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise SinkError(f"{self.name}: retries: expected an integer >= 0, got {retries!r}")
        self.queue_size = queue_size
        self.retries = retries
        self.backoff = backoff or Backoff()
        self._queue: deque = deque()
        self._wake = threading.Condition(self._lock)
        self._in_flight = False
        self._closing = False
        # Set when close() runs out of time: backoff waits end at once and the queue is dropped.
        self._abort = threading.Event()
        self._rng = random.Random()
        self._thread = threading.Thread(target=self._drain, name=f"sink {self.name}", daemon=True)
        self._thread.start()

    def emit(self, event: Event) -> None:
        payload = event.to_json()
        with self._wake:
            if self._closing:
                self._dropped += 1
                return
            if len(self._queue) >= self.queue_size:
                self._queue.popleft()
                self._dropped += 1
            self._queue.append(payload)
            self._wake.notify()

    def counters(self) -> SinkCounters:
        with self._lock:
            return SinkCounters(self._sent, self._dropped, self._failed, len(self._queue) + int(self._in_flight))

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every queued event was delivered or given up; False if ``timeout`` ran out."""
        deadline = time.monotonic() + timeout
        with self._wake:
            while self._queue or self._in_flight:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._wake.wait(left)
        return True

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what is queued for up to ``timeout`` seconds, then drop (and count) the rest."""
        with self._wake:
            if self._closing:
                return  # closed before (a `with` block and an explicit close, say)
            self._closing = True
            self._wake.notify_all()
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._abort.set()
            # An attempt in progress ends by its own timeout; the thread is a daemon, so a
            # stuck one never holds the process at exit.
            self._thread.join(0.5)
        with self._lock:
            self._dropped += len(self._queue)
            self._queue.clear()
        self._close_transport()

    def _close_transport(self) -> None:
        pass

    def _drain(self) -> None:
        while True:
            with self._wake:
                while not self._queue and not self._closing:
                    self._wake.wait()
                if not self._queue or self._abort.is_set():
                    return
                payload = self._queue.popleft()
                self._in_flight = True
            try:
                self._deliver(payload)
            finally:
                with self._wake:
                    self._in_flight = False
                    self._wake.notify_all()

    def _deliver(self, payload: str) -> None:
        error: BaseException | None = None
        for attempt in range(self.retries + 1):
            if attempt and self._abort.wait(self.backoff.delay(attempt - 1, self._rng)):
                break
            try:
                self._send(payload)
            except PermanentSendError as err:
                error = err
                break
            except Exception as err:  # noqa: BLE001 - any transport error is worth a retry
                error = err
                continue
            with self._lock:
                self._sent += 1
            return
        self._count_failure(error or SendError("closed before delivery"))

    def _send(self, payload: str) -> None:
        raise NotImplementedError


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """A redirected POST would be replayed as a GET without its body: treat it as a refusal."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


class WebhookSink(QueuedSink):
    """POST each event as ``application/json`` to ``url``.

    TLS is always verified (system CAs, or ``ca_file`` for a private CA). 2xx is delivered;
    408, 425, 429, 5xx and network errors are retried with backoff; any other status (a 4xx, or
    a redirect) is a refusal, counted as failed without retrying. ``proxies`` None follows the
    environment (http_proxy, no_proxy); ``{}`` connects directly.
    """

    RETRY_STATUS = (408, 425, 429)

    def __init__(
        self,
        url: str,
        timeout_s: float = 5.0,
        retries: int = 3,
        ca_file: os.PathLike | str | None = None,
        headers: Mapping[str, str] | None = None,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        backoff: Backoff | None = None,
        proxies: Mapping[str, str] | None = None,
    ):
        parts = urllib.parse.urlsplit(url) if isinstance(url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise SinkError(f"webhook sink: url: expected an http:// or https:// URL with a host, got {url!r}")
        if not (isinstance(timeout_s, (int, float)) and timeout_s > 0):
            raise SinkError(f"webhook sink: timeout_s: expected seconds > 0, got {timeout_s!r}")
        self.url = url
        self.timeout_s = float(timeout_s)
        # The name leaves out the query and any user:password, which may hold secrets.
        self.name = f"webhook:{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}{parts.path}"
        handlers: list = [_RefuseRedirects()]
        if parts.scheme == "https":
            try:
                context = ssl.create_default_context(cafile=None if ca_file is None else str(ca_file))
            except (OSError, ssl.SSLError) as err:
                raise SinkError(f"webhook sink: ca_file {ca_file}: cannot load ({err})") from None
            handlers.append(urllib.request.HTTPSHandler(context=context))
        if proxies is not None:
            handlers.append(urllib.request.ProxyHandler(dict(proxies)))
        self._opener = urllib.request.build_opener(*handlers)
        self._headers = {"Content-Type": "application/json", "User-Agent": f"poseface-edge/{__version__}"}
        self._headers.update(headers or {})
        super().__init__(queue_size=queue_size, retries=retries, backoff=backoff)

    def _send(self, payload: str) -> None:
        request = urllib.request.Request(self.url, data=payload.encode("utf-8"), headers=self._headers, method="POST")
        try:
            with self._opener.open(request, timeout=self.timeout_s) as response:
                response.read()
                status = response.status
        except urllib.error.HTTPError as err:
            err.close()
            if err.code >= 500 or err.code in self.RETRY_STATUS:
                raise SendError(f"{self.name}: HTTP {err.code}") from None
            raise PermanentSendError(f"{self.name}: HTTP {err.code} (refused, not retried)") from None
        if not 200 <= status < 300:
            raise PermanentSendError(f"{self.name}: HTTP {status} (refused, not retried)")


class MqttSink(QueuedSink):
    """Publish each event to ``topic`` on an MQTT broker (paho-mqtt >= 2, the ``mqtt`` extra).

    paho's own network thread connects and reconnects in the background; our queue thread
    publishes while connected and, for QoS >= 1, waits up to ``timeout_s`` for the broker's
    acknowledgement before counting the event sent.

    Availability: the connection's last will is ``offline`` (retained, QoS 1) on
    ``poseface/<client_id>/availability``; ``online`` is published there on every connection and
    ``offline`` again on a clean close, so subscribers (Home Assistant among them) see a runner
    that died as gone. ``homeassistant=True`` also publishes Home Assistant MQTT discovery
    configs under ``discovery_prefix`` for each camera the runner announces, and keeps their
    states current from the events; with it off, those retained topics are cleared when the sink
    connects (see :mod:`edge.app.homeassistant`).

    ``client`` replaces the paho client (tests, or a client configured elsewhere): it needs
    ``is_connected()`` and ``publish(topic, payload, qos)`` returning an object with ``rc``,
    ``wait_for_publish(timeout)`` and ``is_published()``; it is used as it is (no last will,
    no availability), and Home Assistant messages need its ``publish`` to take ``retain``.
    """

    def __init__(
        self,
        host: str,
        port: int = 1883,
        topic: str = "poseface/events",
        qos: int = 1,
        client_id: str = "poseface-edge",
        tls: bool = False,
        ca_file: os.PathLike | str | None = None,
        username: str | None = None,
        password_file: os.PathLike | str | None = None,
        keepalive: int = 60,
        timeout_s: float = 5.0,
        retries: int = 3,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        backoff: Backoff | None = None,
        homeassistant: bool = False,
        discovery_prefix: str = DEFAULT_DISCOVERY_PREFIX,
        client: Any = None,
    ):
        if not isinstance(host, str) or not host:
            raise SinkError(f"mqtt sink: host: expected a host name or address, got {host!r}")
        if not isinstance(topic, str) or not topic or any(c in topic for c in "+#\0"):
            raise SinkError(f"mqtt sink: topic: expected a topic name without wildcards (+, #), got {topic!r}")
        if qos not in (0, 1, 2):
            raise SinkError(f"mqtt sink: qos: expected 0, 1 or 2, got {qos!r}")
        if not isinstance(client_id, str) or not client_id.strip():
            raise SinkError(f"mqtt sink: client_id: expected a non-empty client id, got {client_id!r}")
        if not isinstance(homeassistant, bool):
            raise SinkError(f"mqtt sink: homeassistant: expected true or false, got {homeassistant!r}")
        try:
            self._ha = HomeAssistant(client_id, discovery_prefix, enabled=homeassistant, qos=max(qos, 1))
        except HomeAssistantError as err:
            raise SinkError(f"mqtt sink: {err}") from None
        self.topic = topic
        self.qos = qos
        self.timeout_s = float(timeout_s)
        self.homeassistant = homeassistant
        self.availability_topic = self._ha.availability_topic
        self.name = f"mqtt:{host}:{port}/{topic}"
        # Held while Home Assistant states are computed and published, by the frame loop (emit)
        # and by paho's thread (on connect), so a newer state is never published before an older one.
        self._ha_lock = threading.RLock()  # re-entrant: paho may call back on the publishing thread
        self._refusal: str | None = None
        self._owns_client = client is None
        # True from our on_connect (which publishes everything) until the connection ends: paho
        # says "connected" a moment before on_connect runs, and publishing in that moment too
        # would send the same states twice. A client passed in has no callbacks: always live.
        self._live = not self._owns_client
        password = None
        if client is None and password_file is not None:
            try:
                password = Path(password_file).read_text(encoding="utf-8").rstrip("\r\n")
            except OSError as err:
                raise SinkError(f"mqtt sink: password_file {password_file}: cannot read ({err.strerror})") from None
        self._client = client
        super().__init__(queue_size=queue_size, retries=retries, backoff=backoff)
        if client is None:
            # Made last: its thread may call _on_connect before _paho_client even returns, and
            # that needs everything above (our on_connect publishes through the client it is given).
            will = (self.availability_topic, OFFLINE)
            callbacks = {"on_connect": self._on_connect, "on_disconnect": self._on_disconnect}
            try:
                self._client = _paho_client(
                    host, port, client_id, tls, ca_file, username, password, keepalive, will, callbacks
                )
            except BaseException:
                with self._wake:  # end the queue thread started above: this sink never existed
                    self._closing = True
                    self._wake.notify_all()
                raise

    @property
    def connected(self) -> bool:
        """Whether the client is connected to the broker now and has published what a connection
        starts with (availability, Home Assistant's configs and states)."""
        return bool(self._live and self._client.is_connected())

    def emit(self, event: Event) -> None:
        super().emit(event)
        if self.homeassistant and not self._closing:
            with self._ha_lock:
                messages = self._ha.update(event)
                if messages and self._live and self._client.is_connected():
                    self._publish_all(messages)

    def announce_camera(self, label: str) -> None:
        """A camera the runner serves: its discovery configs and states (or, with Home Assistant
        off, the clearing of any it had), now if connected, else on connection."""
        with self._ha_lock:
            messages = self._ha.add_camera(label)
            if messages and self._live and self._client.is_connected():
                self._publish_all(messages)

    def remove_homeassistant(self, labels: Sequence[str], timeout: float) -> int:
        """Clear the retained discovery configs and states of ``labels`` (empty retained payloads)
        and wait for the broker to acknowledge each; the number of topics cleared. Raises
        :class:`SendError` when the broker is not reached or does not acknowledge in ``timeout``."""
        deadline = time.monotonic() + timeout
        while not self.connected:
            if time.monotonic() >= deadline:
                why = f" (refused: {self._refusal})" if self._refusal else ""
                raise SendError(f"{self.name}: not connected to the broker within {timeout:g} s{why}")
            time.sleep(0.05)
        infos = [
            self._client.publish(m.topic, m.payload, qos=m.qos, retain=True)
            for label in labels
            for m in self._ha.clear_messages(label)
        ]
        for info in infos:
            info.wait_for_publish(timeout=max(0.0, deadline - time.monotonic()))
            if not info.is_published():
                raise SendError(f"{self.name}: no acknowledgement within {timeout:g} s")
        return len(infos)

    def _publish_all(self, messages, client=None) -> None:
        """Publish retained messages now (through ``client``, default ours); never raises (emit
        must not): what is lost here is published again on the next connection."""
        client = client if client is not None else self._client
        try:
            for m in messages:
                info = client.publish(m.topic, m.payload, qos=m.qos, retain=m.retain)
                if info.rc != 0:  # the connection went away meanwhile
                    log.debug("%s: %s not published now (paho rc %s)", self.name, m.topic, info.rc)
                    return
        except Exception as err:  # noqa: BLE001 - a client that cannot publish must not stop the frame loop
            log.warning("%s: Home Assistant message not published: %s: %s", self.name, type(err).__name__, err)

    def _on_connect(self, client, userdata, flags, reason_code, properties=None) -> None:
        """paho's callback (its network thread): availability, then Home Assistant's messages."""
        try:
            if getattr(reason_code, "is_failure", False):
                reason = str(reason_code)
                if reason != self._refusal:  # once per reason, not at every reconnection attempt
                    log.warning("%s: the broker refused the connection: %s", self.name, reason)
                self._refusal = reason
                return
            if self._refusal is not None:
                log.info("%s: connected", self.name)
            self._refusal = None
            with self._ha_lock:
                if self._closing:  # close() has said offline, or is about to: say nothing after it
                    return
                client.publish(self.availability_topic, ONLINE, qos=1, retain=True)
                self._publish_all(self._ha.connect_messages(), client)
                self._live = True
        except Exception as err:  # noqa: BLE001 - an exception here would end paho's network thread
            log.warning("%s: after connecting: %s: %s", self.name, type(err).__name__, err)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties=None) -> None:
        with self._ha_lock:
            self._live = False

    def _send(self, payload: str) -> None:
        if not self._client.is_connected():
            raise SendError(f"{self.name}: not connected to the broker")
        info = self._client.publish(self.topic, payload.encode("utf-8"), qos=self.qos)
        if info.rc != 0:
            raise SendError(f"{self.name}: publish failed (paho rc {info.rc})")
        if self.qos > 0:
            info.wait_for_publish(timeout=self.timeout_s)
            if not info.is_published():
                raise SendError(f"{self.name}: no acknowledgement within {self.timeout_s:g} s")

    def _close_transport(self) -> None:
        if self._owns_client:
            try:
                info = None
                with self._ha_lock:  # never between an on_connect's "online" and its states
                    if self._live and self._client.is_connected():
                        # A clean disconnect does not fire the last will: say offline ourselves.
                        info = self._client.publish(self.availability_topic, OFFLINE, qos=1, retain=True)
                    self._live = False
                if info is not None:  # waited for outside the lock: paho's thread may need it meanwhile
                    info.wait_for_publish(timeout=min(self.timeout_s, 5.0))
            except Exception as err:  # noqa: BLE001 - closing must not raise for a delivery problem
                log.debug("%s: offline not published: %s", self.name, err)
            self._client.disconnect()
            self._client.loop_stop()


def _paho_client(host, port, client_id, tls, ca_file, username, password, keepalive, will=None, callbacks=None):
    """A paho-mqtt 2 client that connects (and reconnects) on its own network thread.

    ``will``: (topic, payload) the broker publishes, retained at QoS 1, if the connection is lost
    without a clean disconnect; ``callbacks``: paho (version 2) callbacks by attribute name
    (``on_connect``, ...), set before the first connection so that none is missed.
    """
    try:
        import paho.mqtt.client as mqtt  # the optional `mqtt` extra, imported only by this sink
    except ImportError:
        raise SinkError("mqtt sink: paho-mqtt is not installed (pip install 'poseface-edge[mqtt]')") from None
    if not hasattr(mqtt, "CallbackAPIVersion"):
        raise SinkError("mqtt sink: paho-mqtt 2 or newer is needed (pip install 'poseface-edge[mqtt]')")
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
    if username is not None:
        client.username_pw_set(username, password)
    if tls:
        # tls_set verifies the broker's certificate and host name by default.
        try:
            client.tls_set(ca_certs=None if ca_file is None else str(ca_file))
        except (OSError, ValueError) as err:  # ssl.SSLError is an OSError
            raise SinkError(f"mqtt sink: ca_file {ca_file}: cannot load ({err})") from None
    if will is not None:
        client.will_set(will[0], will[1], qos=1, retain=True)
    for attribute, callback in (callbacks or {}).items():
        setattr(client, attribute, callback)
    client.reconnect_delay_set(min_delay=1, max_delay=60)
    client.connect_async(host, int(port), keepalive=int(keepalive))
    client.loop_start()
    return client


# ----------------------------------------------------------------------------- registry


def _options(spec: Any) -> tuple[str, dict]:
    if dataclasses.is_dataclass(spec) and not isinstance(spec, type):
        spec = {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec)}
    if not isinstance(spec, Mapping):
        raise SinkError(f"sink config: expected a table with a 'type' key, got {spec!r}")
    options = dict(spec)
    return options.pop("type", None), options


def _checked(kind: str, options: dict, known: Sequence[str]) -> dict:
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise SinkError(f"sink config: unknown key '{unknown[0]}' for type '{kind}' (known: type, {', '.join(known)})")
    return options


SINK_TYPES: dict[str, Callable[[dict, int], Sink]] = {
    "stdout": lambda o, q: StdoutSink(**_checked("stdout", o, ())),
    "jsonl": lambda o, q: JsonLinesFileSink(**_checked("jsonl", o, ("path", "fsync"))),
    "webhook": lambda o, q: WebhookSink(
        queue_size=q, **_checked("webhook", o, ("url", "timeout_s", "retries", "ca_file", "headers"))
    ),
    "mqtt": lambda o, q: MqttSink(
        queue_size=q,
        **_checked(
            "mqtt",
            o,
            (
                "host",
                "port",
                "topic",
                "qos",
                "client_id",
                "tls",
                "ca_file",
                "username",
                "password_file",
                "keepalive",
                "timeout_s",
                "retries",
                "homeassistant",
                "discovery_prefix",
            ),
        ),
    ),
}


def build_sink(spec: Any, queue_size: int = DEFAULT_QUEUE_SIZE) -> Sink:
    """A sink from a mapping (or config dataclass) whose ``type`` names an entry of :data:`SINK_TYPES`."""
    kind, options = _options(spec)
    if kind not in SINK_TYPES:
        raise SinkError(f"sink config: unknown type {kind!r} (known types: {', '.join(sorted(SINK_TYPES))})")
    return SINK_TYPES[kind](options, queue_size)


class SinkSet:
    """Several sinks behind one ``emit``; counters keyed by sink name."""

    def __init__(self, sinks: Sequence[Sink]):
        self.sinks = list(sinks)

    def emit(self, event: Event) -> None:
        for sink in self.sinks:
            sink.emit(event)

    def counters(self) -> dict[str, SinkCounters]:
        return {sink.name: sink.counters() for sink in self.sinks}

    def close(self, timeout: float = 5.0) -> None:
        """Close every sink within one shared ``timeout``."""
        deadline = time.monotonic() + timeout
        for sink in self.sinks:
            sink.close(max(0.0, deadline - time.monotonic()))
