"""The MQTT sink and Home Assistant discovery against a real broker: Mosquitto, started by the
tests on a free loopback port with its own config in a temporary folder.

`make test` installs mosquitto (apt-get, when root); where it is not installed these tests skip
with the reason. Every wait is on a condition with a generous timeout (a loaded machine), never
a fixed sleep.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import pwd
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from edge.app.sinks import Backoff, MqttSink
from edge.core import events as ev
from edge.shipped import SHIPPED_IDENTITY

REPO = Path(__file__).resolve().parents[1]
WAIT_S = 30.0  # for anything the broker or a client does; a loaded CI machine can be slow
RUN_TIMEOUT_S = 600  # for a whole `python -m edge.run` on real photos (model loading included)
ID_CHARS = re.compile(r"[A-Za-z0-9_-]+")  # HA's characters for node and object ids
SUFFIXES = ("last_person", "unknown_face", "people_in_view")  # the object ids end with these

mqtt = pytest.importorskip("paho.mqtt.client", reason="paho-mqtt is not installed (pip install -e '.[mqtt]')")


def _find(program: str, *extra_dirs: str) -> str | None:
    found = shutil.which(program)
    if found:
        return found
    for folder in extra_dirs:  # /usr/sbin is not on a normal user's PATH
        path = Path(folder) / program
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    return None


@pytest.fixture(scope="session")
def mosquitto_bin():
    server = _find("mosquitto", "/usr/sbin", "/usr/local/sbin")
    passwd = _find("mosquitto_passwd", "/usr/bin", "/usr/local/bin")
    if server is None or passwd is None:
        pytest.skip(
            "mosquitto is not installed and could not be (make test installs it with apt-get when run as root; "
            "or: apt-get install mosquitto mosquitto-clients)"
        )
    return {"mosquitto": server, "mosquitto_passwd": passwd}


def wait_until(check, timeout: float = WAIT_S, what: str = "condition", step: float = 0.02):
    """Poll ``check`` until it returns something truthy; fail naming ``what`` after ``timeout``."""
    end = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(step)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """One mosquitto process with its own config, password file and log in ``folder``."""

    def __init__(self, bins: dict, folder: Path, users: dict | None = None, tls: dict | None = None):
        self.bins = bins
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.users = users
        self.tls = tls
        self.port = _free_port()
        self.log = folder / "mosquitto.log"
        self.proc: subprocess.Popen | None = None

    def _write_config(self) -> Path:
        lines = [
            f"listener {self.port} 127.0.0.1",
            # Stay the user we are (as root, mosquitto would switch to 'mosquitto' and lose our files).
            f"user {pwd.getpwuid(os.getuid()).pw_name}",
            "persistence false",
            f"log_dest file {self.log}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
        ]
        if self.users:
            password_file = self.folder / "passwords"
            password_file.unlink(missing_ok=True)
            for i, (user, password) in enumerate(self.users.items()):
                flags = ["-c"] if i == 0 else []
                subprocess.run(
                    [self.bins["mosquitto_passwd"], "-b", *flags, str(password_file), user, password],
                    check=True,
                    capture_output=True,
                    timeout=WAIT_S,
                )
            lines += ["allow_anonymous false", f"password_file {password_file}"]
        else:
            lines.append("allow_anonymous true")
        if self.tls:
            lines += [f"cafile {self.tls['ca']}", f"certfile {self.tls['cert']}", f"keyfile {self.tls['key']}"]
        config = self.folder / "mosquitto.conf"
        config.write_text("\n".join(lines) + "\n")
        return config

    def start(self) -> Broker:
        config = self._write_config()
        self.proc = subprocess.Popen(
            [self.bins["mosquitto"], "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=open(self.folder / "mosquitto.stderr", "ab"),  # noqa: SIM115 - the child keeps it
        )

        def listening():
            if self.proc.poll() is not None:
                raise AssertionError(f"mosquitto exited with {self.proc.returncode}: {self.log_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return True
            except OSError:
                return False

        wait_until(listening, what=f"mosquitto to listen on 127.0.0.1:{self.port}", step=0.05)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(WAIT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(WAIT_S)
        self.proc = None

    def log_text(self) -> str:
        parts = [p.read_text(errors="replace") for p in (self.log, self.folder / "mosquitto.stderr") if p.exists()]
        return "\n".join(parts)[-3000:]


@pytest.fixture()
def broker_factory(mosquitto_bin, tmp_path):
    """``start(users=..., tls=...)`` -> a running :class:`Broker`; all are stopped afterwards."""
    started: list[Broker] = []

    def start(users: dict | None = None, tls: dict | None = None) -> Broker:
        broker = Broker(mosquitto_bin, tmp_path / f"broker{len(started)}", users=users, tls=tls)
        started.append(broker)
        return broker.start()

    yield start
    for broker in started:
        broker.stop()


@pytest.fixture()
def broker(broker_factory):
    return broker_factory()


@dataclass
class Received:
    topic: str
    payload: str
    qos: int
    retain: bool


class Listener:
    """A subscriber that records every message it gets (thread-safe), for the tests to wait on."""

    def __init__(self, port: int, topics, username=None, password=None, ca_file=None, host="127.0.0.1"):
        self.topics = list(topics) + [f"test/marker/{uuid.uuid4().hex}"]
        self.marker = self.topics[-1]
        self._lock = threading.Lock()
        self._messages: list[Received] = []
        self._subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"listener-{uuid.uuid4().hex[:8]}")
        if username is not None:
            self.client.username_pw_set(username, password)
        if ca_file is not None:
            self.client.tls_set(ca_certs=str(ca_file))
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(host, port, keepalive=30)
        self.client.loop_start()
        assert self._subscribed.wait(WAIT_S), f"listener not subscribed to {self.topics} within {WAIT_S} s"

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if not reason_code.is_failure:
            client.subscribe([(t, 1) for t in self.topics])

    def _on_message(self, client, userdata, msg):
        with self._lock:
            self._messages.append(Received(msg.topic, msg.payload.decode("utf-8"), msg.qos, bool(msg.retain)))

    def messages(self, topic: str | None = None, prefix: str | None = None) -> list[Received]:
        with self._lock:
            return [
                m
                for m in self._messages
                if (m.topic == topic if topic is not None else m.topic != self.marker)
                and (prefix is None or m.topic.startswith(prefix))
            ]

    def wait_for(self, check, what: str, timeout: float = WAIT_S):
        try:
            return wait_until(lambda: check(self), timeout=timeout, what=what)
        except AssertionError as err:
            raise AssertionError(f"{err}; the last messages received: {self.messages()[-12:]}") from None

    def settle(self) -> None:
        """Publish to our own marker topic and wait for it: every retained message for our
        subscriptions was delivered before it (the broker sends them right after SUBACK)."""
        token = uuid.uuid4().hex
        self.client.publish(self.marker, token, qos=1)
        self.wait_for(lambda lis: any(m.payload == token for m in lis.messages(self.marker)), "our own marker")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture()
def listeners():
    made: list[Listener] = []

    def make(*args, **kwargs) -> Listener:
        made.append(Listener(*args, **kwargs))
        return made[-1]

    yield make
    for listener in made:
        listener.close()


def sample(frame: int, track_id: int = 1, kind: str = "recognised", name: str = "Ada", source: str = "camera0"):
    box = [10.0, 20.0, 110.0, 140.0]
    if kind == "recognised":
        return ev.recognised(
            source=source, track_id=track_id, identity=name, score=0.7, yaw=-31.5, box=box, frame=frame
        )
    if kind == "unknown_face":
        return ev.unknown_face(source=source, track_id=track_id, score=0.12, yaw=12.0, box=box, frame=frame)
    return ev.track_ended(source=source, track_id=track_id, identity=None, yaw=12.0, box=box, frame=frame)


def make_sink(port: int, **kwargs) -> MqttSink:
    options = {"client_id": f"sink-{uuid.uuid4().hex[:8]}", "backoff": Backoff(initial_s=0.1, max_s=1.0), **kwargs}
    return MqttSink("127.0.0.1", port, **options)


def frames_of(listener: Listener, topic: str) -> list[int]:
    return [json.loads(m.payload)["frame"] for m in listener.messages(topic)]


# ----------------------------------------------------------------------------- the event sink


@pytest.mark.parametrize("qos", [0, 1])
def test_broker_delivers_every_event_of_the_sink_to_a_subscriber(broker, listeners, qos):
    topic = f"site/door{qos}/events"
    listener = listeners(broker.port, [topic])
    sink = make_sink(broker.port, topic=topic, qos=qos)
    try:
        wait_until(lambda: sink.connected, what="the sink to connect")
        sent = [sample(frame=i, track_id=i) for i in range(25)]
        for event in sent:
            sink.emit(event)
        assert sink.flush(WAIT_S)
        listener.wait_for(lambda lis: len(lis.messages(topic)) >= len(sent), f"{len(sent)} events on {topic}")
    finally:
        sink.close()
    got = listener.messages(topic)
    assert [m.payload for m in got] == [e.to_json() for e in sent]  # every event, in order, byte for byte
    assert {m.qos for m in got} == {qos}  # delivered at the sink's QoS (the subscription allows 1)
    assert not any(m.retain for m in got)  # events are not retained; only availability and HA states are
    assert sink.counters().to_dict() == {"sent": 25, "dropped": 0, "failed": 0, "queued": 0}


def test_broker_restart_the_sink_reconnects_and_counts_queued_delivered_dropped(broker, listeners):
    topic = "site/restart/events"
    queue_size = 3
    sink = make_sink(broker.port, topic=topic, qos=1, queue_size=queue_size, retries=1000, timeout_s=2.0)
    listener = listeners(broker.port, [topic])
    try:
        wait_until(lambda: sink.connected, what="the sink to connect")
        for i in range(5):  # one at a time: the queue holds 3
            sink.emit(sample(frame=i, track_id=i))
            assert sink.flush(WAIT_S)
        listener.wait_for(lambda lis: len(lis.messages(topic)) >= 5, "the first 5 events")
        assert sink.counters().to_dict() == {"sent": 5, "dropped": 0, "failed": 0, "queued": 0}
        listener.close()

        broker.stop()
        wait_until(lambda: not sink.connected, what="the sink to notice the broker is gone")
        down = list(range(100, 110))
        for i in down:  # 10 events while the broker is down: the queue keeps the newest 3 (+1 in flight)
            sink.emit(sample(frame=i, track_id=i))
        c = sink.counters()
        assert c.sent == 5 and c.failed == 0
        assert c.queued in (queue_size, queue_size + 1)  # +1: the one the sender is retrying, if it took one
        assert c.dropped == len(down) - c.queued
        assert c.sent + c.dropped + c.failed + c.queued == 5 + len(down)  # every event accounted for
        queued_while_down = c.queued

        broker.start()  # same port
        listener = listeners(broker.port, [topic])
        wait_until(lambda: sink.connected, what="the sink to reconnect after the restart")
        assert sink.flush(WAIT_S)
        listener.wait_for(lambda lis: len(set(frames_of(lis, topic))) >= queued_while_down, "the queued events")
    finally:
        sink.close()
    c = sink.counters()
    assert c.to_dict() == {
        "sent": 5 + queued_while_down,
        "dropped": len(down) - queued_while_down,
        "failed": 0,
        "queued": 0,
    }
    delivered = sorted(set(frames_of(listener, topic)))
    newest = down[-queue_size:]
    # What came through after the restart is the newest events (the oldest were dropped), plus
    # the one that was in flight when the queue filled up, if there was one.
    assert delivered[-queue_size:] == newest
    assert len(delivered) == queued_while_down
    assert set(delivered) <= set(down)


def test_broker_with_a_password_file_takes_the_user_and_refuses_a_wrong_password(
    broker_factory, listeners, tmp_path, caplog
):
    broker = broker_factory(users={"poseface": "s3cret-Pass", "homeassistant": "ha-pass"})
    topic = "site/auth/events"
    listener = listeners(broker.port, [topic], username="homeassistant", password="ha-pass")
    good = tmp_path / "good.password"
    good.write_text("s3cret-Pass\n")  # the trailing newline of a file written by echo is not part of it
    bad = tmp_path / "bad.password"
    bad.write_text("not-the-password\n")

    sink = make_sink(broker.port, topic=topic, username="poseface", password_file=good)
    try:
        wait_until(lambda: sink.connected, what="the sink to log in")
        sink.emit(sample(frame=1))
        assert sink.flush(WAIT_S)
    finally:
        sink.close()
    listener.wait_for(lambda lis: frames_of(lis, topic) == [1], "the event of the logged-in sink")
    assert sink.counters().sent == 1

    caplog.set_level("WARNING", logger="edge.sinks")
    refused = make_sink(
        broker.port, topic=topic, username="poseface", password_file=bad, retries=2, backoff=Backoff(initial_s=0.2)
    )
    anonymous = make_sink(broker.port, topic=topic, retries=2, backoff=Backoff(initial_s=0.2))
    try:
        for sink in (refused, anonymous):
            wait_until(
                lambda s=sink: any(
                    s.name in r.getMessage() and "refused the connection" in r.getMessage() for r in caplog.records
                ),
                what="the broker's refusal to be logged",
            )
            sink.emit(sample(frame=2))
            assert sink.flush(WAIT_S)
            assert not sink.connected
            assert sink.counters().to_dict() == {"sent": 0, "dropped": 0, "failed": 1, "queued": 0}
    finally:
        refused.close(1)
        anonymous.close(1)
    listener.settle()
    assert frames_of(listener, topic) == [1]  # nothing from the refused clients
    reasons = [r.getMessage() for r in caplog.records if "refused the connection" in r.getMessage()]
    assert any("Not authorized" in r or "Bad user name or password" in r for r in reasons), reasons


def _certificates(folder: Path) -> dict:
    """A CA, a server certificate it signs (localhost, 127.0.0.1), and an unrelated CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.timezone.utc)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def usage(ca: bool) -> x509.KeyUsage:
        return x509.KeyUsage(
            digital_signature=True,
            content_commitment=False,
            key_encipherment=not ca,
            data_encipherment=False,
            key_agreement=False,
            key_cert_sign=ca,
            crl_sign=ca,
            encipher_only=False,
            decipher_only=False,
        )

    def authority(cn: str):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name(cn))
            .issuer_name(name(cn))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(usage(True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return key, cert

    def pem(path: Path, data: bytes) -> Path:
        path.write_bytes(data)
        path.chmod(0o600)
        return path

    ca_key, ca = authority("poseface test CA")
    _, other_ca = authority("some other CA")
    key = ec.generate_private_key(ec.SECP256R1())
    server = (
        x509.CertificateBuilder()
        .subject_name(name("localhost"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage(False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    raw = serialization.Encoding.PEM
    key_pem = key.private_bytes(raw, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return {
        "ca": pem(folder / "ca.pem", ca.public_bytes(raw)),
        "wrong_ca": pem(folder / "wrong_ca.pem", other_ca.public_bytes(raw)),
        "cert": pem(folder / "server.pem", server.public_bytes(raw)),
        "key": pem(folder / "server.key", key_pem),
    }


def test_broker_over_tls_with_a_generated_ca_and_refused_with_the_wrong_ca(broker_factory, listeners, tmp_path):
    certs = _certificates(tmp_path)
    broker = broker_factory(tls={"ca": certs["ca"], "cert": certs["cert"], "key": certs["key"]})
    topic = "site/tls/events"
    listener = listeners(broker.port, [topic], ca_file=certs["ca"], host="localhost")

    # The TLS handshake itself: our CA verifies the broker, the other CA does not.
    with socket.create_connection(("127.0.0.1", broker.port), timeout=WAIT_S) as raw:
        context = ssl.create_default_context(cafile=str(certs["ca"]))
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            assert tls.version() in ("TLSv1.2", "TLSv1.3")
    with socket.create_connection(("127.0.0.1", broker.port), timeout=WAIT_S) as raw:
        context = ssl.create_default_context(cafile=str(certs["wrong_ca"]))
        with pytest.raises(ssl.SSLCertVerificationError):
            context.wrap_socket(raw, server_hostname="localhost")

    for host in ("localhost", "127.0.0.1"):  # the certificate names both
        sink = MqttSink(host, broker.port, topic=topic, tls=True, ca_file=certs["ca"], client_id=f"tls-{host}")
        try:
            wait_until(lambda s=sink: s.connected, what=f"the TLS sink to connect to {host}")
            sink.emit(sample(frame=len(host)))
            assert sink.flush(WAIT_S)
        finally:
            sink.close()
        assert sink.counters().sent == 1
    listener.wait_for(lambda lis: sorted(frames_of(lis, topic)) == [9, len("localhost")], "both TLS events")

    wrong = MqttSink(
        "localhost",
        broker.port,
        topic=topic,
        tls=True,
        ca_file=certs["wrong_ca"],
        retries=2,
        backoff=Backoff(initial_s=0.2),
        client_id="tls-wrong-ca",
    )
    plain = make_sink(broker.port, topic=topic, retries=2, backoff=Backoff(initial_s=0.2))  # no TLS at all
    try:
        for sink in (wrong, plain):
            sink.emit(sample(frame=99))
            assert sink.flush(WAIT_S)
            assert not sink.connected
            assert sink.counters().to_dict() == {"sent": 0, "dropped": 0, "failed": 1, "queued": 0}
    finally:
        wrong.close(1)
        plain.close(1)
    listener.settle()
    assert 99 not in frames_of(listener, topic)


# ----------------------------------------------------------------------------- availability


def _config_arg(*sinks: str) -> str:
    return "events.sinks=[" + ", ".join(sinks) + "]"


def _mqtt_table(port: int, client_id: str, **extra) -> str:
    options = {"type": "mqtt", "host": "127.0.0.1", "port": port, "client_id": client_id, **extra}
    parts = []
    for key, value in options.items():
        parts.append(f"{key}={json.dumps(value)}" if not isinstance(value, bool) else f"{key}={str(value).lower()}")
    return "{" + ", ".join(parts) + "}"


def _still_video(path: Path) -> Path:
    """A few frames with no face in them, played in a loop: the runner keeps running."""
    import cv2
    import numpy as np

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (96, 96))
    for i in range(10):
        writer.write(np.full((96, 96, 3), 40 + 10 * i, np.uint8))
    writer.release()
    return path


def test_broker_publishes_the_last_will_when_the_runner_is_killed(broker, listeners, tmp_path):
    availability = "poseface/lwt-runner/availability"
    listener = listeners(broker.port, [availability])
    cmd = [
        sys.executable,
        "-m",
        "edge.run",
        "--source",
        str(_still_video(tmp_path / "clip.avi")),
        "--set",
        "source.loop=true",
        "--gallery",
        str(tmp_path / "none.sqlite"),
        "--set",
        "service.notify=false",
        "--set",
        _config_arg(_mqtt_table(broker.port, "lwt-runner", keepalive=5)),
    ]
    log = tmp_path / "run.log"
    with open(log, "wb") as err:  # a file, not a pipe nobody reads while it runs
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=err)

    def online(lis: Listener) -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"edge.run exited with {proc.returncode}: {log.read_text(errors='replace')[-3000:]}")
        return [m.payload for m in lis.messages(availability)] == ["online"]

    try:
        listener.wait_for(
            online,
            "the runner to say it is online",
            timeout=RUN_TIMEOUT_S / 2,  # model loading on a loaded machine
        )
        assert proc.poll() is None
        proc.send_signal(signal.SIGKILL)  # no clean close: only the broker can say it is gone
        proc.wait(WAIT_S)
        listener.wait_for(
            lambda lis: [m.payload for m in lis.messages(availability)] == ["online", "offline"],
            "the broker to publish the runner's last will",
        )
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(WAIT_S)
    assert proc.returncode == -signal.SIGKILL, log.read_text(errors="replace")[-3000:]
    late = listeners(broker.port, [availability])
    late.settle()
    assert [(m.payload, m.retain) for m in late.messages(availability)] == [("offline", True)]  # retained


def test_broker_availability_online_then_offline_on_a_clean_close(broker, listeners):
    sink = make_sink(broker.port, client_id="clean-close")
    listener = listeners(broker.port, [sink.availability_topic])
    assert sink.availability_topic == "poseface/clean-close/availability"
    wait_until(lambda: sink.connected, what="the sink to connect")
    listener.wait_for(lambda lis: [m.payload for m in lis.messages()] == ["online"], "online")
    sink.close()
    listener.wait_for(lambda lis: [m.payload for m in lis.messages()] == ["online", "offline"], "offline")
    late = listeners(broker.port, [sink.availability_topic])
    late.settle()
    assert [(m.payload, m.retain) for m in late.messages(sink.availability_topic)] == [("offline", True)]


# ----------------------------------------------------------------------------- Home Assistant


def _check_discovery(received: list[Received], node_id: str, prefix: str = "homeassistant") -> dict[str, dict]:
    """Each discovery config checked against HA's topic layout and required fields; by object id."""
    configs = {}
    for m in received:
        parts = m.topic.split("/")
        assert len(parts) == 5 and parts[0] == prefix and parts[4] == "config", m.topic
        component, node, object_id = parts[1:4]
        assert component in ("sensor", "binary_sensor") and node == node_id, m.topic
        assert ID_CHARS.fullmatch(node) and ID_CHARS.fullmatch(object_id), m.topic
        config = json.loads(m.payload)
        assert isinstance(config, dict)
        for key in ("name", "unique_id", "state_topic", "availability_topic", "device", "origin"):
            assert key in config, f"{m.topic}: no {key}"
        assert config["availability_topic"] == f"poseface/{node_id}/availability"
        assert (config["payload_available"], config["payload_not_available"]) == ("online", "offline")
        for key in ("state_topic", "availability_topic", "json_attributes_topic"):
            if key in config:
                assert config[key] and not set("+#") & set(config[key]), f"{m.topic}: {key} {config[key]!r}"
        device = config["device"]
        assert device["identifiers"] and all(isinstance(i, str) and i for i in device["identifiers"])
        assert device["name"] and device["manufacturer"] == "poseface-edge" and device["sw_version"]
        assert config["origin"]["name"] == "poseface-edge"
        configs[object_id] = {"component": component, **config}
    assert len({c["unique_id"] for c in configs.values()}) == len(configs)  # unique ids are unique
    assert len({json.dumps(c["device"], sort_keys=True) for c in configs.values()}) == 1  # one device per camera
    return configs


def _entity(configs: dict, suffix: str) -> dict:
    [config] = [c for object_id, c in configs.items() if object_id.endswith("_" + suffix)]
    return config


def _check_entities(configs: dict) -> None:
    assert len(configs) == 3
    last = _entity(configs, "last_person")
    assert last["component"] == "sensor" and last["name"] == "Last recognised person"
    assert last["json_attributes_topic"] == last["state_topic"] and "value_json.person" in last["value_template"]
    unknown = _entity(configs, "unknown_face")
    assert unknown["component"] == "binary_sensor" and unknown["name"] == "Unknown face present"
    assert (unknown["payload_on"], unknown["payload_off"]) == ("ON", "OFF")
    people = _entity(configs, "people_in_view")
    assert people["component"] == "sensor" and people["name"] == "People in view"
    assert people["state_class"] == "measurement"


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"homeassistant": "yes"}, "homeassistant: expected true or false"),
        ({"discovery_prefix": "home/#"}, "discovery_prefix: expected a topic prefix"),
        ({"discovery_prefix": "homeassistant/"}, "discovery_prefix: expected a topic prefix"),
        ({"client_id": " "}, "client_id: expected a non-empty client id"),
    ],
)
def test_broker_sink_refuses_bad_home_assistant_options_in_one_line(options, field):
    from edge.app.sinks import SinkError, build_sink

    with pytest.raises(SinkError) as err:  # refused before any connection is tried
        build_sink({"type": "mqtt", "host": "127.0.0.1", **options})
    message = str(err.value)
    assert message.startswith(f"mqtt sink: {field}") and "\n" not in message, message


