"""Model metadata: the small JSON record stored beside every model file.

``model.onnx`` has ``model.json`` beside it, ``x.tflite`` has ``x.json``. The record says how to
feed the model (input size, layout, colour order, normalisation), what its outputs are called
and in which order the runner returns them, where the file came from, and how accurate it was
measured to be. It is validated when read, so the rest of the code can trust it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

FORMATS = ("onnx", "tflite")
PRECISIONS = ("fp32", "fp16", "int8")
LAYOUTS = ("NCHW", "NHWC")
COLOR_ORDERS = ("RGB", "BGR", "GRAY")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
# Read once at import: os.umask can only be read by setting it, which is process-wide.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


class MetaError(ValueError):
    """A metadata record is malformed; the message names the file (or object) and the field."""

    def __init__(self, message: str):
        from edge.oneline import one_line

        super().__init__(one_line(message))


class ModelHashError(ValueError):
    """The model file's sha256 differs from the one written in its metadata."""


@dataclass(frozen=True)
class Normalisation:
    """Per-channel ``(pixel - mean) / std`` on the 0..255 scale, in the model's colour order."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def to_dict(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std)}


@dataclass(frozen=True)
class ModelMeta:
    """What the runner and the pre/post-processing need to know about one model file.

    ``input_size`` is (width, height) in pixels. ``output_names`` is the order in which
    :meth:`edge.runtime.ModelRunner.run` returns the outputs. ``sha256`` (lower-case hex) is
    of the model file; when set, loading the model checks it.
    """

    name: str
    version: str
    task: str
    format: str
    precision: str
    input_size: tuple[int, int]
    input_layout: str
    color_order: str
    normalisation: Normalisation
    input_name: str
    output_names: tuple[str, ...]
    landmark_scheme: str | None = None
    accuracy: dict = field(default_factory=dict)
    origin: str = ""
    licence: str = ""
    sha256: str | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Coerce list-like fields so a ModelMeta built in code equals one read from JSON.
        if isinstance(self.input_size, list):
            object.__setattr__(self, "input_size", tuple(self.input_size))
        if isinstance(self.output_names, list):
            object.__setattr__(self, "output_names", tuple(self.output_names))
        if isinstance(self.normalisation, Mapping):
            object.__setattr__(self, "normalisation", _parse_normalisation(self.normalisation, "ModelMeta"))
        _validate({f.name: getattr(self, f.name) for f in fields(self)}, "ModelMeta")

    @property
    def channels(self) -> int:
        return 1 if self.color_order == "GRAY" else 3

    @property
    def width(self) -> int:
        return self.input_size[0]

    @property
    def height(self) -> int:
        return self.input_size[1]

    def to_dict(self) -> dict:
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Normalisation):
                value = value.to_dict()
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out


_KNOWN = tuple(f.name for f in fields(ModelMeta))
_REQUIRED = tuple(f.name for f in fields(ModelMeta) if f.default is MISSING and f.default_factory is MISSING)
_OPTIONAL = tuple(f for f in fields(ModelMeta) if f.name not in _REQUIRED)


class _Fields:
    """Attribute access to a dict of field values, so one validator serves both callers."""

    def __init__(self, values: dict):
        self.__dict__.update(values)


def _fail(source: str, name: str, expected: str, value: Any) -> MetaError:
    return MetaError(f"{source}: field '{name}': expected {expected}, got {value!r}")


def _is_number(value: Any) -> bool:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer too large for a float
        return False


def _check_str(source: str, name: str, value: Any, allowed: tuple[str, ...] = ()) -> None:
    if not isinstance(value, str) or not value:
        raise _fail(source, name, "a non-empty string", value)
    if allowed and value not in allowed:
        raise _fail(source, name, "one of " + "|".join(allowed), value)


def _parse_normalisation(value: Any, source: str) -> Normalisation:
    if not isinstance(value, Mapping) or set(value) != {"mean", "std"}:
        raise _fail(source, "normalisation", 'an object {"mean": [...], "std": [...]}', value)
    parts = {}
    for key in ("mean", "std"):
        seq = value[key]
        if not isinstance(seq, (list, tuple)) or not seq or not all(_is_number(v) for v in seq):
            raise _fail(source, f"normalisation.{key}", "a non-empty list of numbers", seq)
        parts[key] = tuple(float(v) for v in seq)
    return Normalisation(mean=parts["mean"], std=parts["std"])


def _validate(values: dict, source: str) -> None:
    """Check every field's type and range; raise one :class:`MetaError` for the first bad one."""
    meta = _Fields(values)
    for name in ("name", "version", "task", "input_name"):
        _check_str(source, name, getattr(meta, name))
    _check_str(source, "format", meta.format, FORMATS)
    _check_str(source, "precision", meta.precision, PRECISIONS)
    _check_str(source, "input_layout", meta.input_layout, LAYOUTS)
    _check_str(source, "color_order", meta.color_order, COLOR_ORDERS)

    size = meta.input_size
    if (
        not isinstance(size, tuple)
        or len(size) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)
    ):
        raise _fail(source, "input_size", "[width, height] as two positive integers", size)

    norm = meta.normalisation
    if not isinstance(norm, Normalisation):
        raise _fail(source, "normalisation", 'an object {"mean": [...], "std": [...]}', norm)
    channels = 1 if meta.color_order == "GRAY" else 3
    for key in ("mean", "std"):
        seq = getattr(norm, key)
        if len(seq) != channels:
            raise _fail(
                source,
                f"normalisation.{key}",
                f"{channels} value(s), one per {meta.color_order} channel",
                list(seq),
            )
    if any(v == 0 for v in norm.std):
        raise _fail(source, "normalisation.std", "non-zero values", list(norm.std))

    names = meta.output_names
    if not isinstance(names, tuple) or not names or not all(isinstance(n, str) and n for n in names):
        raise _fail(source, "output_names", "a non-empty list of non-empty strings", names)
    if len(set(names)) != len(names):
        raise _fail(source, "output_names", "unique names", list(names))

    if meta.landmark_scheme is not None:
        _check_str(source, "landmark_scheme", meta.landmark_scheme)
    if not isinstance(meta.accuracy, dict) or not all(
        isinstance(k, str) and _is_number(v) for k, v in meta.accuracy.items()
    ):
        raise _fail(source, "accuracy", "an object of name -> number", meta.accuracy)
    for name in ("origin", "licence"):
        if not isinstance(getattr(meta, name), str):
            raise _fail(source, name, "a string", getattr(meta, name))
    if meta.sha256 is not None and (not isinstance(meta.sha256, str) or not _SHA256_RE.match(meta.sha256)):
        raise _fail(source, "sha256", "null or 64 lower-case hex digits", meta.sha256)
    if not isinstance(meta.extra, dict):
        raise _fail(source, "extra", "an object", meta.extra)


