"""Loading the runtime config: TOML files, their layers, and every value checked once at start.

``load_config(path, profile=None, overrides=None)`` builds a :class:`RuntimeConfig` from up to
four layers, each overriding the one before:

1. the defaults of the schema (:mod:`edge.app.config.schema`; each field's ``doc`` says what it means);
2. a device profile (``profile = "pi4"`` in the file, or ``profile=`` here, i.e. ``--profile``):
   ``<config folder>/profiles/NAME.toml``, else ``firmware_configs/profiles/NAME.toml`` of this
   checkout, else ``/etc/poseface-edge/profiles/NAME.toml``; or a path to a ``.toml`` file
   (:mod:`edge.app.config.profiles`);
3. the config file itself;
4. overrides from the command line, as dotted keys: ``{"source.uri": ..., "gallery.path": ...}``.

Tables merge key by key; any other value (lists included) replaces the one below it. A
relative path resolves against the folder of the file that wrote it (overrides: the current
directory), so a config copied with its models keeps working wherever it lands.

Everything is checked here, so the rest of the runtime can trust it: an unknown key, a wrong
type, a value out of range, a missing model file all raise :class:`ConfigError` with one line
``FILE: key.path: expected ..., got ...`` naming the file the bad value came from. A camera that
cannot be opened is the frame source's to report (it may come back later); a missing model
file never comes back, so it is refused here.

``python -m edge.config CONFIG [--profile NAME] [--set key=value ...]`` prints the resolved
config as JSON, or the one-line error (exit code 2): a way to check a file before a restart.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import ipaddress
import json
import math
import os
import re
import string
import sys
from dataclasses import MISSING, dataclass
from pathlib import Path
from typing import Any, Mapping, Union, get_args, get_origin

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.9/3.10 (Jetson, older Raspberry Pi OS)
    import tomli as tomllib

from edge.app.config.errors import _NOTHING, ConfigError, _expand_user, _FieldError, _is_dir, _is_file, _Said, _show
from edge.app.config.profiles import find_profile
from edge.app.config.schema import (
    CSI_PLACEHOLDERS,
    MODEL_SUFFIX,
    MqttSink,
    RuntimeConfig,
    WebhookSink,
    _hints,
    _join,
    config_to_dict,
)
from edge.runtime.meta import meta_path_for, variant_path
from edge.shipped import SHIPPED_IDENTITY, SHIPPED_LANDMARKS

# ----------------------------------------------------------------------------- layers and origins


@dataclass
class _Layer:
    name: str  # what an error names: a file path, or "command line"
    base_dir: Path  # relative paths in this layer resolve against it
    data: dict
    is_file: bool = False
    from_cli: bool = False  # strings may stand for numbers/booleans/lists (``--set source.fps=30``)


class _Context:
    """The merged layers, and for every key which layer set it, for errors and path resolution."""

    def __init__(self, layers: list[_Layer]):
        self.layers = layers
        self.origins: dict[str, int] = {}
        self.data: dict = {}
        for index, layer in enumerate(layers):
            self._merge(self.data, layer.data, index, "")
        # A key no layer set (a required key left out) is blamed on the topmost file, else on
        # the command line, else on the defaults.
        files = [i for i, layer in enumerate(layers) if layer.is_file]
        given = [i for i, layer in enumerate(layers) if layer.data]
        self.fallback = files[-1] if files else given[-1] if given else 0
        # Relative default paths (gallery.sqlite) live beside the config file: the first layer's folder.
        self.default_base = layers[0].base_dir

    def _merge(self, into: dict, new: Mapping, index: int, prefix: str) -> None:
        for key, value in new.items():
            path = f"{prefix}{key}"
            if isinstance(value, Mapping):
                if not isinstance(into.get(key), dict):
                    self._forget_below(path)
                    into[key] = {}
                self.origins[path] = index
                self._merge(into[key], value, index, path + ".")
            else:
                self._forget_below(path)
                into[key] = copy.deepcopy(value)
                self.origins[path] = index

    def _forget_below(self, path: str) -> None:
        for key in [k for k in self.origins if k.startswith(path + ".") or k.startswith(path + "[")]:
            del self.origins[key]

    def _index_of(self, key: str) -> int | None:
        probe = key
        while probe:
            if probe in self.origins:
                return self.origins[probe]
            cut = max(probe.rfind("."), probe.rfind("["))
            probe = probe[:cut] if cut > 0 else ""
        return None

    def layer_of(self, key: str) -> _Layer:
        index = self._index_of(key)
        return self.layers[self.fallback if index is None else index]

    def build(self, cls: type, data: Any, prefix: str) -> Any:
        """A schema class from a nested table, every key checked (what a ``convert`` function calls)."""
        return _build(cls, data, prefix, self)

    def error(self, err: _FieldError) -> ConfigError:
        found = [i for i in map(self._index_of, (err.key, *err.related)) if i is not None]
        layer = self.layers[max(found) if found else self.fallback]
        return ConfigError(layer.name, err.key, err.expected, _show(err.got))


# ----------------------------------------------------------------------------- checking values


_PLURAL = {int: "integers", float: "numbers", str: "strings", Path: "paths"}


def _describe(hint: Any, meta: Mapping[str, Any]) -> str:
    if "choices" in meta:
        return "one of " + ", ".join(repr(c) for c in meta["choices"])
    base = {bool: "true or false", int: "an integer", float: "a number", str: "a string", Path: "a path"}.get(
        hint, "a list of numbers" if get_origin(hint) is tuple else "a value"
    )
    low = ("[", meta["ge"]) if "ge" in meta else ("(", meta["gt"]) if "gt" in meta else None
    high = (meta["le"], "]") if "le" in meta else (meta["lt"], ")") if "lt" in meta else None
    if low and high:
        return f"{base} in {low[0]}{low[1]}, {high[0]}{high[1]}"
    if low:
        return f"{base} {'>=' if low[0] == '[' else '>'} {low[1]}"
    if high:
        return f"{base} {'<=' if high[1] == ']' else '<'} {high[0]}"
    return base


def _coerce_cli_string(value: str, hint: Any) -> Any:
    # ``--set source.fps=30`` arrives as the string "30"; read it as the TOML value it spells.
    if get_origin(hint) is Union and type(None) in get_args(hint):
        hint = next(a for a in get_args(hint) if a is not type(None))
    if hint in (str, Path):
        return value
    try:
        return tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        return value


def _check_value(value: Any, hint: Any, key: str, meta: Mapping[str, Any], ctx: _Context) -> Any:
    """One TOML value -> the field's Python value, or :class:`_FieldError`."""
    if "convert" in meta:
        return meta["convert"](value, key, ctx)
    if get_origin(hint) is Union:  # Optional[X]: None means unset (only dicts and overrides can say so)
        if value is None:
            return None
        hint = next(a for a in get_args(hint) if a is not type(None))
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key, ctx)
    expected = _describe(hint, meta)
    written = value  # what the file said, for the message (an int read as a float stays 0, not 0.0)
    if hint is bool:
        if not isinstance(value, bool):
            raise _FieldError(key, expected, value)
    elif hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _FieldError(key, expected, value)
    elif hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not _finite(value):
            raise _FieldError(key, expected, value)
        value = float(value)
    elif hint is str:
        if not isinstance(value, str):
            raise _FieldError(key, expected, value)
    elif hint is Path:
        if isinstance(value, Path):
            value = str(value)
        if not isinstance(value, str) or not value.strip():
            raise _FieldError(key, "a path", value)
        path = _expand_user(Path(value), key)
        value = path if path.is_absolute() else ctx.layer_of(key).base_dir / path
    elif get_origin(hint) is tuple:
        item_hint = get_args(hint)[0]
        if not isinstance(value, (list, tuple)):
            raise _FieldError(key, f"a list of {_PLURAL.get(item_hint, 'values')}", value)
        return tuple(_check_value(v, item_hint, f"{key}[{i}]", {}, ctx) for i, v in enumerate(value))
    else:  # pragma: no cover - a schema field of a type this function was not taught
        raise TypeError(f"config schema: no check for {hint!r} ({key})")
    if "choices" in meta and value not in meta["choices"]:
        raise _FieldError(key, expected, written)
    bad = (
        ("ge" in meta and value < meta["ge"])
        or ("gt" in meta and value <= meta["gt"])
        or ("le" in meta and value > meta["le"])
        or ("lt" in meta and value >= meta["lt"])
    )
    if bad:
        raise _FieldError(key, expected, written)
    return value