def test_broker_home_assistant_states_follow_the_events(broker, listeners):
    """The sink alone (no models, no real data): discovery at announce, states from events,
    republished after the broker restarts, availability retained."""
    listener = listeners(broker.port, ["homeassistant/#", "poseface/#"])
    sink = make_sink(broker.port, client_id="door-cam", homeassistant=True)
    try:
        sink.announce_camera("camera0")
        wait_until(lambda: sink.connected, what="the sink to connect")
        listener.wait_for(lambda lis: len(lis.messages(prefix="homeassistant/")) >= 3, "3 discovery configs")
        configs = _check_discovery(listener.messages(prefix="homeassistant/"), "door-cam")
        _check_entities(configs)
        state = {suffix: _entity(configs, suffix)["state_topic"] for suffix in SUFFIXES}
        for event in (
            sample(1, track_id=1, kind="unknown_face"),
            sample(2, track_id=2, kind="recognised", name="Ada"),
            sample(3, track_id=1, kind="track_ended"),
            sample(4, track_id=2, kind="track_ended"),
            sample(5, track_id=3, kind="recognised", name="Grace"),
        ):
            sink.emit(event)
        listener.wait_for(
            lambda lis: (
                [json.loads(m.payload)["person"] for m in lis.messages(state["last_person"])] == ["Ada", "Grace"]
            ),
            "Ada then Grace as last recognised",
        )
        listener.wait_for(
            lambda lis: [m.payload for m in lis.messages(state["people_in_view"])] == ["0", "1", "2", "1", "0", "1"],
            "people counts",
        )
        assert [m.payload for m in listener.messages(state["unknown_face"])] == ["OFF", "ON", "OFF"]
        last = json.loads(listener.messages(state["last_person"])[-1].payload)
        assert last == {"person": "Grace", "score": 0.7, "yaw": -31.5, "track_id": 3, "time": last["time"], "frame": 5}

        # A broker that lost everything (no persistence): the sink publishes it all again.
        broker.stop()
        wait_until(lambda: not sink.connected, what="the sink to notice the broker is gone")
        broker.start()
        again = listeners(broker.port, ["homeassistant/#", "poseface/#"])
        wait_until(lambda: sink.connected, what="the sink to reconnect")
        again.wait_for(
            lambda lis: (
                len(lis.messages(prefix="homeassistant/")) == 3
                and [m.payload for m in lis.messages(state["people_in_view"])] == ["1"]
            ),
            "the configs and the states again",
        )
        late = listeners(broker.port, ["homeassistant/#", "poseface/#"])  # after it all: retained
        late.settle()
        assert all(m.retain for m in late.messages())
        _check_entities(_check_discovery(late.messages(prefix="homeassistant/"), "door-cam"))
        assert json.loads(late.messages(state["last_person"])[0].payload)["person"] == "Grace"
        assert [m.payload for m in late.messages(sink.availability_topic)] == ["online"]
    finally:
        sink.close()


