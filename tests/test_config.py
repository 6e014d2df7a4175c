"""The runtime config: profiles and the example load, every kind of mistake is one line naming its key."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from edge.app.config.errors import ConfigError
from edge.app.config.load import apply_overrides, load_config, main, source_overrides
from edge.app.config.schema import (
    JsonlSink,
    MqttSink,
    RuntimeConfig,
    StdoutSink,
    WebhookSink,
    config_to_dict,
    field_docs,
)
from edge.runtime.meta import load_meta, variant_path
from edge.shipped import SHIPPED_LANDMARKS

FIRMWARE = Path(__file__).resolve().parents[1] / "firmware_configs"
EXAMPLE = FIRMWARE / "config.example.toml"
PROFILES = sorted((FIRMWARE / "profiles").glob("*.toml"))
PROFILE_NAMES = [p.stem for p in PROFILES]


def write(folder: Path, text: str, name: str = "config.toml") -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# ----------------------------------------------------------------------------- shipped files


def test_the_four_device_profiles_are_shipped():
    assert {"pi4", "pi5", "jetson_nano", "jetson_orin"} <= set(PROFILE_NAMES)


@pytest.mark.parametrize("name", PROFILE_NAMES)
@pytest.mark.parametrize("with_example", [False, True], ids=["profile_alone", "under_example"])
def test_every_profile_loads(name, with_example):
    cfg = load_config(EXAMPLE if with_example else None, profile=name)
    assert cfg.profile == name
    assert str(FIRMWARE / "profiles" / f"{name}.toml") in cfg.loaded_from
    # Pis run the int8 variants (they meet the accuracy targets; quantization.report), Jetsons fp32
    # (TensorRT makes its own fp16 engines).
    want = "int8" if name.startswith("pi") else "fp32"
    assert cfg.runtime.precision == want
    assert cfg.landmarks.model == variant_path(SHIPPED_LANDMARKS, "onnx", want)
    assert cfg.runtime.providers[-1] == "CPUExecutionProvider"
    assert cfg.detector.model_range() in ("short", "full")
    if name.startswith("pi"):
        assert cfg.source.type == "picamera2"
        assert cfg.runtime.providers == ("CPUExecutionProvider",)
    if name.startswith("jetson"):
        assert cfg.source.type == "jetson_csi"
        assert cfg.runtime.providers[:2] == ("TensorrtExecutionProvider", "CUDAExecutionProvider")
        pipeline = cfg.source.csi_pipeline()
        assert pipeline.startswith("nvarguscamerasrc sensor-id=0 ! ")
        assert f"width={cfg.source.width},height={cfg.source.height},framerate=30/1" in pipeline
        assert "nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! appsink" in pipeline
        assert "drop=1" in pipeline and "max-buffers=1" in pipeline and "{" not in pipeline
        assert cfg.runtime.provider_options()["TensorrtExecutionProvider"]["trt_engine_cache_enable"] == "True"
    if with_example:  # the file overrides the profile where both speak
        assert cfg.gallery.path == Path("/var/lib/poseface-edge/gallery.sqlite")


def test_a_profile_can_be_named_by_path_and_from_the_file(tmp_path):
    by_path = load_config(None, profile=str(FIRMWARE / "profiles" / "pi5.toml"))
    assert by_path.source.type == "picamera2" and by_path.detector.range == "full"
    cfg = load_config(write(tmp_path, 'profile = "jetson_orin"\n'))
    assert cfg.profile == "jetson_orin" and cfg.source.width == 1920


def test_the_example_config_loads():
    cfg = load_config(EXAMPLE)
    assert cfg.loaded_from == (str(EXAMPLE),)
    assert cfg.source.type == "v4l2" and cfg.source.device == "/dev/video0"
    assert cfg.events.sinks == (StdoutSink(), JsonlSink(path=Path("/var/lib/poseface-edge/events.jsonl")))
    assert cfg.matching.thresholds == "from_model_metadata"
    assert cfg.health.bind == "127.0.0.1" and not cfg.health.enabled
    assert not cfg.privacy.store_face_images
    json.dumps(config_to_dict(cfg))  # JSON-able as it is (the health endpoint can show it)


def _example_keys() -> set[str]:
    """Every key the example writes or shows commented out, as 'section.key' ('events.sinks.key' for sinks)."""
    keys, section = set(), ""
    for line in EXAMPLE.read_text().splitlines():
        stripped = line.lstrip("# ").rstrip()
        if re.fullmatch(r"\[\[events\.sinks\]\]", stripped):
            section = "events.sinks"
        elif re.fullmatch(r"\[(\w+)\]", stripped):
            section = stripped[1:-1]
        elif m := re.match(r"(\w+) = ", stripped):
            keys.add(f"{section}.{m.group(1)}" if section else m.group(1))
    return keys


def test_the_example_documents_every_key():
    documented = _example_keys()
    expected = {key for key in field_docs() if key != "events.sinks"}
    for sink in (StdoutSink, JsonlSink, MqttSink, WebhookSink):
        expected |= {f"events.sinks.{f.name}" for f in dataclasses.fields(sink)}
    assert expected - documented == set()
    assert documented - expected == set()  # nothing documented that the schema does not know


def test_the_defaults_alone_are_valid(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None)
    assert cfg == dataclasses.replace(RuntimeConfig(), gallery=cfg.gallery, loaded_from=())
    assert cfg.gallery.path == tmp_path / "gallery.sqlite"  # a relative default lands in the current folder


# ----------------------------------------------------------------------------- errors

# (TOML text, the key the error must name, a fragment of the message)
BAD = {
    "unknown key": ('[source]\ndevce = "/dev/video1"\n', "source.devce", "got 'devce'"),
    "unknown top-level key": ("cameras = 2\n", "cameras", "a key of the top level"),
    "unknown key in a sink": ('[[events.sinks]]\ntype = "stdout"\ncolour = 1\n', "events.sinks[0].colour", "colour"),
    "unknown sink type": ('[[events.sinks]]\ntype = "email"\n', "events.sinks[0].type", "got 'email'"),
    "string for a number": ('[source]\nwidth = "wide"\n', "source.width", "expected an integer in [16, 8192]"),
    "boolean for an integer": ("[tracker]\nmin_hits = true\n", "tracker.min_hits", "got True"),
    "integer for a boolean": ("[source]\nloop = 1\n", "source.loop", "expected true or false"),
    "value for a table": ("source = 3\n", "source", "expected a table"),
    "string for a list": ('[runtime]\nproviders = "CPUExecutionProvider"\n', "runtime.providers", "list"),
    "misspelt provider": ('[runtime]\nproviders = ["CUDA"]\n', "runtime.providers[0]", "got 'CUDA'"),
    "zero fps": ("[source]\nfps = 0\n", "source.fps", "expected a number in (0, 240], got 0"),
    "nan fps": ("[source]\nfps = nan\n", "source.fps", "got nan"),
    "face fraction above 1": ("[detector]\nexpected_face_fraction = 1.5\n", "detector.expected_face_fraction", "1.5"),
    "port out of range": ("[health]\nport = 70000\n", "health.port", "in [1, 65535]"),
    "unknown choice": ('[detector]\nrange = "medium"\n', "detector.range", "one of 'short', 'full', 'auto'"),
    "unknown source type": ('[source]\ntype = "webcam"\n', "source.type", "'picamera2'"),
    "yaw edges not increasing": ("[matching]\nyaw_bin_edges = [60.0, 30.0]\n", "matching.yaw_bin_edges[1]", "30.0"),
    "threshold count": ("[matching]\nthresholds = [0.5, 0.4]\n", "matching.thresholds", "expected 4 thresholds"),
    "threshold range": ("[matching]\nthresholds = [0.5, 0.4, 2.0, 0.3]\n", "matching.thresholds[2]", "[-1, 1]"),
    "backoff upside down": (
        "[source]\nreconnect_initial_s = 10\nreconnect_max_s = 5\n",
        "source.reconnect_max_s",
        "at least",
    ),
    "missing landmark model": ('[landmarks]\nmodel = "missing.onnx"\n', "landmarks.model", "does not exist"),
    "missing embedding model": ('[embedding]\nmodel = "models/id.onnx"\n', "embedding.model", "does not exist"),
    "model for another backend": (
        f'[runtime]\nbackend = "tflite"\n[landmarks]\nmodel = "{SHIPPED_LANDMARKS.as_posix()}"\n',
        "landmarks.model",
        "a .tflite model",
    ),
    "unknown precision": ('[runtime]\nprecision = "int4"\n', "runtime.precision", "int8"),
    "rtsp without a URL": ('[source]\ntype = "rtsp"\n', "source.uri", "rtsp://"),
    "http with an rtsp URL": ('[source]\ntype = "http"\nuri = "rtsp://cam"\n', "source.uri", "http://"),
    "missing video file": ('[source]\ntype = "video"\npath = "clip.mp4"\n', "source.path", "does not exist"),
    "folder without a path": ('[source]\ntype = "folder"\n', "source.path", "got nothing"),
    "pipeline without appsink": (
        '[source]\ntype = "jetson_csi"\npipeline = "nvarguscamerasrc ! fakesink"\n',
        "source.pipeline",
        "appsink",
    ),
    "pipeline with an unknown placeholder": (
        '[source]\ntype = "jetson_csi"\npipeline = "nvarguscamerasrc sensor-mode={mode} ! appsink"\n',
        "source.pipeline",
        "{width}",
    ),
    "jsonl sink without a path": ('[[events.sinks]]\ntype = "jsonl"\n', "events.sinks[0].path", "(required)"),
    "webhook with another scheme": (
        '[[events.sinks]]\ntype = "webhook"\nurl = "ftp://x"\n',
        "events.sinks[0].url",
        "https://",
    ),
    "mqtt password file missing": (
        '[[events.sinks]]\ntype = "mqtt"\nhost = "broker"\npassword_file = "mqtt.pw"\n',
        "events.sinks[0].password_file",
        "does not exist",
    ),
    "health exposed without a token": (
        '[health]\nenabled = true\nbind = "0.0.0.0"\n',
        "health.token_file",
        "not loopback",
    ),
    "health bind not an address": ('[health]\nbind = "everywhere"\n', "health.bind", "an IP address"),
    "face images without a folder": ("[privacy]\nstore_face_images = true\n", "privacy.face_images_dir", "folder"),
    "credential with a slash": ('[gallery]\nkey_credential = "../key"\n', "gallery.key_credential", "no '/'"),
    "stranger rate out of range": ("[matching]\nstranger_rate = 1.5\n", "matching.stranger_rate", "(0, 1)"),
    "layer bookkeeping is not a key": ('loaded_from = ["x"]\n', "loaded_from", "a key of the top level"),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_each_mistake_is_one_line_naming_file_and_key(tmp_path, case):
    text, key, fragment = BAD[case]
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    err = info.value
    message = str(err)
    assert err.key == key and err.file == str(path)
    assert message.startswith(f"{path}: {key}: expected "), message
    assert ", got " in message and "\n" not in message
    assert fragment in message, message


def test_a_missing_model_names_the_resolved_path(tmp_path):
    with pytest.raises(ConfigError, match=re.escape(str(tmp_path / "missing.onnx"))):
        load_config(write(tmp_path, '[landmarks]\nmodel = "missing.onnx"\n'))


def test_a_model_without_its_metadata_is_refused(tmp_path):
    (tmp_path / "pipnet.onnx").write_bytes(SHIPPED_LANDMARKS.read_bytes())
    with pytest.raises(
        ConfigError, match=r"landmarks\.model: expected a model with its metadata beside it \(pipnet\.json\)"
    ):
        load_config(write(tmp_path, '[landmarks]\nmodel = "pipnet.onnx"\n'))


def test_the_error_names_the_layer_the_bad_value_came_from(tmp_path):
    profile = write(tmp_path, "[runtime]\nthreads = 0\n", "profiles/broken.toml")
    config = write(tmp_path, 'profile = "broken"\n')
    with pytest.raises(ConfigError) as info:
        load_config(config)
    assert info.value.file == str(profile) and info.value.key == "runtime.threads"
    # ... and a file that fixes it wins over the profile
    write(tmp_path, 'profile = "broken"\n[runtime]\nthreads = 2\n')
    assert load_config(config).runtime.threads == 2
    with pytest.raises(ConfigError, match=r"^command line: source\.fps: expected a number"):
        load_config(config, overrides={"source.fps": "fast"})


def test_bad_profiles_and_files(tmp_path):
    with pytest.raises(ConfigError, match=r"^command line: profile: expected a profile name \(.*pi4.*\)"):
        load_config(None, profile="pi3")
    config = write(tmp_path, "profile = 4\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(config))}: profile: .*got 4$"):
        load_config(config)
    write(tmp_path, 'profile = "pi4"\n', "profiles/nested.toml")
    with pytest.raises(ConfigError, match=r"nested\.toml: profile: expected no profile key inside a profile"):
        load_config(None, profile=str(tmp_path / "profiles" / "nested.toml"))
    broken = write(tmp_path, "[source\n", "broken.toml")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(broken))}: expected valid TOML, got a syntax error"):
        load_config(broken)
    with pytest.raises(ConfigError, match=r"nowhere\.toml: expected a TOML config file, got no such file"):
        load_config(tmp_path / "nowhere.toml")


# ----------------------------------------------------------------------------- layers, overrides, paths


def test_profile_then_file_then_command_line(tmp_path):
    config = write(tmp_path, 'profile = "pi4"\n[runtime]\nthreads = 1\n')
    cfg = load_config(config)
    assert cfg.source.type == "picamera2"  # from the profile
    assert cfg.runtime.threads == 1  # the file beats the profile
    assert cfg.source.fps == 10.0  # the profile beats the defaults
    cfg = load_config(config, overrides={"runtime.threads": 4, "source.fps": "30", "service.watchdog": "false"})
    assert (cfg.runtime.threads, cfg.source.fps, cfg.service.watchdog) == (4, 30.0, False)
    assert cfg.loaded_from[-1] == "command line"
    # --profile beats the file's profile key
    cfg = load_config(config, profile="jetson_orin")
    assert cfg.profile == "jetson_orin" and cfg.source.type == "jetson_csi" and cfg.runtime.threads == 1


def test_apply_overrides(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(EXAMPLE)
    changed = apply_overrides(
        cfg, {"source.type": "rtsp", "source.uri": "rtsp://cam.local/1", "gallery.path": "g.sqlite"}
    )
    assert changed.source.type == "rtsp" and changed.source.uri == "rtsp://cam.local/1"
    assert changed.gallery.path == tmp_path / "g.sqlite"  # command-line paths are relative to the current folder
    assert changed.events == cfg.events and changed.landmarks == cfg.landmarks
    assert changed.loaded_from == cfg.loaded_from + ("command line",)
    assert apply_overrides(cfg, {"embedding.model": None}).embedding.model is None
    with pytest.raises(ConfigError, match=r"^command line: source\.uri: expected an rtsp:// or rtsps:// URL"):
        apply_overrides(cfg, {"source.type": "rtsp"})
    with pytest.raises(ConfigError, match=r"^command line: source\.colour: expected a key of \[source\]"):
        apply_overrides(cfg, {"source.colour": "red"})


def test_config_to_dict_round_trips(tmp_path):
    (tmp_path / "pw").write_text("secret\n")
    cfg = load_config(
        write(
            tmp_path,
            '[[events.sinks]]\ntype = "mqtt"\nhost = "broker"\npassword_file = "pw"\n'
            '[[events.sinks]]\ntype = "webhook"\nurl = "https://h/x"\n'
            "[matching]\nthresholds = [0.5, 0.4, 0.3, 0.25]\n",
        )
    )
    assert cfg.events.sinks == (
        MqttSink(host="broker", password_file=tmp_path / "pw"),
        WebhookSink(url="https://h/x"),
    )
    again = apply_overrides(cfg, {})
    assert dataclasses.replace(again, loaded_from=cfg.loaded_from) == cfg
    assert json.loads(json.dumps(config_to_dict(cfg)))["events"]["sinks"][0]["password_file"] == str(tmp_path / "pw")


def test_relative_paths_resolve_against_the_file_that_wrote_them(tmp_path):
    video = write(tmp_path, "not really a video", "site/clips/door.mp4")
    config = write(
        tmp_path,
        'profile = "local"\n[source]\ntype = "video"\npath = "clips/door.mp4"\n'
        '[[events.sinks]]\ntype = "jsonl"\npath = "out/events.jsonl"\n',
        "site/config.toml",
    )
    write(tmp_path, '[runtime]\ntrt_cache_dir = "cache"\n', "site/profiles/local.toml")
    cfg = load_config(config)
    assert cfg.source.path == video
    assert cfg.events.sinks[0].path == tmp_path / "site" / "out" / "events.jsonl"
    assert cfg.gallery.path == tmp_path / "site" / "gallery.sqlite"  # the default, beside the config
    assert cfg.runtime.trt_cache_dir == tmp_path / "site" / "profiles" / "cache"  # beside the profile
    assert cfg.profile == "local"  # found in the config's own profiles/ folder first


def test_detector_range_and_options():
    assert load_config(None, overrides={"detector.expected_face_fraction": 0.3}).detector.model_range() == "short"
    cfg = load_config(None, overrides={"detector.expected_face_fraction": 0.1, "detector.score_threshold": 0.6})
    assert cfg.detector.model_range() == "full"
    assert cfg.detector.build_options(threads=3) == {
        "type": "blazeface",
        "range": "full",
        "nms_iou": 0.3,
        "threads": 3,
        "score_threshold": 0.6,
    }
    assert load_config(None, overrides={"detector.type": "haar"}).detector.build_options() == {
        "type": "haar",
        "nms_iou": 0.3,
    }


def test_yaw_bins():
    matching = load_config(None).matching
    assert [matching.yaw_bin(y) for y in (0, 14.9, 15, -29.9, 30, -45, 60, -90)] == [0, 0, 1, 1, 2, 3, 3, 3]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("/dev/video2", {"source.type": "v4l2", "source.device": "/dev/video2"}),
        ("0", {"source.type": "v4l2", "source.device": "0"}),
        ("picamera", {"source.type": "picamera2"}),
        ("csi", {"source.type": "jetson_csi"}),
        ("rtsp://cam/1", {"source.type": "rtsp", "source.uri": "rtsp://cam/1"}),
        ("https://cam/mjpeg", {"source.type": "http", "source.uri": "https://cam/mjpeg"}),
        ("clip.mp4", {"source.type": "video", "source.path": "clip.mp4"}),
    ],
)
def test_source_overrides(value, expected):
    assert source_overrides(value) == expected


def test_source_overrides_folder(tmp_path):
    assert source_overrides(str(tmp_path)) == {"source.type": "folder", "source.path": str(tmp_path)}
    cfg = load_config(None, overrides=source_overrides(str(tmp_path)))
    assert cfg.source.type == "folder" and cfg.source.path == tmp_path


def test_the_check_command(tmp_path, capsys):
    assert main([str(EXAMPLE), "--profile", "pi4", "--set", "source.fps=12"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["source"]["fps"] == 12.0 and printed["source"]["type"] == "picamera2"
    bad = write(tmp_path, "[source]\nfps = -1\n")
    assert main([str(bad)]) == 2
    err = capsys.readouterr().err
    assert err == f"{bad}: source.fps: expected a number in (0, 240], got -1\n"


@pytest.mark.parametrize("backend", ["onnxruntime", "tflite"])
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_precision_picks_the_shipped_variant_for_the_backend(tmp_path, backend, precision):
    from edge.app.config.load import shipped_variant
    from edge.shipped import SHIPPED_IDENTITY

    if backend == "onnxruntime" and precision == "fp16":
        path = write(tmp_path, f'[runtime]\nbackend = "{backend}"\nprecision = "{precision}"\n')
        with pytest.raises(ConfigError) as info:
            load_config(path)  # no fp16 ONNX is shipped: said, naming the key
        assert info.value.key == "runtime.precision" and "not installed" in str(info.value)
        return
    cfg = load_config(write(tmp_path, f'[runtime]\nbackend = "{backend}"\nprecision = "{precision}"\n'))
    for model, shipped in ((cfg.landmarks.model, SHIPPED_LANDMARKS), (cfg.embedding.model, SHIPPED_IDENTITY)):
        assert model == shipped_variant(shipped, backend, precision) and model.is_file()
        assert load_meta(model.with_suffix(".json")).precision == precision
    # an explicit model path is never swapped
    explicit = write(
        tmp_path, f'[runtime]\nprecision = "int8"\n[landmarks]\nmodel = "{SHIPPED_LANDMARKS.as_posix()}"\n'
    )
    assert load_config(explicit).landmarks.model == SHIPPED_LANDMARKS