def meta_from_dict(data: Any, source: str = "<metadata>") -> ModelMeta:
    """Build a validated :class:`ModelMeta` from parsed JSON; errors name ``source`` and field."""
    if not isinstance(data, dict):
        raise MetaError(f"{source}: expected a JSON object at the top level, got {type(data).__name__}")
    unknown = sorted(set(data) - set(_KNOWN))
    if unknown:
        raise MetaError(f"{source}: unknown field '{unknown[0]}' (known fields: {', '.join(_KNOWN)})")
    missing = [name for name in _REQUIRED if name not in data]
    if missing:
        raise MetaError(f"{source}: missing field '{missing[0]}'")

    values = dict(data)
    size = values["input_size"]
    if isinstance(size, list):
        values["input_size"] = tuple(size)
    names = values["output_names"]
    if isinstance(names, list):
        values["output_names"] = tuple(names)
    values["normalisation"] = _parse_normalisation(values["normalisation"], source)
    for f in _OPTIONAL:
        if f.name not in values:
            values[f.name] = f.default_factory() if f.default_factory is not MISSING else f.default
    # Validated here so the error names the file; the constructor's own check then passes.
    _validate(values, source)
    return ModelMeta(**values)


def variant_path(fp32_onnx: os.PathLike | str, fmt: str, precision: str) -> Path:
    """Where a variant of a shipped model lives, beside its fp32 ONNX file.

    ONNX: ``<stem>.onnx`` (fp32), ``<stem>_int8.onnx``; TFLite: ``<stem>_tfl_<precision>.tflite``.
    Every name has its own stem, so every variant has its own ``<stem>.json`` metadata."""
    if fmt not in FORMATS or precision not in PRECISIONS:
        raise ValueError(
            f"variant: expected a format in {FORMATS} and a precision in {PRECISIONS}, got {fmt}/{precision}"
        )
    base = Path(fp32_onnx)
    if fmt == "onnx":
        return base if precision == "fp32" else base.with_name(f"{base.stem}_{precision}.onnx")
    return base.with_name(f"{base.stem}_tfl_{precision}.tflite")


def meta_path_for(model_path: os.PathLike | str) -> Path:
    """Where a model's metadata lives: the model's path with the suffix replaced by ``.json``."""
    return Path(model_path).with_suffix(".json")


def load_meta(path: os.PathLike | str) -> ModelMeta:
    """Read and validate a metadata JSON file."""
    path = Path(path)
    if not path.is_file():
        raise MetaError(f"{path}: metadata file not found (expected a JSON file beside the model)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise MetaError(f"{path}: not valid JSON ({err})") from None
    except (ValueError, RecursionError) as err:  # a number too long to convert, nesting too deep
        raise MetaError(f"{path}: not usable JSON ({type(err).__name__}: {err})") from None
    except OSError as err:
        raise MetaError(f"{path}: cannot read ({err.strerror})") from None
    return meta_from_dict(data, source=str(path))


def save_meta(meta: ModelMeta, path: os.PathLike | str) -> Path:
    """Write ``meta`` as JSON, atomically: a reader sees the old file or the new one, never half."""
    path = Path(path)
    text = json.dumps(meta.to_dict(), indent=2, sort_keys=False) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        # mkstemp creates the file owner-only; give it the mode a plain open() would have.
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def file_sha256(path: os.PathLike | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_sha256(meta: ModelMeta, model_path: os.PathLike | str) -> None:
    """Raise :class:`ModelHashError` if ``meta.sha256`` is set and the file's hash differs."""
    if meta.sha256 is None:
        return
    actual = file_sha256(model_path)
    if actual != meta.sha256:
        raise ModelHashError(
            f"{model_path}: sha256 is {actual} but its metadata says {meta.sha256} "
            "(model file replaced or corrupted; re-export it or update the metadata)"
        )