def test_broker_home_assistant_removed_by_turning_it_off_or_by_the_switch(broker, listeners, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    label = str(photos)  # what edge.run names a folder source
    node = "remove-test"

    def publish_discovery():
        sink = make_sink(broker.port, client_id=node, homeassistant=True)
        sink.announce_camera(label)
        wait_until(lambda: sink.connected, what="the sink to connect")
        sink.close()
        check = listeners(broker.port, ["homeassistant/#"])
        check.settle()
        _check_entities(_check_discovery(check.messages(), node))
        assert all(m.retain for m in check.messages())

    def retained_configs() -> list[Received]:
        check = listeners(broker.port, ["homeassistant/#", f"poseface/{node}/+/+"])
        check.settle()
        return check.messages()

    # The option removed: the sink clears what it published before, on connecting.
    publish_discovery()
    off = make_sink(broker.port, client_id=node, homeassistant=False)
    off.announce_camera(label)
    wait_until(lambda: off.connected, what="the sink to connect")
    off.close()
    assert retained_configs() == []

    # The switch: python -m edge.run --homeassistant-remove, nothing else (no model loaded).
    publish_discovery()
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "edge.run",
            "--source",
            str(photos),
            "--set",
            _config_arg(_mqtt_table(broker.port, node, homeassistant=True)),
            "--homeassistant-remove",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    assert out.returncode == 0, out.stderr
    assert "cleared 6 Home Assistant topics" in out.stderr
    assert retained_configs() == []

    # Without an mqtt sink the switch is a one-line error naming what is missing.
    out = subprocess.run(
        [sys.executable, "-m", "edge.run", "--source", str(photos), "--homeassistant-remove"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "edge.run: command line: --homeassistant-remove: expected an mqtt sink in events.sinks, got none"
    ]


def _cfp(real_data: Path, person: int, view: str, n: int) -> Path:
    path = real_data / "cfp" / "Data" / "Images" / f"{person:03d}" / view / f"{n:02d}.jpg"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    return path


def test_broker_home_assistant_discovery_and_states_while_edge_run_streams_real_photos(
    real_data, broker, listeners, tmp_path
):
    if not SHIPPED_IDENTITY.exists():
        pytest.skip(f"the shipped identity model {SHIPPED_IDENTITY} is absent")
    enrol, photos = tmp_path / "enrol", tmp_path / "photos"
    enrol.mkdir()
    photos.mkdir()
    for n in (1, 2):
        shutil.copy(_cfp(real_data, 401, "frontal", n), enrol / f"{n}.jpg")
    # The enrolled person and two strangers (CFP fold 9: never trained on), interleaved.
    shutil.copy(_cfp(real_data, 401, "frontal", 3), photos / "1_p401.jpg")
    shutil.copy(_cfp(real_data, 402, "frontal", 1), photos / "2_stranger.jpg")
    shutil.copy(_cfp(real_data, 401, "frontal", 4), photos / "3_p401.jpg")
    shutil.copy(_cfp(real_data, 403, "frontal", 1), photos / "4_stranger.jpg")
    gallery = tmp_path / "g.sqlite"
    subprocess.run(
        [sys.executable, "-m", "edge.enroll", "add", "p401", "--images", str(enrol), "--gallery", str(gallery)],
        check=True,
        capture_output=True,
        cwd=REPO,
        timeout=RUN_TIMEOUT_S,
    )

    node = "ha-door"
    listener = listeners(broker.port, ["homeassistant/#", "poseface/#"])
    events_file = tmp_path / "events.jsonl"
    run = [
        sys.executable,
        "-m",
        "edge.run",
        "--source",
        str(photos),
        "--gallery",
        str(gallery),
        "--set",
        _config_arg(
            _mqtt_table(broker.port, node, homeassistant=True),
            '{type="jsonl", path=' + json.dumps(str(events_file)) + "}",
        ),
    ]
    out = subprocess.run(run, capture_output=True, text=True, cwd=REPO, timeout=RUN_TIMEOUT_S)
    assert out.returncode == 0, out.stderr
    availability = f"poseface/{node}/availability"
    listener.wait_for(
        lambda lis: [m.payload for m in lis.messages(availability)] == ["online", "offline"], "online then offline"
    )
    listener.settle()

    # What the runner saw, from its own JSON lines.
    seen = [json.loads(line) for line in events_file.read_text().splitlines()]
    recognised = [e for e in seen if e["type"] == "recognised"]
    unknown = [e for e in seen if e["type"] == "unknown_face"]
    assert [e["identity"] for e in recognised] == ["p401", "p401"], seen
    assert {e["frame"] for e in unknown} == {"2_stranger.jpg", "4_stranger.jpg"}, seen

    # Discovery: HA's topic layout and fields, published when the runner started.
    configs = _check_discovery(listener.messages(prefix="homeassistant/"), node)
    _check_entities(configs)
    state = {suffix: _entity(configs, suffix)["state_topic"] for suffix in SUFFIXES}
    assert all(topic.startswith(f"poseface/{node}/") for topic in state.values()), state

    # The states follow the events: the enrolled person's name (with score and yaw) as last
    # recognised, "unknown face present" ON for each stranger, people in view back to 0.
    last = [json.loads(m.payload) for m in listener.messages(state["last_person"])]
    assert [(p["person"], p["score"], p["yaw"], p["frame"]) for p in last] == [
        (e["identity"], e["score"], e["yaw"], e["frame"]) for e in recognised
    ]
    flags = [m.payload for m in listener.messages(state["unknown_face"])]
    assert flags == ["OFF"] + ["ON", "OFF"] * len(unknown)  # stills: each stranger's track ends in its frame
    counts = [m.payload for m in listener.messages(state["people_in_view"])]
    assert counts == ["0"] + ["1", "0"] * (len(recognised) + len(unknown))

    # Retained for HA to read when it (re)starts: configs, last states, availability.
    late = listeners(broker.port, ["homeassistant/#", "poseface/#"])
    late.settle()
    retained = {m.topic: m.payload for m in late.messages() if m.retain}
    assert set(configs) == {t.split("/")[3] for t in retained if t.startswith("homeassistant/")}
    assert json.loads(retained[state["last_person"]])["person"] == "p401"
    assert retained[state["unknown_face"]] == "OFF" and retained[state["people_in_view"]] == "0"
    assert retained[availability] == "offline"
