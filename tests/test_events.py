"""Event documents against their JSON Schema, and the sinks: stdout, JSON-lines file, webhook, MQTT."""

from __future__ import annotations

import dataclasses
import json
import re
import socket
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from edge.app.sinks import (
    Backoff,
    JsonLinesFileSink,
    MqttSink,
    QueuedSink,
    SinkError,
    SinkSet,
    StdoutSink,
    WebhookSink,
    build_sink,
)
from edge.core import events
from edge.core.events import SCHEMA, SCHEMA_PATH, Event, EventError, event_from_json

# ----------------------------------------------------------------------------- a tiny JSON Schema checker

# The keywords the checker understands. A schema using any other keyword is refused, so the
# schema file can never rely on a rule this test silently skips.
ANNOTATIONS = {"$schema", "title", "description"}
KEYWORDS = ANNOTATIONS | {
    "type",
    "const",
    "enum",
    "properties",
    "required",
    "additionalProperties",
    "pattern",
    "minLength",
    "minimum",
    "maximum",
    "items",
    "minItems",
    "maxItems",
    "oneOf",
}
TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "null": lambda v: v is None,
}


def schema_errors(value, schema: dict, where: str = "$") -> list[str]:
    """Every violation of ``schema`` by ``value`` (JSON Schema semantics for the KEYWORDS subset)."""
    unknown = set(schema) - KEYWORDS
    assert not unknown, f"schema at {where} uses keywords this checker does not implement: {sorted(unknown)}"
    errors: list[str] = []
    if "type" in schema:
        names = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(TYPES[n](value) for n in names):
            return [f"{where}: expected type {names}, got {value!r}"]
    if "const" in schema and value != schema["const"]:
        errors.append(f"{where}: expected {schema['const']!r}, got {value!r}")
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{where}: expected one of {schema['enum']}, got {value!r}")
    if isinstance(value, str):
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{where}: {value!r} does not match {schema['pattern']}")
        if len(value) < schema.get("minLength", 0):
            errors.append(f"{where}: shorter than {schema['minLength']}")
    if TYPES["number"](value):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{where}: {value} < minimum {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{where}: {value} > maximum {schema['maximum']}")
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0) or len(value) > schema.get("maxItems", len(value)):
            errors.append(f"{where}: {len(value)} items, outside [{schema.get('minItems')}, {schema.get('maxItems')}]")
        for i, item in enumerate(value):
            errors += schema_errors(item, schema.get("items", {}), f"{where}[{i}]")
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        errors += [f"{where}: missing {k!r}" for k in schema.get("required", []) if k not in value]
        if schema.get("additionalProperties", True) is False:
            errors += [f"{where}: unexpected {k!r}" for k in value if k not in properties]
        for key, sub in properties.items():
            if key in value:
                errors += schema_errors(value[key], sub, f"{where}.{key}")
    if "oneOf" in schema:
        passing = [i for i, sub in enumerate(schema["oneOf"]) if not schema_errors(value, sub, where)]
        if len(passing) != 1:
            errors.append(f"{where}: matches {len(passing)} of the oneOf branches, expected exactly 1")
    return errors


@pytest.fixture(scope="module")
def event_schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


def sample_events() -> list[Event]:
    t = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=timezone.utc)
    return [
        events.recognised(
            source="cam0", track_id=7, identity="Zoë 😀", score=0.61234, yaw=-32.54, box=[1, 2, 3, 4], time=t
        ),
        events.recognised(
            source="folder:cfp",
            track_id=np.int64(0),
            identity="O'Brien",
            score=np.float32(0.7),
            yaw=np.float64(10),
            box=np.array([10.25, 20, 30, 40], np.float32),
            frame="0001.jpg",
            time=1714564800.5,
        ),
        events.unknown_face(source="cam0", track_id=8, score=0.12, yaw=70.0, box=(0, 0, 5, 5), frame=12),
        events.unknown_face(source="cam0", track_id=9, score=None, yaw=-88.0, box=(0, 0, 5, 5)),
        events.track_ended(source="cam0", track_id=7, identity="Zoë 😀", score=0.6, yaw=-30, box=[1, 2, 3, 4]),
        events.track_ended(source="cam0", track_id=8),
    ]


# ----------------------------------------------------------------------------- events


def test_every_event_kind_validates_against_the_schema_file(event_schema):
    assert event_schema["title"] == SCHEMA
    assert event_schema["required"] == list(events.FIELDS)
    for event in sample_events():
        doc = json.loads(event.to_json())
        assert schema_errors(doc, event_schema) == [], doc
        assert list(doc) == list(events.FIELDS)  # stable field order, schema first
        assert doc["schema"] == SCHEMA