def _build(cls: type, data: Any, prefix: str, ctx: _Context) -> Any:
    """A dataclass of the schema from a table, every key checked."""
    if not isinstance(data, Mapping):
        raise _FieldError(prefix, "a table", data)
    hints = _hints(cls)
    keys = [f for f in dataclasses.fields(cls) if not f.metadata.get("internal")]
    known = [f.name for f in keys]
    for name in data:
        if name not in known:
            table = f"[{prefix}]" if prefix else "the top level"
            raise _FieldError(_join(prefix, name), f"a key of {table} ({', '.join(known)})", name)
    values = {}
    for f in keys:
        key = _join(prefix, f.name)
        if f.name in data:
            value = data[f.name]
            if ctx.layer_of(key).from_cli and isinstance(value, str):
                value = _coerce_cli_string(value, hints[f.name])
            values[f.name] = _check_value(value, hints[f.name], key, f.metadata, ctx)
        elif f.default is MISSING and f.default_factory is MISSING:
            raise _FieldError(key, _describe(hints[f.name], f.metadata) + " (required)", _NOTHING)
        elif dataclasses.is_dataclass(hints[f.name]):
            # An absent section is built from nothing, so its own defaults get the same treatment.
            values[f.name] = _build(hints[f.name], {}, key, ctx)
        elif hints[f.name] is Path and not f.default.is_absolute():
            # A relative default (gallery.sqlite) lives beside the config file, like any relative path.
            values[f.name] = ctx.default_base / f.default
    return cls(**values)


