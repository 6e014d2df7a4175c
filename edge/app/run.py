"""The runtime: camera to recognised person, as a command and as a systemd service.

    python -m edge.run [--config FILE] [--profile NAME] [--source SPEC] [--gallery FILE]
                       [--set KEY=VALUE ...] [--max-frames N] [--summary-json FILE]
                       [--homeassistant-remove]

``--source`` is a shorthand for the config's [source] table: ``/dev/video0`` or ``0`` (V4L2),
``picamera`` (Raspberry Pi camera), ``csi`` (Jetson CSI), ``rtsp://...``, ``http(s)://...``, a
video file, or a folder of images. Events go to the configured sinks (stdout by default) as
JSON lines; the summary (frames, faces, events, per-stage latency) is printed on stderr at the
end and written to ``--summary-json``. An MQTT sink with ``homeassistant = true`` publishes Home
Assistant discovery for the camera (:mod:`edge.app.homeassistant`); ``--homeassistant-remove`` only
clears it and exits. Errors in the config or the command line are one line on
stderr and exit status 2.

As a service (``firmware_configs/poseface-edge.service``, Type=notify): READY once models,
gallery and camera are up; WATCHDOG while frames are processed (and while a lost camera is
being reopened: an outage is reported in health, not "fixed" by a restart); STATUS every few
seconds; a clean stop on SIGTERM (sinks flushed, tracks ended).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from edge.app.config.errors import ConfigError
from edge.app.config.load import load_config
from edge.app.config.schema import THRESHOLDS_FROM_METADATA, RuntimeConfig

log = logging.getLogger("edge.run")
STATUS_EVERY_S = 5.0
PUBLISH_EVERY_S = 1.0
GALLERY_CHECK_EVERY_S = 2.0


# ----------------------------------------------------------------------------- config -> parts


def source_overrides(spec: str) -> dict[str, Any]:
    """Dotted config overrides for a ``--source`` shorthand."""
    low = spec.lower()
    if low in ("picamera", "picamera2"):
        return {"source.type": "picamera2"}
    if low in ("csi", "jetson_csi"):
        return {"source.type": "jetson_csi"}
    if low.startswith(("rtsp://", "rtsps://")):
        return {"source.type": "rtsp", "source.uri": spec}
    if low.startswith(("http://", "https://")):
        return {"source.type": "http", "source.uri": spec}
    if spec.isdigit() or spec.startswith("/dev/video"):
        return {"source.type": "v4l2", "source.device": spec}
    path = Path(spec)
    if path.is_dir():
        return {"source.type": "folder", "source.path": str(path.absolute())}
    if path.is_file():
        return {"source.type": "video", "source.path": str(path.absolute())}
    raise ConfigError(
        "command line",
        "--source",
        "a camera (/dev/video0, 0, picamera, csi), an rtsp:// or http:// URL, a video file or an image folder",
        repr(spec),
    )


def source_options(cfg) -> dict[str, Any]:
    """The mapping :func:`edge.sources.build_source` takes, from the [source] table."""
    s = cfg.source
    reconnect = {"initial": s.reconnect_initial_s, "max": s.reconnect_max_s}
    if s.type == "folder":
        return {"type": "folder", "path": str(s.path)}
    if s.type == "video":
        return {"type": "video", "path": str(s.path), "loop": s.loop}
    if s.type == "v4l2":
        device: Any = int(s.device) if s.device.isdigit() else s.device
        return {
            "type": "v4l2",
            "device": device,
            "width": s.width,
            "height": s.height,
            "fps": s.fps,
            "reconnect": reconnect,
        }
    if s.type in ("rtsp", "http"):
        return {"type": s.type, "uri": s.uri, "reconnect": {**reconnect, "retry_first_open": True}}
    if s.type == "picamera2":
        return {
            "type": "picamera2",
            "camera_index": s.camera_index,
            "width": s.width,
            "height": s.height,
            "fps": s.fps,
            "reconnect": reconnect,
        }
    if s.type == "jetson_csi":
        return {
            "type": "jetson_csi",
            "camera_index": s.camera_index,
            "width": s.width,
            "height": s.height,
            "fps": s.fps,
            "pipeline": s.csi_pipeline(),
            "reconnect": reconnect,
        }
    raise ConfigError("config", "source.type", "a known source type", repr(s.type))


def matching_thresholds(cfg: RuntimeConfig, embedder):
    """The pose-aware thresholds: the config's list, or the identity model's calibrated ones."""
    from edge.core.matching import YawThresholds

    m = cfg.matching
    if m.thresholds != THRESHOLDS_FROM_METADATA:
        return YawThresholds(tuple(m.yaw_bin_edges), tuple(m.thresholds))
    data = _metadata_record(
        cfg,
        embedder,
        "matching_thresholds",
        "matching.thresholds",
        "calibrated thresholds in the model metadata (run python -m edge.calibrate) or a list in the config",
    )
    return YawThresholds.from_dict(data, source=f"{cfg.embedding.model} metadata")


def _metadata_record(cfg: RuntimeConfig, embedder, name: str, key: str, expected: str):
    """``extra[name]`` of the identity model's metadata, or a ConfigError blaming ``key``."""
    data = embedder.meta.extra.get(name)
    if data is None:
        raise ConfigError(str(cfg.embedding.model), key, expected, "none in the metadata")
    return data


