"""The systemd side: sd_notify over a real datagram socket, the progress-driven watchdog, SIGTERM,
onnxruntime provider fallback, and the unit file with its hardening."""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest

from edge.app.config.load import load_config
from edge.app.service import (
    CPU_PROVIDER,
    Watchdog,
    choose_providers,
    credential_path,
    install_sigterm_handler,
    notify,
)
from edge.shipped import SHIPPED_LANDMARKS

FIRMWARE = Path(__file__).resolve().parents[1] / "firmware_configs"
UNIT = FIRMWARE / "poseface-edge.service"
JETSON_DROPIN = FIRMWARE / "jetson" / "poseface-edge.service.d" / "jetson.conf"


# ----------------------------------------------------------------------------- a real NOTIFY_SOCKET


class NotifySocket:
    """A unix datagram socket standing in for systemd's; ``address`` is what NOTIFY_SOCKET says."""

    def __init__(self, abstract: bool = False):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = f"poseface-test-{uuid.uuid4().hex}"
            self.sock.bind("\0" + name)
            self.address = "@" + name
            self._folder = None
        else:
            # A short folder: unix socket paths are limited to 107 bytes, pytest's tmp_path can be longer.
            self._folder = tempfile.mkdtemp(prefix="pfe-", dir="/tmp")
            self.address = os.path.join(self._folder, "notify")
            self.sock.bind(self.address)

    def receive(self, timeout: float = 1.0) -> bytes | None:
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(4096)
        except socket.timeout:
            return None

    def receive_all(self, quiet_for: float = 0.05) -> list[bytes]:
        messages = []
        while (message := self.receive(quiet_for)) is not None:
            messages.append(message)
        return messages

    def close(self) -> None:
        self.sock.close()
        if self._folder:
            shutil.rmtree(self._folder, ignore_errors=True)


@pytest.fixture(params=[False, True], ids=["path", "abstract"])
def notify_socket(request, monkeypatch):
    listener = NotifySocket(abstract=request.param)
    monkeypatch.setenv("NOTIFY_SOCKET", listener.address)
    yield listener
    listener.close()


def test_notify_sends_the_exact_bytes(notify_socket):
    assert notify(READY=1, STATUS="watching /dev/video0")
    assert notify_socket.receive() == b"READY=1\nSTATUS=watching /dev/video0"
    assert notify("WATCHDOG=1")
    assert notify_socket.receive() == b"WATCHDOG=1"
    assert notify(STOPPING=1)
    assert notify_socket.receive() == b"STOPPING=1"


def test_a_newline_in_a_value_cannot_forge_an_assignment(notify_socket):
    assert notify(STATUS="camera lost\nREADY=1")
    assert notify_socket.receive() == b"STATUS=camera lost READY=1"


def test_without_systemd_notify_is_a_quiet_no_op(monkeypatch, caplog):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify(READY=1) is False
    with caplog.at_level(logging.WARNING, logger="edge.service"):
        assert notify(READY=1, env={"NOTIFY_SOCKET": "/nonexistent/notify"}) is False  # gone: logged, no raise
    assert "cannot send" in caplog.text
    with pytest.raises(ValueError, match="KEY=VALUE"):
        notify("READY")