def _finite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer too large for a float
        return False


def _require_file(path: Path | None, key: str, what: str) -> None:
    if path is not None and not _is_file(path):
        raise _FieldError(key, f"an existing {what}", _Said(f"{path}, which does not exist"))


def _check_model(path: Path | None, key: str, backend: str) -> None:
    if path is None:
        return
    suffix = MODEL_SUFFIX[backend]
    if path.suffix != suffix:
        raise _FieldError(key, f"a {suffix} model for runtime.backend = {backend!r}", str(path), ("runtime.backend",))
    _require_file(path, key, "model file")
    meta = meta_path_for(path)
    if not _is_file(meta):
        raise _FieldError(key, f"a model with its metadata beside it ({meta.name})", _Said(f"{path} without it"))


_TYPE = ("source.type",)


def _check_across(cfg: RuntimeConfig) -> None:
    """Rules that involve more than one field (each names the field to change)."""
    src = cfg.source
    if src.type == "rtsp" and not re.match(r"rtsps?://.", src.uri):
        raise _FieldError("source.uri", "an rtsp:// or rtsps:// URL for source.type = 'rtsp'", src.uri, _TYPE)
    if src.type == "http" and not re.match(r"https?://.", src.uri):
        raise _FieldError("source.uri", "an http:// or https:// URL for source.type = 'http'", src.uri, _TYPE)
    if src.type == "v4l2" and not (src.device.startswith("/dev/") or src.device.isdigit()):
        raise _FieldError("source.device", "a device node such as '/dev/video0' or a camera index", src.device, _TYPE)
    if src.type in ("video", "folder"):
        if src.path is None:
            raise _FieldError("source.path", f"a path for source.type = {src.type!r}", _NOTHING, _TYPE)
        exists = _is_file(src.path) if src.type == "video" else _is_dir(src.path)
        if not exists:
            what = "video file" if src.type == "video" else "folder of images"
            raise _FieldError("source.path", f"an existing {what}", _Said(f"{src.path}, which does not exist"), _TYPE)
    if src.type == "jetson_csi":
        try:
            names = {name for _, name, _, _ in string.Formatter().parse(src.pipeline) if name is not None}
        except ValueError:
            names = {"?"}
        if not names <= set(CSI_PLACEHOLDERS) or "appsink" not in src.pipeline.rsplit("!", 1)[-1]:
            raise _FieldError(
                "source.pipeline",
                "a GStreamer pipeline ending in appsink, with placeholders among "
                + ", ".join("{" + n + "}" for n in CSI_PLACEHOLDERS),
                src.pipeline,
            )
    if src.reconnect_max_s < src.reconnect_initial_s:
        raise _FieldError(
            "source.reconnect_max_s",
            f"at least source.reconnect_initial_s ({src.reconnect_initial_s})",
            src.reconnect_max_s,
            ("source.reconnect_initial_s",),
        )

    _check_model(cfg.landmarks.model, "landmarks.model", cfg.runtime.backend)
    _check_model(cfg.embedding.model, "embedding.model", cfg.runtime.backend)

    edges = cfg.matching.yaw_bin_edges
    for i, edge in enumerate(edges):
        if not 0 < edge < 90 or (i and edge <= edges[i - 1]):
            raise _FieldError(f"matching.yaw_bin_edges[{i}]", "increasing |yaw| edges in (0, 90) degrees", edge)
    thresholds = cfg.matching.thresholds
    if not isinstance(thresholds, str) and len(thresholds) != len(edges) + 1:
        raise _FieldError(
            "matching.thresholds",
            f"{len(edges) + 1} thresholds (one per yaw bin)",
            _Said(f"{len(thresholds)}"),
            ("matching.yaw_bin_edges",),
        )

    for i, sink in enumerate(cfg.events.sinks):
        where = f"events.sinks[{i}]"
        if isinstance(sink, WebhookSink) and not re.match(r"https?://.", sink.url):
            raise _FieldError(f"{where}.url", "an http:// or https:// URL", sink.url)
        if isinstance(sink, MqttSink):
            if not sink.host.strip():
                raise _FieldError(f"{where}.host", "a broker host name", sink.host)
            _require_file(sink.password_file, f"{where}.password_file", "password file")
            _require_file(sink.ca_file, f"{where}.ca_file", "CA file")
            if not re.fullmatch(r"[^+#/\x00]+(/[^+#/\x00]+)*", sink.discovery_prefix):
                expected = "a topic prefix such as 'homeassistant' (no wildcards + #, no empty level)"
                raise _FieldError(f"{where}.discovery_prefix", expected, sink.discovery_prefix)
        if isinstance(sink, WebhookSink):
            _require_file(sink.ca_file, f"{where}.ca_file", "CA file")

    health = cfg.health
    try:
        loopback = ipaddress.ip_address(health.bind).is_loopback
    except ValueError:
        raise _FieldError("health.bind", "an IP address such as '127.0.0.1' or '0.0.0.0'", health.bind) from None
    if health.enabled and not loopback and health.token_file is None:
        raise _FieldError(
            "health.token_file",
            f"a token file when health.bind ({health.bind}) is not loopback",
            _NOTHING,
            ("health.bind", "health.enabled"),
        )
    _require_file(health.token_file, "health.token_file", "token file")

    if cfg.privacy.store_face_images and cfg.privacy.face_images_dir is None:
        raise _FieldError(
            "privacy.face_images_dir",
            "a folder when privacy.store_face_images = true",
            _NOTHING,
            ("privacy.store_face_images",),
        )