def matching_score_norm(cfg: RuntimeConfig, embedder, thresholds):
    """The cohort score normalisation the thresholds were calibrated with (None for cosines)."""
    if embedder is None or thresholds.score == "cosine":
        return None
    from edge.core.scorenorm import ScoreNorm, ScoreNormError

    record = _metadata_record(
        cfg,
        embedder,
        "score_norm",
        "extra.score_norm",
        "the cohort its as-norm thresholds were calibrated with (rerun python -m edge.calibrate)",
    )
    try:
        return ScoreNorm.from_meta(record, cfg.embedding.model, source=f"{cfg.embedding.model} metadata")
    except ScoreNormError as err:
        raise ConfigError(str(cfg.embedding.model), "extra.score_norm", "a usable cohort", str(err)) from None


class GalleryView:
    """The gallery's templates, re-read when the file changes (enrolment while running)."""

    def __init__(self, path: Path, key: bytes | None = None):
        self.path = Path(path)
        self._key = key
        self._stamp: tuple | None = None
        self._checked = 0.0
        self._arrays = None
        self.identities = 0
        self.reload()

    def reload(self) -> None:
        from edge.storage.gallery.records import GalleryArrays
        from edge.storage.gallery.store import Gallery

        if not self.path.exists():
            if self._arrays is None:
                log.warning("no gallery at %s: every face is unknown (enrol: python -m edge.enroll add)", self.path)
            self._arrays = GalleryArrays([], None, None)
            self.identities = 0
            self._stamp = None
            return
        stat = self.path.stat()
        self._stamp = (stat.st_mtime_ns, stat.st_size)
        with Gallery.open(self.path, create=False, key=self._key) as gallery:
            if not gallery.encrypted and self._arrays is None:
                log.warning("gallery %s is not encrypted: set gallery.key_file (or key_credential)", self.path)
            self._arrays = gallery.templates()
        self.identities = len(set(self._arrays.names))

    def __call__(self):
        now = time.monotonic()
        if now - self._checked > GALLERY_CHECK_EVERY_S:
            self._checked = now
            try:
                stat = self.path.stat()
                stamp = (stat.st_mtime_ns, stat.st_size)
            except FileNotFoundError:
                stamp = None
            if stamp != self._stamp:
                self.reload()
        return self._arrays