def test_event_json_is_one_compact_line_that_round_trips():
    first, second = sample_events()[:2]
    line = first.to_json()
    assert "\n" not in line and "Zoë 😀" in line  # names kept as UTF-8, not \u escapes
    assert json.loads(line)["time"] == "2024-05-01T12:00:00.123Z"
    assert json.loads(line)["score"] == 0.6123 and json.loads(line)["yaw"] == -32.5
    assert event_from_json(line) == first
    doc = json.loads(second.to_json())
    assert doc["time"] == "2024-05-01T12:00:00.500Z" and doc["track_id"] == 0 and doc["box"] == [10.2, 20, 30, 40]
    assert event_from_json(second.to_json()) == second
    now = events.unknown_face(source="s", track_id=1, score=0.1, yaw=0, box=[0, 0, 1, 1])
    assert abs(datetime.fromisoformat(now.time[:-1] + "+00:00").timestamp() - time.time()) < 5


BAD_DOCS = [
    (lambda d: d.pop("score"), "missing field 'score'"),
    (lambda d: d.update(extra=1), "unknown field 'extra'"),
    (lambda d: d.update(schema="poseface.event/2"), "schema"),
    (lambda d: d.update(type="seen"), "type"),
    (lambda d: d.update(time="2024-05-01 12:00:00"), "time"),
    (lambda d: d.update(time="2024-05-01T12:00:00+02:00"), "time"),
    (lambda d: d.update(source=""), "source"),
    (lambda d: d.update(track_id=-1), "track_id"),
    (lambda d: d.update(track_id=1.5), "track_id"),
    (lambda d: d.update(track_id=True), "track_id"),
    (lambda d: d.update(identity=None), "identity"),  # recognised needs a name
    (lambda d: d.update(score=1.5), "score"),
    (lambda d: d.update(score=None), "score"),
    (lambda d: d.update(yaw=-181), "yaw"),
    (lambda d: d.update(yaw="left"), "yaw"),
    (lambda d: d.update(box=[1, 2, 3]), "box"),
    (lambda d: d.update(box=None), "box"),
    (lambda d: d.update(frame=-3), "frame"),
    (lambda d: d.update(frame=""), "frame"),
    (lambda d: d.update(type="unknown_face"), "identity"),  # unknown_face must not name anyone
]


@pytest.mark.parametrize("change, field", BAD_DOCS)
def test_bad_documents_fail_both_the_schema_and_the_parser(event_schema, change, field):
    doc = json.loads(sample_events()[0].to_json())
    change(doc)
    assert schema_errors(doc, event_schema) != []  # the schema (and this checker) catch it
    with pytest.raises(EventError) as err:
        events.event_from_dict(doc)
    assert field in str(err.value)


def test_schema_checker_refuses_keywords_it_does_not_implement():
    with pytest.raises(AssertionError, match="does not implement"):
        schema_errors({}, {"type": "object", "if": {}})


def test_time_formatting():
    assert events.format_time(0) == "1970-01-01T00:00:00.000Z"
    assert events.format_time(datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc)) == "2024-01-02T03:04:05.000Z"
    with pytest.raises(EventError, match="timezone-aware"):
        events.format_time(datetime(2024, 1, 2))
    with pytest.raises(EventError, match="epoch seconds"):
        events.format_time(float("nan"))
    doc = json.loads(sample_events()[0].to_json())
    for good in ("2024-05-01T12:00:00Z", "2024-05-01T12:00:00.5Z", "2024-05-01T12:00:00.123456Z"):
        assert events.event_from_dict(dict(doc, time=good)).time == good
    for bad in ("2024-02-30T12:00:00.000Z", "2024-05-01T24:00:00Z", "2024-05-01T12:00:00.1234567Z"):
        with pytest.raises(EventError, match="time"):
            events.event_from_dict(dict(doc, time=bad))


# ----------------------------------------------------------------------------- local sinks


def test_stdout_sink_prints_one_flushed_line_per_event(capsys):
    sink = build_sink({"type": "stdout"})
    emitted = sample_events()
    for event in emitted:
        sink.emit(event)
    lines = capsys.readouterr().out.splitlines()
    assert [event_from_json(line) for line in lines] == emitted
    assert sink.counters().sent == len(lines)