def shipped_variant(fp32_onnx: Path, backend: str, precision: str) -> Path:
    """The shipped file of a model for a runtime and precision (``edge.runtime.meta.variant_path``)."""
    return variant_path(fp32_onnx, MODEL_SUFFIX[backend].lstrip("."), precision)


def _resolve_shipped_models(cfg: RuntimeConfig, data: Mapping[str, Any]) -> RuntimeConfig:
    """Models no layer names (left at the shipped default) follow runtime.backend and
    runtime.precision; a model path given anywhere is used as given."""
    backend, precision = cfg.runtime.backend, cfg.runtime.precision
    changes = {}
    for section, shipped in (("landmarks", SHIPPED_LANDMARKS), ("embedding", SHIPPED_IDENTITY)):
        current = getattr(cfg, section)
        given = data.get(section)
        if current.model is None or (isinstance(given, Mapping) and "model" in given):
            continue
        variant = shipped_variant(shipped, backend, precision)
        if not variant.is_file():
            raise _FieldError(
                "runtime.precision",
                f"a precision shipped for runtime.backend = {backend!r}",
                _Said(f"{precision!r}, but {variant} is not installed"),
                ("runtime.backend",),
            )
        changes[section] = dataclasses.replace(current, model=variant)
    return dataclasses.replace(cfg, **changes) if changes else cfg


def _config_from_layers(layers: list[_Layer]) -> RuntimeConfig:
    ctx = _Context(layers)
    try:
        cfg = _resolve_shipped_models(_build(RuntimeConfig, ctx.data, "", ctx), ctx.data)
        _check_across(cfg)
    except _FieldError as err:
        raise ctx.error(err) from None
    names = tuple(layer.name for layer in layers if layer.is_file or layer.data)
    return dataclasses.replace(cfg, loaded_from=names)


# ----------------------------------------------------------------------------- files, overrides, the command


def _read_toml(path: Path) -> dict:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(str(path), "", "a TOML config file", "no such file") from None
    except OSError as err:
        raise ConfigError(str(path), "", "a readable TOML config file", err.strerror or type(err).__name__) from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(str(path), "", "valid TOML", f"a syntax error: {err}") from None
    except UnicodeDecodeError:
        raise ConfigError(str(path), "", "a UTF-8 TOML file", "undecodable bytes") from None
    except (ValueError, RecursionError) as err:  # a number too long to convert, nesting too deep
        raise ConfigError(str(path), "", "usable TOML", f"{type(err).__name__}: {err}") from None


def _overrides_to_tree(overrides: Mapping[str, Any]) -> dict:
    tree: dict = {}
    for dotted, value in overrides.items():
        parts = dotted.split(".")
        if not all(parts):
            raise ConfigError("command line", dotted, "a dotted key such as 'source.uri'", repr(dotted))
        node = tree
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError("command line", dotted, "a key that does not cross a value", repr(dotted))
        node[parts[-1]] = value
    return tree