def build_pipeline(cfg: RuntimeConfig, stills: bool):
    from edge.app.service import choose_providers
    from edge.core.pipeline import FacePipeline
    from edge.core.tracker import Tracker
    from edge.detect.registry import build_detector
    from edge.landmarks.crop import BLAZEFACE_SHORT_CROP
    from edge.landmarks.landmarker import Landmarker
    from edge.runtime.runner import load_model

    threads = cfg.runtime.threads
    providers = None
    if cfg.runtime.backend == "onnxruntime":
        options = {}
        if cfg.runtime.trt_cache_dir is not None:
            options["TensorrtExecutionProvider"] = {
                "trt_engine_cache_enable": "True",
                "trt_engine_cache_path": str(cfg.runtime.trt_cache_dir),
            }
        providers, _ = choose_providers(cfg.runtime.providers, options=options)
    detector = build_detector(cfg.detector.build_options(threads))
    landmarker = Landmarker(load_model(cfg.landmarks.model, threads=threads, providers=providers))
    embedder = thresholds = None
    if cfg.embedding.model is not None:
        embedder = load_model(cfg.embedding.model, threads=threads, providers=providers)
        thresholds = matching_thresholds(cfg, embedder)
    score_norm = matching_score_norm(cfg, embedder, thresholds)
    gallery = None
    if embedder is not None:
        from edge.app.service import gallery_key

        gallery = GalleryView(cfg.gallery.path, gallery_key(cfg.gallery.key_credential, cfg.gallery.key_file))
    pipeline = FacePipeline(
        detector,
        # Measured for BlazeFace short range; full-range boxes sit alike and the landmark
        # refinement pass absorbs the rest.
        BLAZEFACE_SHORT_CROP,
        landmarker,
        embedder,
        gallery,
        thresholds,
        Tracker.from_config(cfg.tracker),
        stills=stills,
        flip={"model": None, "on": True, "off": False}[cfg.embedding.test_time_flip],
        stranger_rate=cfg.matching.stranger_rate,
        score_norm=score_norm,
    )
    return pipeline, gallery


# ----------------------------------------------------------------------------- the loop