def test_jsonl_file_sink_never_tears_a_line_under_concurrent_writers(tmp_path):
    path = tmp_path / "events.jsonl"
    # Two sinks on one file stand for two processes (two descriptors); four threads each.
    sinks = [JsonLinesFileSink(path), build_sink({"type": "jsonl", "path": str(path), "fsync": False})]
    per_thread = 150
    # Lines of several sizes, some longer than a page (4 KiB), where a torn write would show.
    sources = ["cam", "s" * 700, "x" * 5000]
    stop = threading.Event()
    reader_errors: list[str] = []

    def write(sink_index: int, thread_index: int) -> None:
        for k in range(per_thread):
            source = f"{sink_index}/{thread_index}/{k}/" + sources[k % 3]
            sinks[sink_index].emit(events.track_ended(source=source, track_id=k))

    def read_while_writing() -> None:
        while not stop.is_set():
            data = path.read_bytes()
            complete = data[: data.rfind(b"\n") + 1]  # a reader consumes whole lines only
            for line in complete.splitlines():
                try:
                    json.loads(line)
                except ValueError:
                    reader_errors.append(line[:80].decode("utf-8", "replace"))
            time.sleep(0.01)

    reader = threading.Thread(target=read_while_writing)
    reader.start()
    writers = [threading.Thread(target=write, args=(s, t)) for s in range(2) for t in range(4)]
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    stop.set()
    reader.join()
    for sink in sinks:
        sink.close()

    assert reader_errors == []
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2 * 4 * per_thread
    keys = sorted("/".join(event_from_json(line).source.split("/")[:3]) for line in lines)
    assert keys == sorted(f"{s}/{t}/{k}" for s in range(2) for t in range(4) for k in range(per_thread))
    assert sum(s.counters().sent for s in sinks) == len(lines)


def test_jsonl_file_sink_appends_with_fsync_and_reports_a_bad_path(tmp_path):
    path = tmp_path / "e.jsonl"
    path.write_text('{"earlier": true}\n')
    with JsonLinesFileSink(path, fsync=True) as sink:
        sink.emit(sample_events()[0])
    assert path.read_text(encoding="utf-8").splitlines()[0] == '{"earlier": true}'
    assert len(path.read_text(encoding="utf-8").splitlines()) == 2
    sink.emit(sample_events()[0])  # after close: counted, never raised
    assert sink.counters().failed == 1
    with pytest.raises(SinkError, match="does not exist"):
        JsonLinesFileSink(tmp_path / "missing" / "e.jsonl")


@pytest.mark.parametrize("tail", [b"", b'{"schema":"poseface.ev', b"x" * 70000])
def test_jsonl_file_sink_cuts_off_a_line_a_killed_writer_left_half_written(tmp_path, tail, caplog):
    """SIGKILL inside the write can leave the start of a line: reopening cuts it off, keeps every
    whole line before it, and the next event starts on a line of its own."""
    path = tmp_path / "e.jsonl"
    whole = b'{"first": 1}\n{"second": 2}\n'
    path.write_bytes(whole + tail)
    with JsonLinesFileSink(path) as sink:
        assert sink.torn_bytes_dropped == len(tail)
        sink.emit(sample_events()[0])
    lines = path.read_bytes().split(b"\n")
    assert lines[:2] == [b'{"first": 1}', b'{"second": 2}'] and lines[3] == b""
    assert event_from_json(lines[2].decode()) == sample_events()[0]
    assert ("cut off a partial last line" in caplog.text) == bool(tail)
    path.write_bytes(b"no newline at all")  # one torn line and nothing else: the file empties
    JsonLinesFileSink(path).close()
    assert path.read_bytes() == b""


# ----------------------------------------------------------------------------- queued sinks


class BlockingSink(QueuedSink):
    """A queued sink whose sends wait for ``release``, so the queue's behaviour can be watched."""

    name = "blocking"

    def __init__(self, **kwargs):
        self.release = threading.Event()
        self.delivered: list[int] = []
        super().__init__(**kwargs)

    def _send(self, payload: str) -> None:
        self.release.wait(5)
        self.delivered.append(json.loads(payload)["track_id"])


def test_a_full_queue_drops_the_oldest_events_and_counts_them():
    sink = BlockingSink(queue_size=5, retries=0)
    sink.emit(events.track_ended(source="s", track_id=0))
    deadline = time.monotonic() + 5
    while sink.counters().queued != 1 or sink._queue:  # event 0 is now in flight
        assert time.monotonic() < deadline
        time.sleep(0.001)
    for k in range(1, 21):
        sink.emit(events.track_ended(source="s", track_id=k))
    assert sink.counters().dropped == 15 and sink.counters().queued == 6
    sink.release.set()
    assert sink.flush(5)
    assert sink.delivered == [0, 16, 17, 18, 19, 20]  # the newest five survived
    sink.close()
    assert sink.counters().sent == 6
    sink.emit(events.track_ended(source="s", track_id=99))  # after close: dropped, not queued
    assert sink.counters().dropped == 16