def load_config(
    path: os.PathLike | str | None,
    profile: str | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> RuntimeConfig:
    """The validated runtime config: defaults < profile < the file at ``path`` < ``overrides``.

    ``path`` None: defaults (and profile, overrides) only. ``profile`` (``--profile``) wins
    over the file's own ``profile`` key. ``overrides`` are dotted keys from the command line;
    their relative paths resolve against the current directory. Raises :class:`ConfigError`.
    """
    overrides = dict(overrides or {})
    if "profile" in overrides:
        profile = overrides.pop("profile")
    file_layer = None
    config_dir = None
    if path is not None:
        path = Path(path).expanduser().absolute()
        config_dir = path.parent
        file_layer = _Layer(str(path), config_dir, _read_toml(path), is_file=True)
    layers = [_Layer(str(path) if path else "defaults", config_dir or Path.cwd(), {})]

    if profile is not None:
        name, origin = profile, "command line"
    elif file_layer is not None and "profile" in file_layer.data:
        name, origin = file_layer.data["profile"], file_layer.name
    else:
        name, origin = None, ""
    if name is not None:
        profile_path = find_profile(name, config_dir, origin)
        data = _read_toml(profile_path)
        if "profile" in data:
            raise ConfigError(str(profile_path), "profile", "no profile key inside a profile", _show(data["profile"]))
        layers.append(_Layer(str(profile_path), profile_path.parent, data, is_file=True))
    if file_layer is not None:
        layers.append(file_layer)
    if overrides or profile is not None:
        tree = _overrides_to_tree(overrides)
        if profile is not None:
            tree["profile"] = profile
        layers.append(_Layer("command line", Path.cwd(), tree, from_cli=True))
    return _config_from_layers(layers)


def apply_overrides(
    config: RuntimeConfig, overrides: Mapping[str, Any], base_dir: os.PathLike | str | None = None
) -> RuntimeConfig:
    """``config`` with dotted-key overrides applied and everything validated again.

    ``apply_overrides(cfg, {"source.uri": "rtsp://cam/1", "gallery.path": "g.sqlite"})``.
    Relative paths resolve against ``base_dir`` (default: the current directory).
    """
    if "profile" in overrides:
        raise ConfigError(
            "command line", "profile", "the profile given to load_config (it loads beneath the file)", "an override"
        )
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    files = [name for name in config.loaded_from if name != "command line"]
    # Every key of the loaded config is present (and its paths absolute), so a value that goes
    # wrong only through an override is blamed on the command line.
    layers = [
        _Layer(files[-1] if files else "config", base, config_to_dict(config), is_file=True),
        _Layer("command line", base, _overrides_to_tree(overrides), from_cli=True),
    ]
    cfg = _config_from_layers(layers)
    return dataclasses.replace(cfg, loaded_from=config.loaded_from + ("command line",))


def source_overrides(value: str) -> dict[str, Any]:
    """What a ``--source`` argument means, as overrides: a device, a URL, a file or a folder.

    ``/dev/video0`` or ``0`` -> v4l2, ``picamera``/``picamera2`` -> the Pi camera,
    ``jetson_csi``/``csi`` -> the Jetson CSI camera, ``rtsp://...`` -> rtsp, ``http(s)://...``
    -> http, a folder -> folder, anything else -> a video file.
    """
    if value in ("picamera", "picamera2"):
        return {"source.type": "picamera2"}
    if value in ("jetson_csi", "csi"):
        return {"source.type": "jetson_csi"}
    if value.startswith("/dev/") or value.isdigit():
        return {"source.type": "v4l2", "source.device": value}
    if re.match(r"rtsps?://", value):
        return {"source.type": "rtsp", "source.uri": value}
    if re.match(r"https?://", value):
        return {"source.type": "http", "source.uri": value}
    kind = "folder" if Path(value).expanduser().is_dir() else "video"
    return {"source.type": kind, "source.path": value}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m edge.config", description="Validate a runtime config; print it as JSON."
    )
    parser.add_argument("config", nargs="?", help="config TOML (default: defaults only)")
    parser.add_argument("--profile", help="device profile name or .toml path (overrides the file's profile key)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a key, e.g. source.fps=30"
    )
    args = parser.parse_args(argv)
    overrides: dict[str, Any] = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set {item!r}: expected KEY=VALUE")
        overrides[key.strip()] = value.strip()
    try:
        cfg = load_config(args.config, profile=args.profile, overrides=overrides)
    except ConfigError as err:
        print(err, file=sys.stderr)
        return 2
    print(json.dumps({"loaded_from": list(cfg.loaded_from), **config_to_dict(cfg)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