class Runner:
    """Owns the source, the pipeline, the sinks, the service protocol and the health endpoint."""

    def __init__(self, cfg: RuntimeConfig, max_frames: int | None = None, on_frame=None):
        from edge.app.sinks import SinkSet, build_sink
        from edge.sources import build_source

        self.cfg = cfg
        self.max_frames = max_frames
        self.on_frame = on_frame
        stills = cfg.source.type == "folder" and not cfg.source.sequence
        self.pipeline, self.gallery = build_pipeline(cfg, stills)
        self.source = build_source(source_options(cfg))
        self.pipeline.source_label = self.source.label
        self.sinks = SinkSet([build_sink(s, cfg.events.queue_size) for s in cfg.events.sinks])
        for sink in self.sinks.sinks:
            announce = getattr(sink, "announce_camera", None)  # MQTT: Home Assistant discovery (or its removal)
            if announce is not None:
                announce(self.source.label)
        self.stop_event = threading.Event()
        self.started = time.monotonic()
        self.events_by_type: dict[str, int] = {}
        self.bad_frames = 0
        self.in_read = threading.Event()
        self.health_server = None
        self.face_store = None
        if cfg.privacy.store_face_images:
            from edge.storage.face_store import FaceStore

            self.face_store = FaceStore(cfg.privacy.face_images_dir, cfg.privacy.retention_days)
        self._snapshot: dict = {}
        self._lock = threading.Lock()
        from edge.app.metrics_prom import StageLatency

        self.latency = StageLatency()  # cumulative per-stage histograms for /metrics

    # -- health ---------------------------------------------------------------------------------
    def snapshot(self) -> dict:
        with self._lock:
            return json.loads(json.dumps(self._snapshot))

    def _publish(self) -> None:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        counters = dict(self.pipeline.counters)
        snap = {
            "status": "ok" if self.source.health().get("state") in ("streaming", "idle", "ended") else "degraded",
            "uptime_s": round(elapsed, 1),
            "fps": round(counters["frames"] / elapsed, 3),
            "counters": {**counters, "bad_frames": self.bad_frames},
            "events": dict(self.events_by_type),
            "source": self.source.health(),
            "stages": self.pipeline.stats.summary(),
            "latency_histogram": self.latency.to_dict(),
            "gallery": {"identities": self.gallery.identities if self.gallery else 0},
            "sinks": {k: v.to_dict() for k, v in self.sinks.counters().items()},
        }
        with self._lock:
            self._snapshot = snap

    # -- run ------------------------------------------------------------------------------------
    def stop(self, *_: Any) -> None:
        self.stop_event.set()
        self.source.stop()

    def _heartbeat(self, watchdog) -> None:
        """While the loop waits on a source that is reconnecting, it is alive: keep the watchdog fed,
        and keep health current (it shows the outage)."""
        step = min(PUBLISH_EVERY_S, (watchdog.interval_s or 1.0) / 2)
        while not self.stop_event.wait(step):
            if self.in_read.is_set():
                if self.source.health().get("state") == "reconnecting":
                    watchdog.beat()
                self._publish()

    def run(self) -> dict:
        from edge.app.service import Watchdog, install_sigterm_handler, notify

        cfg = self.cfg
        watchdog = Watchdog.from_env(enabled=cfg.service.watchdog)
        # Signals can only be handled on the main thread (tests and embedders run us elsewhere).
        main_thread = threading.current_thread() is threading.main_thread()
        uninstall = install_sigterm_handler(self.stop, notify_stopping=cfg.service.notify) if main_thread else None
        if cfg.health.enabled:
            from edge.app.health import HealthServer

            token = cfg.health.token_file.read_text().strip() if cfg.health.token_file else None
            self.health_server = HealthServer(cfg.health.bind, cfg.health.port, self.snapshot, token).start()
        self.source.open()
        self._publish()
        if cfg.service.notify:
            notify(READY=1, STATUS=f"running: {self.source.label}")
        threading.Thread(target=self._heartbeat, args=(watchdog,), name="heartbeat", daemon=True).start()
        last_status = last_publish = time.monotonic()
        try:
            while not self.stop_event.is_set():
                self.in_read.set()
                frame = self.source.read()
                self.in_read.clear()
                if frame is None:
                    break
                try:
                    result = self.pipeline.process(frame.image, frame.index, frame.name, frame.source)
                except Exception as err:  # one bad frame never ends the service
                    self.bad_frames += 1
                    log.warning("frame %s skipped: %s: %s", frame.name or frame.index, type(err).__name__, err)
                    continue
                self.latency.observe(result.timings_ms)
                for event in result.events:
                    self._emit(event)
                if self.face_store is not None:
                    self._store_faces(result)
                if self.on_frame is not None:
                    self.on_frame(frame, result)
                watchdog.beat()
                now = time.monotonic()
                if now - last_publish > PUBLISH_EVERY_S:
                    last_publish = now
                    self._publish()
                if now - last_status > STATUS_EVERY_S:
                    last_status = now
                    if cfg.service.notify:
                        c = self.pipeline.counters
                        notify(STATUS=f"{c['frames']} frames, {c['faces']} faces, {c['recognised']} recognised")
                if self.max_frames is not None and self.pipeline.counters["frames"] >= self.max_frames:
                    break
        finally:
            for event in self.pipeline.finish():
                self._emit(event)
            self.stop_event.set()
            self.source.close()
            self.sinks.close()
            self._publish()
            if self.health_server is not None:
                self.health_server.close()
            if uninstall is not None:
                uninstall()
        return self.summary()

    def _store_faces(self, result) -> None:
        """Only with privacy.store_face_images: the aligned crop behind each recognised / unknown event."""
        faces = {f.track_id: f for f in result.faces}
        for event in result.events:
            face = faces.get(event.track_id)
            if event.type in ("recognised", "unknown_face") and face is not None:
                try:
                    self.face_store.save(face.aligned, event.track_id, event.type, event.identity)
                except OSError as err:  # a full disk must not stop recognition
                    log.warning("face crop not stored: %s", err)

    def _emit(self, event) -> None:
        self.events_by_type[event.type] = self.events_by_type.get(event.type, 0) + 1
        self.sinks.emit(event)

    def summary(self) -> dict:
        snap = self.snapshot()
        return {k: snap[k] for k in ("fps", "counters", "events", "stages", "source", "sinks") if k in snap}