# ----------------------------------------------------------------------------- watchdog


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_watchdog_pings_at_half_the_timeout_only_while_beats_arrive(notify_socket):
    clock = FakeClock()
    env = {"NOTIFY_SOCKET": notify_socket.address, "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}
    dog = Watchdog.from_env(env, clock=clock)
    assert dog.enabled and dog.timeout_s == 2.0 and dog.interval_s == 1.0

    pinged = []
    for step in range(31):  # a frame every 0.1 s for 3 s
        clock.now = step * 0.1
        pinged.append(dog.beat())
    assert [i for i, p in enumerate(pinged) if p] == [0, 10, 20, 30]
    assert notify_socket.receive_all() == [b"WATCHDOG=1"] * 4

    clock.now = 30.0  # the loop stalled for 27 s: no beats, so nothing was sent meanwhile
    assert notify_socket.receive_all() == []
    assert dog.beat()  # it recovers: the next frame pings at once
    assert notify_socket.receive_all() == [b"WATCHDOG=1"]
    assert dog.pings == 5


def test_a_hung_frame_loop_stops_the_pings(notify_socket):
    """A real loop on a thread; its stage hangs; after the hang no datagram arrives."""
    env = {"NOTIFY_SOCKET": notify_socket.address, "WATCHDOG_USEC": "100000"}  # pings every 50 ms
    dog = Watchdog.from_env(env)
    hang, hung, release = threading.Event(), threading.Event(), threading.Event()
    last_beat = []

    def frame_loop():
        while not release.is_set():
            if hang.is_set():
                hung.set()
                release.wait()  # a stage stuck in a camera read or an inference call
                break
            time.sleep(0.005)  # "process a frame"
            dog.beat()
            last_beat[:] = [time.monotonic()]

    worker = threading.Thread(target=frame_loop, daemon=True)
    worker.start()
    received = []
    deadline = time.monotonic() + 0.4
    while time.monotonic() < deadline:
        if (message := notify_socket.receive(0.05)) is not None:
            received.append(message)
    hang.set()
    assert hung.wait(5)
    notify_socket.receive_all(0.02)  # a ping sent just before the hang may still be queued
    after_hang = notify_socket.receive_all(0.4)  # eight ping intervals
    release.set()
    worker.join(2)

    assert len(received) >= 4 and set(received) == {b"WATCHDOG=1"}
    assert after_hang == []
    assert time.monotonic() - last_beat[0] >= 0.4


@pytest.mark.parametrize(
    "env",
    [{}, {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, {"WATCHDOG_USEC": "garbage"}],
    ids=["no watchdog", "another process's", "malformed"],
)
def test_watchdog_disabled(env):
    sent = []
    dog = Watchdog.from_env(env, send=lambda *a, **k: sent.append(a) or True)
    assert not dog.enabled and not dog.beat() and sent == []


def test_watchdog_off_by_config():
    dog = Watchdog.from_env({"WATCHDOG_USEC": "30000000"}, enabled=load_config(None).service.watchdog is False)
    assert not dog.enabled


# ----------------------------------------------------------------------------- SIGTERM


def test_sigterm_calls_back_and_tells_systemd(notify_socket):
    calls = []
    before = signal.getsignal(signal.SIGTERM)
    uninstall = install_sigterm_handler(calls.append)
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        deadline = time.monotonic() + 2
        while not calls and time.monotonic() < deadline:
            time.sleep(0.01)  # Python runs the handler between bytecodes of the main thread
    finally:
        uninstall()
    assert calls == [signal.SIGTERM]
    assert notify_socket.receive() == b"STOPPING=1\nSTATUS=stopping (SIGTERM)"
    assert signal.getsignal(signal.SIGTERM) == before  # uninstalled


CHILD = textwrap.dedent(
    """
    import sys, threading, time
    from edge.app.service import install_sigterm_handler

    stop = threading.Event()
    stuck = sys.argv[1] == "stuck"
    install_sigterm_handler(lambda signum: print("stopping", signum, flush=True) or (None if stuck else stop.set()))
    print("ready", flush=True)
    while not stop.is_set():
        time.sleep(0.01)
    print("flushed sinks, closed camera", flush=True)
    """
)


def _start_child(mode: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    env.pop("NOTIFY_SOCKET", None)
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, mode], stdout=subprocess.PIPE, text=True, env=env, start_new_session=True
    )
    assert child.stdout.readline().strip() == "ready"
    return child


def test_a_clean_stop_on_sigterm():
    child = _start_child("clean")
    child.send_signal(signal.SIGTERM)
    out, _ = child.communicate(timeout=10)
    assert child.returncode == 0
    assert out.splitlines() == [f"stopping {int(signal.SIGTERM)}", "flushed sinks, closed camera"]


def test_a_second_sigterm_ends_a_stuck_stop():
    child = _start_child("stuck")
    child.send_signal(signal.SIGTERM)
    assert child.stdout.readline().strip() == f"stopping {int(signal.SIGTERM)}"
    time.sleep(0.1)
    assert child.poll() is None  # the stop is stuck, the process still runs
    child.send_signal(signal.SIGTERM)
    child.wait(timeout=10)
    assert child.returncode == -signal.SIGTERM


# ----------------------------------------------------------------------------- providers


def test_choose_providers_falls_back_to_cpu_with_reasons(caplog):
    import onnxruntime

    assert "CUDAExecutionProvider" not in onnxruntime.get_available_providers()  # as on this machine
    cfg = load_config(None, profile="jetson_nano")
    with caplog.at_level(logging.WARNING, logger="edge.service"):
        providers, reasons = choose_providers(cfg.runtime.providers, options=cfg.runtime.provider_options())
    assert providers == [CPU_PROVIDER]
    assert len(reasons) == 3
    assert reasons[0].startswith("TensorrtExecutionProvider dropped: this onnxruntime offers ")
    assert reasons[1].startswith("CUDAExecutionProvider dropped: ")
    assert "onnxruntime-gpu" in reasons[1]
    assert reasons[2] == (
        "falling back to CPUExecutionProvider: none of TensorrtExecutionProvider, CUDAExecutionProvider is available"
    )
    assert all(reason in caplog.text for reason in reasons)  # each one logged

    # ... and what it chose really runs the shipped landmark model.
    from edge.runtime import load_model

    runner = load_model(SHIPPED_LANDMARKS, threads=1, providers=providers)
    assert runner.meta.name


def test_choose_providers_keeps_what_exists_in_order():
    options = {"TensorrtExecutionProvider": {"trt_fp16_enable": "True"}}
    every = ["TensorrtExecutionProvider", "CUDAExecutionProvider", CPU_PROVIDER]
    providers, reasons = choose_providers(every, available=every, options=options)
    assert providers == [
        ("TensorrtExecutionProvider", {"trt_fp16_enable": "True"}),
        "CUDAExecutionProvider",
        CPU_PROVIDER,
    ]
    assert reasons == []
    providers, reasons = choose_providers(["TensorrtExecutionProvider", "CUDAExecutionProvider"], available=every[1:])
    assert providers == ["CUDAExecutionProvider", CPU_PROVIDER]  # CPU added: it runs what CUDA cannot
    assert len(reasons) == 1 and reasons[0].startswith("TensorrtExecutionProvider dropped")
    assert choose_providers([CPU_PROVIDER], available=[CPU_PROVIDER]) == ([CPU_PROVIDER], [])


def test_credential_path(tmp_path):
    (tmp_path / "gallery.key").write_bytes(b"k" * 32)
    assert credential_path("gallery.key", env={"CREDENTIALS_DIRECTORY": str(tmp_path)}) == tmp_path / "gallery.key"
    assert credential_path("other.key", env={"CREDENTIALS_DIRECTORY": str(tmp_path)}) is None
    assert credential_path("gallery.key", env={}) is None


# ----------------------------------------------------------------------------- the unit file


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A systemd unit file -> {section: {key: [values in order]}} (keys repeat, so not configparser)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert sep and current is not None and re.fullmatch(r"[A-Za-z]+", key.strip()), f"{path}:{number}: {raw!r}"
        assert not line.endswith("\\"), f"{path}:{number}: continuation lines are not used here"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


@pytest.fixture(scope="module")
def unit():
    return parse_unit(UNIT)


def one(unit, key, section="Service"):
    values = unit[section].get(key)
    assert values is not None, f"{UNIT.name}: [{section}] has no {key}="
    return values[-1]


REQUIRED = {
    "Type": "notify",
    "NotifyAccess": "main",
    "Restart": "on-failure",
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "DevicePolicy": "closed",
    "CapabilityBoundingSet": "",
    "AmbientCapabilities": "",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectControlGroups": "yes",
    "RestrictNamespaces": "yes",
    "LockPersonality": "yes",
    "MemoryDenyWriteExecute": "yes",
    "SystemCallArchitectures": "native",
    "StateDirectory": "poseface-edge",
    "ReadWritePaths": "/var/lib/poseface-edge",
}


@pytest.mark.parametrize("key", REQUIRED)
def test_unit_has_each_required_directive(unit, key):
    assert one(unit, key) == REQUIRED[key]


def test_unit_runs_the_runtime_as_an_unprivileged_user_with_a_watchdog(unit):
    assert one(unit, "User") not in ("", "root", "0") and one(unit, "Group") not in ("", "root", "0")
    assert "video" in one(unit, "SupplementaryGroups").split()
    assert 0 < int(one(unit, "WatchdogSec")) <= 60
    assert int(one(unit, "RestartSec")) > 0
    command = one(unit, "ExecStart").split()
    # the one `poseface` command (edge.cli), from the service's own virtual environment
    assert Path(command[0]).is_absolute() and Path(command[0]).name == "poseface"
    assert command[1:] == ["run", "--config", "/etc/poseface-edge/config.toml"]
    assert one(unit, "WantedBy", "Install") == "multi-user.target"
    assert one(unit, "LoadCredential").startswith("gallery.key:/etc/poseface-edge/")


def test_unit_restricts_sockets_and_devices(unit):
    assert set(one(unit, "RestrictAddressFamilies").split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    allowed = unit["Service"]["DeviceAllow"]
    assert "char-video4linux rw" in allowed  # /dev/video*: USB cameras, Pi capture nodes
    for dropin in (allowed, parse_unit(JETSON_DROPIN)["Service"]["DeviceAllow"]):
        for entry in dropin:
            node, flags = entry.split()
            # systemd takes a device path or a char-/block- group (globs only in group names)
            assert re.fullmatch(r"/dev/[\w./-]+|char-[\w*]+|block-[\w*]+", node), entry
            assert set(flags) <= set("rwm"), entry


def test_paths_the_config_writes_are_writable_under_the_unit(unit):
    writable = Path(one(unit, "ReadWritePaths"))
    cfg = load_config(FIRMWARE / "config.example.toml", profile="jetson_nano")
    written = [cfg.gallery.path, cfg.runtime.trt_cache_dir] + [s.path for s in cfg.events.sinks if hasattr(s, "path")]
    assert written and all(writable in p.parents for p in written), written


def test_jetson_dropin(unit):
    dropin = parse_unit(JETSON_DROPIN)
    assert "nvargus-daemon.service" in dropin["Unit"]["After"]
    # the argus client connects to /tmp/argus_socket in the host's /tmp
    assert dropin["Service"]["PrivateTmp"] == ["no"]
    assert set(dropin["Service"]) <= set(unit["Service"]) | {"TimeoutStartSec"}  # only adjusts the unit


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed here")
def test_systemd_accepts_the_unit(tmp_path):
    """systemd's own parser: no unknown keys, no bad values (ExecStart pointed at this environment's
    `poseface` script)."""
    script = Path(sys.executable).parent / "poseface"
    if not script.exists():
        pytest.skip(f"{script}: the package is not installed in this environment (pip install -e .)")
    text = UNIT.read_text().replace("/opt/poseface-edge/venv/bin/poseface", str(script))
    for name, extra in (("poseface-edge.service", ""), ("jetson.service", JETSON_DROPIN.read_text())):
        path = tmp_path / name
        path.write_text(text + "\n" + extra)
        result = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert result.stderr.strip() == "", result.stderr