class Server:
    """A local HTTP server on 127.0.0.1 that answers the first ``fail`` POSTs with ``status``."""

    def __init__(self, fail: int = 0, status: int = 503):
        self.requests: list[tuple[float, bytes, str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.requests.append((time.monotonic(), body, self.headers["Content-Type"]))
                code = status if len(outer.requests) <= fail else 200
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook?token=secret"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_webhook_retries_with_growing_backoff_until_delivered():
    server = Server(fail=2, status=503)
    try:
        sink = WebhookSink(server.url, retries=3, backoff=Backoff(initial_s=0.05, jitter=0.0), proxies={})
        assert "secret" not in sink.name  # the query string may hold a token
        event = sample_events()[0]
        sink.emit(event)
        assert sink.flush(10)
        sink.close()
    finally:
        server.close()
    assert sink.counters() == type(sink.counters())(sent=1, dropped=0, failed=0, queued=0)
    assert len(server.requests) == 3
    assert server.requests[-1][1].decode("utf-8") == event.to_json()
    assert server.requests[-1][2] == "application/json"
    gaps = [b[0] - a[0] for a, b in zip(server.requests, server.requests[1:])]
    assert gaps[0] >= 0.045 and gaps[1] >= 0.09  # 0.05 s, then 0.1 s


def test_webhook_does_not_retry_a_refusal():
    server = Server(fail=10, status=400)
    try:
        sink = WebhookSink(server.url, retries=3, backoff=Backoff(initial_s=0.01), proxies={})
        sink.emit(sample_events()[0])
        assert sink.flush(10)
        sink.close()
    finally:
        server.close()
    assert len(server.requests) == 1
    assert sink.counters().failed == 1 and sink.counters().sent == 0


def test_webhook_with_the_server_down_never_blocks_emit():
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now: connections are refused at once
    sink = WebhookSink(
        f"http://127.0.0.1:{port}/hook", retries=2, queue_size=10, backoff=Backoff(initial_s=0.2), proxies={}
    )
    start = time.perf_counter()
    for k in range(100):
        sink.emit(events.track_ended(source="s", track_id=k))
    elapsed = time.perf_counter() - start
    assert elapsed < 0.05, f"100 emits took {elapsed * 1000:.1f} ms"
    counters = sink.counters()
    assert counters.dropped >= 89 and counters.queued <= 11 and counters.sent == 0
    start = time.perf_counter()
    sink.close(timeout=0.3)
    assert time.perf_counter() - start < 2
    final = sink.counters()
    assert final.sent == 0 and final.queued == 0
    assert final.dropped + final.failed == 100  # every event accounted for


def test_webhook_url_and_tls_options_are_checked():
    for url in ("ftp://example.invalid/x", "http:///nohost", "127.0.0.1:80", None):
        with pytest.raises(SinkError, match="webhook sink: url"):
            WebhookSink(url)
    with pytest.raises(SinkError, match="ca_file"):
        WebhookSink("https://127.0.0.1:9/x", ca_file="/nonexistent/ca.pem")
    with pytest.raises(SinkError, match="timeout_s"):
        WebhookSink("https://127.0.0.1:9/x", timeout_s=0)


# ----------------------------------------------------------------------------- MQTT (no broker: a fake client)


class FakeInfo:
    def __init__(self, rc: int, acked: bool):
        self.rc = rc
        self._acked = acked

    def wait_for_publish(self, timeout=None):
        pass

    def is_published(self) -> bool:
        return self._acked


@dataclass
class FakeMqttClient:
    """Stands in for paho's client: connects after ``connect_after`` checks; acks per ``acks``."""

    connect_after: int = 0
    rc: int = 0
    acks: bool = True
    checks: int = 0
    stopped: bool = False

    def __post_init__(self):
        self.published: list[tuple[str, bytes, int]] = []

    def is_connected(self) -> bool:
        self.checks += 1
        return self.checks > self.connect_after

    def publish(self, topic, payload, qos=0):
        self.published.append((topic, payload, qos))
        return FakeInfo(self.rc, self.acks)

    def disconnect(self):
        self.stopped = True

    def loop_stop(self):
        pass


def test_mqtt_sink_waits_for_the_connection_with_backoff_then_publishes():
    client = FakeMqttClient(connect_after=2)
    sink = MqttSink("127.0.0.1", topic="site/door", qos=1, retries=3, backoff=Backoff(initial_s=0.01), client=client)
    event = sample_events()[0]
    sink.emit(event)
    assert sink.flush(5)
    sink.close()
    assert client.checks == 3  # two refused attempts, then the publish
    assert client.published == [("site/door", event.to_json().encode("utf-8"), 1)]
    assert sink.counters().sent == 1 and sink.counters().failed == 0


@pytest.mark.parametrize("client", [FakeMqttClient(rc=4), FakeMqttClient(acks=False), FakeMqttClient(connect_after=99)])
def test_mqtt_sink_gives_up_after_the_retries_and_counts_it(client):
    sink = MqttSink("127.0.0.1", retries=2, backoff=Backoff(initial_s=0.01), client=client)
    sink.emit(sample_events()[0])
    assert sink.flush(5)
    sink.close()
    assert sink.counters().failed == 1 and sink.counters().sent == 0


def test_mqtt_sink_without_paho_says_how_to_install_it(monkeypatch):
    for name in ("paho", "paho.mqtt", "paho.mqtt.client"):
        monkeypatch.setitem(sys.modules, name, None)  # makes the import fail as if not installed
    with pytest.raises(SinkError) as err:
        build_sink({"type": "mqtt", "host": "127.0.0.1"})
    assert str(err.value) == "mqtt sink: paho-mqtt is not installed (pip install 'poseface-edge[mqtt]')"


def test_mqtt_sink_options_are_checked():
    for kwargs, field in (({"topic": "a/+/b"}, "topic"), ({"qos": 3}, "qos"), ({"host": ""}, "host")):
        with pytest.raises(SinkError, match=field):
            MqttSink(**{"host": "127.0.0.1", "client": FakeMqttClient(), **kwargs})


# ----------------------------------------------------------------------------- registry


def test_build_sink_by_type_with_clear_errors(tmp_path):
    @dataclass(frozen=True)
    class JsonlConfig:  # the runtime config hands sinks over as dataclasses
        path: str
        type: str = "jsonl"

    sink = build_sink(JsonlConfig(path=str(tmp_path / "e.jsonl")))
    assert isinstance(sink, JsonLinesFileSink)
    sink.close()
    webhook = build_sink({"type": "webhook", "url": "http://127.0.0.1:9/x", "retries": 0}, queue_size=3)
    assert webhook.queue_size == 3 and webhook.retries == 0
    webhook.close(0.1)
    with pytest.raises(SinkError, match="unknown type 'kafka'"):
        build_sink({"type": "kafka"})
    with pytest.raises(SinkError, match="unknown key 'pth' for type 'jsonl'"):
        build_sink({"type": "jsonl", "pth": "x"})
    with pytest.raises(SinkError, match="queue_size"):
        build_sink({"type": "webhook", "url": "http://127.0.0.1:9/x"}, queue_size=0)


def test_sink_set_fans_out_and_reports_counters_per_sink(tmp_path, capsys):
    sinks = SinkSet([StdoutSink(), JsonLinesFileSink(tmp_path / "e.jsonl")])
    for event in sample_events()[:3]:
        sinks.emit(event)
    sinks.close()
    counters = sinks.counters()
    assert counters["stdout"].sent == 3 and counters[f"jsonl:{tmp_path / 'e.jsonl'}"].sent == 3
    assert len(capsys.readouterr().out.splitlines()) == 3


def test_build_sink_takes_every_sink_table_of_the_runtime_config(tmp_path, monkeypatch):
    config = pytest.importorskip("edge.app.config.schema")
    import edge.app.sinks as sinks_module

    made: list[FakeMqttClient] = []
    monkeypatch.setattr(sinks_module, "_paho_client", lambda *args: made.append(FakeMqttClient()) or made[-1])
    required = {"path": tmp_path / "e.jsonl", "host": "127.0.0.1", "url": "http://127.0.0.1:9/hook"}
    for kind, cls in config.SINKS.items():
        names = {f.name for f in dataclasses.fields(cls)}
        sink = build_sink(cls(**{k: v for k, v in required.items() if k in names}), queue_size=4)
        assert sink.name.split(":")[0] == kind
        sink.close(0.1)
    assert len(made) == 1 and made[0].stopped  # a client the sink made is disconnected on close