# ----------------------------------------------------------------------------- CLI


def _parse_sets(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError("command line", "--set", "KEY=VALUE (e.g. source.fps=10)", repr(item))
        key, value = item.split("=", 1)
        out[key.strip()] = value
    return out


def remove_homeassistant(cfg: RuntimeConfig) -> int:
    """``--homeassistant-remove``: clear this device's retained Home Assistant discovery configs and
    states for the configured camera on every MQTT sink, then exit (no model is loaded)."""
    from edge.app.sinks import SendError, build_sink
    from edge.sources import build_source

    specs = [s for s in cfg.events.sinks if getattr(s, "type", None) == "mqtt"]
    if not specs:
        raise ConfigError("command line", "--homeassistant-remove", "an mqtt sink in events.sinks", "none")
    label = build_source(source_options(cfg)).label  # built, never opened: only its label is needed
    status = 0
    for spec in specs:
        sink = build_sink(spec, cfg.events.queue_size)
        try:
            cleared = sink.remove_homeassistant([label], timeout=max(spec.timeout_s, 10.0))
            print(f"edge.run: {sink.name}: cleared {cleared} Home Assistant topics of camera {label}", file=sys.stderr)
        except SendError as err:
            print(f"edge.run: --homeassistant-remove: {err}", file=sys.stderr)
            status = 1
        finally:
            sink.close()
    return status


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m edge.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=None, help="runtime TOML (firmware_configs/config.example.toml)")
    p.add_argument("--profile", default=None, help="device profile: pi4, pi5, jetson_nano, jetson_orin, or a .toml")
    p.add_argument("--source", default=None, help="camera/stream/file/folder shorthand (overrides [source])")
    p.add_argument("--gallery", default=None, help="gallery SQLite file (overrides gallery.path)")
    p.add_argument("--embedder-model", default=None, help="identity model (overrides embedding.model)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any config key")
    p.add_argument("--max-frames", type=int, default=None, help="stop after this many frames")
    p.add_argument("--summary-json", default=None, help="write the run summary here")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.add_argument(
        "--homeassistant-remove",
        action="store_true",
        help="clear the retained Home Assistant discovery configs and states of the configured camera "
        "on every mqtt sink, then exit",
    )
    return p


def config_from_args(args) -> RuntimeConfig:
    overrides = _parse_sets(args.set)
    if args.source:
        overrides.update(source_overrides(args.source))
    if args.gallery:
        overrides["gallery.path"] = str(Path(args.gallery).absolute())
    if args.embedder_model:
        overrides["embedding.model"] = str(Path(args.embedder_model).absolute())
    return load_config(args.config, profile=args.profile, overrides=overrides)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = config_from_args(args)
        if args.homeassistant_remove:
            return remove_homeassistant(cfg)
        runner = Runner(cfg, max_frames=args.max_frames)
    except (ConfigError, ValueError, FileNotFoundError) as err:
        print(f"edge.run: {err}", file=sys.stderr)
        return 2
    try:
        summary = runner.run()
    except Exception as err:  # start-up failures of the source (a wrong device) are one line too
        from edge.sources.base import SourceError

        if isinstance(err, SourceError):
            print(f"edge.run: {err}", file=sys.stderr)
            return 2
        raise
    print(json.dumps(summary, indent=1), file=sys.stderr)
    if args.summary_json:
        out = Path(args.summary_json)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(out.suffix + ".tmp")
        tmp.write_text(json.dumps(summary, indent=1) + "\n")
        os.replace(tmp, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
