"""Fuzzing the parsers and loaders that read untrusted input: refuse bad input clearly.

Every file the device reads can be damaged: a config edited by hand, a gallery export copied
over a flaky link, a model cut short by a full SD card, a snapshot half written. The rule for
``edge/`` is that such input is either accepted or refused with the module's documented error
type and a one-line message that names the file (or, for input that is not a file, the field),
never with any other exception. :func:`run_fuzz` checks that rule with Hypothesis: for every
target in :data:`TARGETS` it generates hostile inputs, feeds them to the real function and
classifies each outcome as

- ``accepted``: parsed, and where the target says so, its result keeps its documented contract
  (an image is ``(H, W, 3)`` uint8, a name survives a gallery round trip, ...);
- ``refused``: the documented error type, with a one-line message (no line break of any kind,
  as :meth:`str.splitlines` sees them) that names the file or field;
- ``crash``: anything else: another exception type, a multi-line or anonymous message, a broken
  contract.

Targets (function, documented error):

==================  =============================================================  ==================
config              :func:`edge.app.config.load.load_config`                       ConfigError
gallery_export      :func:`edge.storage.gallery.exchange.read_export`, then        GalleryError
                    ``import_`` into a fresh gallery when the file is accepted
identity_names      :func:`edge.storage.gallery.records.validate_name`, then       GalleryError
                    a gallery round trip (add_identity, list) of every valid name
images              :func:`edge.imageio.read_image_bgr`                            ImageReadError
model_meta          :func:`edge.runtime.meta.meta_from_dict`, ``load_meta``        MetaError
model_files         :func:`edge.runtime.load_model` on corrupted copies            ModelFileError
                    of the shipped int8 ONNX and TFLite identity models
pts                 :func:`edge.datasets.pts.read_pts`                             DatasetFormatError
==================  =============================================================  ==================

Runs are deterministic for a given ``seed`` and Hypothesis version (no example database, no
shrinking: a crash is reported as generated). Hypothesis is imported only inside the functions
that need it: a device without it still imports this module, like the rest of ``edge/``.

``python -m edge.tools.fuzz [--examples 200] [--seed 0] [--target NAME ...]`` prints the report as
JSON; exit code 1 when anything crashed.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import copy
import dataclasses
import json
import math
import struct
import sys
import tempfile
import traceback
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, NamedTuple, Sequence

import numpy as np

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # edge/: a crash's own frames are the package's
REPO_DIR = PACKAGE_DIR.parent
IDENTITY_MODELS = PACKAGE_DIR / "models" / "identity"
IDENTITY_META = IDENTITY_MODELS / "poseface_mfn.json"
FUZZED_MODELS = (IDENTITY_MODELS / "poseface_mfn_int8.onnx", IDENTITY_MODELS / "poseface_mfn_tfl_int8.tflite")
# Loading a model is the slow part of a run: at most this many corrupted copies per run.
MODEL_EXAMPLES = 30
MAX_CRASH_EXAMPLES = 3
_THIS_FILE = Path(__file__).resolve()

# ----------------------------------------------------------------------------- hostile values

# Strings that have broken parsers before: line breaks of every kind, NUL, bidi overrides,
# SQL, paths that escape or cannot exist (an unknown user's home, a name longer than NAME_MAX).
HOSTILE_STRINGS = (
    "",
    " ",
    "\t",
    "\x00",
    "a\x00b",
    "a\nb",
    "a\r\nb",
    "a\rb",
    "x\x0by",
    "x\x85y",
    "x\u2028y",
    "x\u2029y",
    "\ufeffbom",
    "\u202eevil\u202c",
    "\u200f\u200e",
    "e\u0301",
    "\U0001f642\u200d\U0001f642",
    "'; DROP TABLE identities;--",
    'Robert"); DROP TABLE templates;--',
    "../../../../etc/passwd",
    "C:\\Windows\\System32",
    "/",
    "/dev/null",
    "~",
    "~no_such_user_fuzz/x",
    "%s%n%x",
    "{0}{1}{__class__}",
    "nan",
    "-inf",
    "null",
    "true",
    "a" * 129,
    "b" * 300,
    "\U0010ffff\ufffe\uffff",
)
# Integers around and beyond the edges of int64, float and Python's int <-> str limit.
HOSTILE_INTS = (0, -1, 1, 2**31, 2**63, -(2**63) - 1, 2**64, 10**400, -(10**400))
HOSTILE_NUMBERS = (10**400, -(10**400), 1e308, -1e308, 5e-324, -0.0, math.nan, math.inf, -math.inf)


def _hostile_scalars(st):
    return st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.sampled_from(HOSTILE_INTS),
        st.floats(),
        st.sampled_from(HOSTILE_NUMBERS),
        st.text(max_size=30),
        st.sampled_from(HOSTILE_STRINGS),
    )


def _hostile_json(st):
    """Any JSON-able value (NaN and infinities included), nested a little."""
    return st.recursive(
        _hostile_scalars(st),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
        max_leaves=6,
    )


# Raw JSON text no json.dumps writes: numbers past float range or past the int <-> str limit,
# nesting deeper than the recursion limit, constants, broken tokens.
RAW_JSON_TOKENS = (
    "NaN",
    "Infinity",
    "-Infinity",
    "1e999",
    "-1e999",
    "1" + "0" * 400,
    "1" + "0" * 5000,
    "[" * 5000 + "]" * 5000,
    '{"a":' * 3000 + "1" + "}" * 3000,
    "[[[[",
    "tru",
    "nul",
    '"\\ud800"',
    '"\\u00"',
    "0x10",
    "01",
    "1.",
    "-",
    "",
)


def _short(text: str, limit: int = 100) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ----------------------------------------------------------------------------- outcomes


class Case(NamedTuple):
    """One generated input: a short description for reports, and what the target is fed."""

    label: str
    data: Any


class Outcome(NamedTuple):
    kind: str  # "accepted" | "refused" | "crash"
    error: str = ""  # crash: what went wrong, one line
    where: str = ""  # crash: the innermost frame that raised, "edge/x.py:12 in f"
    trace: tuple = ()  # crash: the last frames, innermost last


ACCEPTED = Outcome("accepted")
REFUSED = Outcome("refused")


def is_one_line(message: str) -> bool:
    """No line break of any kind (``\\n``, ``\\r``, ``\\x0b``, ``\\x85``, ``\\u2028``, ...)."""
    return message == "" or message.splitlines() == [message]


def _frame(frame: traceback.FrameSummary) -> str:
    path = Path(frame.filename)
    try:
        shown = str(path.resolve().relative_to(REPO_DIR))
    except (ValueError, OSError):
        shown = "/".join(path.parts[-2:])
    return f"{shown}:{frame.lineno} in {frame.name}"


def crash_outcome(err: BaseException | None, why: str = "") -> Outcome:
    """A crash: ``err`` (may be None for a broken contract) and, optionally, what rule it broke."""
    if err is None:
        return Outcome("crash", why)
    frames = [f for f in traceback.extract_tb(err.__traceback__) if Path(f.filename).resolve() != _THIS_FILE]
    message = str(err)
    if why:
        error = f"{why}: {_short(repr(message), 200)}"
    else:
        first = message.splitlines()[0] if message.strip() else ""
        error = f"{type(err).__name__}: {_short(first, 200)}"
    trace = tuple(_frame(f) for f in frames[-6:])
    # Where: the innermost frame of the project, and the one that raised when that is elsewhere
    # (the standard library, a runtime).
    ours = [_frame(f) for f in frames if Path(f.filename).resolve().is_relative_to(PACKAGE_DIR)] if frames else []
    where = trace[-1] if trace else ""
    if ours and ours[-1] != where:
        where = f"{ours[-1]} -> {where}"
    return Outcome("crash", error, where, trace)


def classify(
    call: Callable[[], Any],
    refuse: type | tuple[type, ...],
    names: Sequence[str] = (),
    check: Callable[[Any], str | None] | None = None,
) -> Outcome:
    """Run ``call`` and say how it went.

    ``refuse``: the documented error type(s). ``names``: a refusal's message must contain at
    least one of them (the file name, or the field). ``check(result)``: for an accepted input,
    a broken contract as a message, else None.
    """
    try:
        result = call()
    except refuse as err:
        message = str(err)
        if not is_one_line(message):
            return crash_outcome(err, f"multi-line {type(err).__name__} message")
        if names and not any(name in message for name in names):
            return crash_outcome(err, f"{type(err).__name__} message names none of {list(names)}")
        return REFUSED
    except (Exception, SystemExit) as err:  # the point: everything else is a finding
        return crash_outcome(err)
    if check is not None:
        try:
            broken = check(result)
        except Exception as err:
            return crash_outcome(err)
        if broken:
            return crash_outcome(None, broken)
    return ACCEPTED


# ----------------------------------------------------------------------------- the driver


def _empty_stats() -> dict:
    return {"tried": 0, "accepted": 0, "refused": 0, "crashes": 0, "examples_of_crashes": []}


def fuzz_target(
    strategy: Any,
    run_one: Callable[[Any], Outcome],
    examples: int = 200,
    seed: int = 0,
    name: str = "target",
    crash_log: list | None = None,
) -> dict:
    """Feed ``examples`` values drawn from the Hypothesis ``strategy`` to ``run_one`` and count
    the outcomes. ``crash_log``: every crash is appended to it as a dict (target, input, error,
    where, trace). The ``examples_of_crashes`` shown are of distinct kinds (error type and place)
    where possible."""
    stats = _empty_stats()
    if examples <= 0:
        return stats
    from hypothesis import HealthCheck, Phase, Verbosity, given, settings
    from hypothesis import seed as fixed_seed

    kinds_shown: set = set()

    @fixed_seed(seed)
    @settings(
        max_examples=examples,
        database=None,
        deadline=None,
        derandomize=False,
        phases=(Phase.generate,),
        suppress_health_check=list(HealthCheck),
        verbosity=Verbosity.quiet,
        print_blob=False,
    )
    @given(strategy)
    def drive(case: Any) -> None:
        outcome = run_one(case)
        stats["tried"] += 1
        if outcome.kind == "accepted":
            stats["accepted"] += 1
            return
        if outcome.kind == "refused":
            stats["refused"] += 1
            return
        stats["crashes"] += 1
        label = case.label if isinstance(case, Case) else _short(repr(case))
        if crash_log is not None:
            crash_log.append(
                {"target": name, "input": label, "error": outcome.error, "where": outcome.where, "trace": outcome.trace}
            )
        kind = (outcome.error.split(":", 1)[0], outcome.where)
        shown = stats["examples_of_crashes"]
        if len(shown) < MAX_CRASH_EXAMPLES and kind not in kinds_shown:
            kinds_shown.add(kind)
            where = f" [{outcome.where}]" if outcome.where else ""
            shown.append(f"{_short(label, 120)} -> {_short(outcome.error, 150)}{where}")

    drive()
    return stats


@dataclass(frozen=True)
class Target:
    """``build(workdir)`` -> (Hypothesis strategy, run_one); ``max_examples`` caps slow targets."""

    build: Callable[[Path], tuple[Any, Callable[[Any], Outcome]]]
    max_examples: int | None = None


def run_fuzz(
    examples: int = 200,
    seed: int = 0,
    targets: Iterable[str] | Mapping[str, Target] | None = None,
    crash_log: list | None = None,
) -> dict:
    """Fuzz every target (or the ones named, or a mapping of extra :class:`Target` s).

    Returns ``{"targets": {name: {"tried", "accepted", "refused", "crashes",
    "examples_of_crashes"}}, "tried": total, "crashes": total}``. Files are written under a
    temporary folder, removed at the end. ``crash_log``: see :func:`fuzz_target`.
    """
    if targets is None:
        chosen = dict(TARGETS)
    elif isinstance(targets, Mapping):
        chosen = dict(targets)
    else:
        unknown = [t for t in targets if t not in TARGETS]
        if unknown:
            raise ValueError(f"run_fuzz: unknown target(s) {unknown}; known: {', '.join(TARGETS)}")
        chosen = {t: TARGETS[t] for t in targets}
    report: dict = {"targets": {}, "tried": 0, "crashes": 0}
    with tempfile.TemporaryDirectory(prefix="poseface-fuzz-") as tmp:
        for name, target in chosen.items():
            work = Path(tmp) / name
            work.mkdir()
            strategy, run_one = target.build(work)
            count = examples if target.max_examples is None else min(examples, target.max_examples)
            try:
                stats = fuzz_target(strategy, run_one, count, seed, name, crash_log)
            finally:
                close = getattr(run_one, "close", None)  # a target's open resources (a gallery)
                if close is not None:
                    close()
            report["targets"][name] = stats
            report["tried"] += stats["tried"]
            report["crashes"] += stats["crashes"]
    return report


# ----------------------------------------------------------------------------- byte mutations


def _byte_mutations(st, data: bytes, what: str):
    """Truncations, bit flips, zeroed or overwritten ranges, insertions, appended garbage."""
    size = len(data)

    @st.composite
    def mutate(draw) -> Case:
        kind = draw(st.sampled_from(("truncate", "truncate", "flip", "flip", "zero", "overwrite", "insert", "append")))
        if kind == "truncate":
            cut = draw(st.one_of(st.integers(0, max(0, size - 1)), st.sampled_from((0, 1, 4, 8, 16, 64))))
            cut = min(cut, max(0, size - 1))
            return Case(f"{what} truncated to {cut} of {size} bytes", data[:cut])
        buf = bytearray(data)
        if kind == "flip":
            near_start = draw(st.booleans())
            span = min(size, 512) if near_start else size
            flips = draw(st.lists(st.tuples(st.integers(0, span - 1), st.integers(0, 7)), min_size=1, max_size=8))
            for pos, bit in flips:
                buf[pos] ^= 1 << bit
            return Case(f"{what} with {len(flips)} bit(s) flipped at {sorted(p for p, _ in flips)[:4]}", bytes(buf))
        start = draw(st.integers(0, size - 1))
        length = draw(st.integers(1, 256))
        if kind == "zero":
            buf[start : start + length] = bytes(len(buf[start : start + length]))
            return Case(f"{what} with {length} bytes zeroed at {start}", bytes(buf))
        junk = draw(st.binary(min_size=1, max_size=64))
        if kind == "overwrite":
            buf[start : start + len(junk)] = junk
            return Case(f"{what} with {len(junk)} bytes overwritten at {start}", bytes(buf[:size]))
        if kind == "insert":
            buf[start:start] = junk
            return Case(f"{what} with {len(junk)} bytes inserted at {start}", bytes(buf))
        return Case(f"{what} with {len(junk)} bytes appended", data + junk)

    return mutate()


# ----------------------------------------------------------------------------- target: config


class _Raw(str):
    """A TOML value written as is (a token no serializer would write)."""


RAW_TOML_TOKENS = (
    "1" + "0" * 400,
    "1" + "0" * 5000,
    "[" * 3000 + "]" * 3000,
    "1979-05-27T07:32:00Z",
    "1979-05-27",
    "07:32:00",
    "0x7fffffffffffffffffff",
    "0o777",
    "0b101",
    "1_000",
    "+inf",
    "-nan",
    "1e400",
    "'''multi\nline'''",
    '"""a\nb"""',
    "{}",
    "[]",
)


def _toml_string(text: str) -> str:
    out = ['"']
    for char in text:
        code = ord(char)
        if char == '"':
            out.append('\\"')
        elif char == "\\":
            out.append("\\\\")
        elif code < 0x20 or code == 0x7F or 0xD800 <= code <= 0xDFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def _toml_key(key: str) -> str:
    bare = key and all(c.isascii() and (c.isalnum() or c in "_-") for c in key)
    return key if bare else _toml_string(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, _Raw):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(str(k))} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no TOML for {type(value).__name__}")  # pragma: no cover - a bug in the strategies


def toml_document(doc: Mapping[str, Any]) -> str:
    """``doc`` as TOML text: top-level values first, then one ``[table]`` per dict."""
    lines = [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in doc.items() if not isinstance(v, dict)]
    for key, table in doc.items():
        if isinstance(table, dict):
            lines.append(f"[{_toml_key(key)}]")
            lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


# Path values: an unknown user's home, a component longer than NAME_MAX, line breaks, NUL.
HOSTILE_PATHS = (
    "~no_such_user_fuzz/model.onnx",
    "~",
    "n" * 300 + ".onnx",
    "d" * 300 + "/model.onnx",
    "a\nb.onnx",
    "a\rb",
    "x\u2028y.onnx",
    "x\x1cy",
    "\x00",
    "a\x00b.onnx",
    "/",
    ".",
    "..",
    "",
    " ",
    "/dev/null",
    "/proc/self/mem",
    "missing.onnx",
    "missing.tflite",
    "models/",
    "C:\\models\\m.onnx",
    "%2e%2e/x.onnx",
)


def _config_schema() -> dict[tuple[str, ...], tuple[dict, Any, str]]:
    """Every key of the runtime config: (section, key) -> (field metadata, default as plain data,
    kind: "path", "float", "int", "floats" (a list), or "other")."""
    from edge.app.config.schema import RuntimeConfig

    out: dict[tuple[str, ...], tuple[dict, Any, str]] = {}

    def kind_of(hint: Any) -> str:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if typing.get_origin(hint) is typing.Union and len(args) == 1:
            hint = args[0]
        if typing.get_origin(hint) is tuple and typing.get_args(hint)[:1] == (float,):
            return "floats"
        return {Path: "path", float: "float", int: "int"}.get(hint, "other")

    def walk(cls: type, prefix: tuple[str, ...]) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.metadata.get("internal"):
                continue
            if dataclasses.is_dataclass(hints[f.name]):
                walk(hints[f.name], prefix + (f.name,))
                continue
            if f.default is not dataclasses.MISSING:
                default = f.default
            elif f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            else:
                default = None
            out[prefix + (f.name,)] = (dict(f.metadata), _plain(default), kind_of(hints[f.name]))

    walk(RuntimeConfig, ())
    return out


def _good_values(meta: Mapping[str, Any], default: Any, kind: str = "other") -> list:
    """The default, every allowed choice, each bound with its neighbours (in and out of range),
    and for numbers and paths the values just past what the type can hold."""
    values = [default] if default is not None else []
    values += list(meta.get("choices", ()))
    for bound in ("ge", "gt", "le", "lt"):
        if bound in meta:
            edge = meta[bound]
            step = 1 if isinstance(edge, int) else 1e-9
            values += [edge, edge - step, edge + step, -edge, edge * 1000]
    if kind in ("float", "int"):
        values += [10**400, -(10**400), 2**64, 1e308, math.nan, math.inf]
    elif kind == "floats":
        values += [[10**400], [15.0, 10**400], [math.nan], [], [45.0, 30.0]]
    elif kind == "path":
        values += list(HOSTILE_PATHS)
    return values


def _config_target(work: Path):
    from hypothesis import strategies as st

    from edge.app.config.errors import ConfigError
    from edge.app.config.load import load_config
    from edge.app.config.profiles import available_profiles, profile_dirs
    from edge.app.config.schema import BACKENDS, PRECISIONS, SINKS
    from edge.shipped import SHIPPED_LANDMARKS

    path = work / "fuzz_config.toml"
    schema = _config_schema()
    keys = sorted(schema)
    sections = sorted({k[0] for k in keys if len(k) > 1})
    sink_fields: dict[str, tuple[dict, Any]] = {}
    for cls in SINKS.values():
        for f in dataclasses.fields(cls):
            default = None if f.default is dataclasses.MISSING else _plain(f.default)
            sink_fields.setdefault(f.name, (dict(f.metadata), default))
    profile_files = [p for d in profile_dirs(work) if d.is_dir() for p in sorted(d.glob("*.toml"))]
    # A refusal names the fuzzed file, or the profile file the fuzzed file pulled in.
    names = (path.name, *(p.name for p in profile_files))

    scalars = st.one_of(
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.sampled_from(HOSTILE_INTS),
        st.floats(),
        st.text(max_size=30),
        st.sampled_from(HOSTILE_STRINGS),
        st.sampled_from([_Raw(t) for t in RAW_TOML_TOKENS]),
    )
    values = st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
        max_leaves=5,
    )
    paths = st.one_of(st.sampled_from(HOSTILE_PATHS), st.text(max_size=20), st.just(str(SHIPPED_LANDMARKS)))
    hostile_text = st.one_of(st.sampled_from(HOSTILE_STRINGS), st.text(max_size=30))

    def value_for(meta: Mapping[str, Any], default: Any, kind: str = "other"):
        good = _good_values(meta, default, kind)
        return st.one_of(st.sampled_from(good), values) if good else values

    @st.composite
    def sinks(draw) -> list:
        out = []
        for _ in range(draw(st.integers(0, 3))):
            table: dict[str, Any] = {"type": draw(st.one_of(st.sampled_from(sorted(SINKS)), scalars, values))}
            good = {"host": "broker.local", "url": "https://example.org/hook", "path": "events.jsonl"}
            for key in draw(st.lists(st.sampled_from(sorted(sink_fields)), max_size=3)):
                meta, default = sink_fields[key]
                kind = "path" if key.endswith("_file") or key == "path" else "other"
                table[key] = draw(st.one_of(st.just(good.get(key, default)), value_for(meta, default, kind)))
            out.append({k: v for k, v in table.items() if v is not None})
        return out

    profile_values = st.one_of(
        st.sampled_from(available_profiles(work) or ["pi4"]),
        st.sampled_from(("missing", "missing.toml", "../x.toml", "pi4.toml", "pi 4", "n" * 300 + ".toml")),
        st.sampled_from(HOSTILE_STRINGS),
        values,
    )

    @st.composite
    def scenarios(draw) -> dict:
        """A few keys that only mean something together, so the checks across fields run."""
        pick = draw(st.integers(0, 10))
        if pick == 0:
            return {"source": {"type": draw(st.sampled_from(("video", "folder"))), "path": draw(paths)}}
        if pick == 1:
            return {"source": {"type": draw(st.sampled_from(("rtsp", "http"))), "uri": draw(hostile_text)}}
        if pick == 2:
            return {"source": {"type": "v4l2", "device": draw(hostile_text)}}
        if pick == 3:
            pipeline = draw(st.one_of(hostile_text, hostile_text.map(lambda t: f"src ! {t} ! appsink")))
            return {"source": {"type": "jetson_csi", "pipeline": pipeline}}
        if pick == 4:
            bind = draw(st.one_of(st.sampled_from(("0.0.0.0", "127.0.0.1", "::", "::1")), hostile_text))
            return {"health": {"enabled": True, "bind": bind, "token_file": draw(paths)}}
        if pick == 5:
            key = draw(st.sampled_from(("password_file", "ca_file")))
            return {"events": {"sinks": [{"type": "mqtt", "host": draw(hostile_text), key: draw(paths)}]}}
        if pick == 6:
            return {"events": {"sinks": [{"type": "webhook", "url": draw(hostile_text), "ca_file": draw(paths)}]}}
        if pick == 7:
            return {"privacy": {"store_face_images": True, "face_images_dir": draw(paths)}}
        if pick == 8:
            backend = draw(st.sampled_from(BACKENDS))
            precision = draw(st.sampled_from(PRECISIONS))
            section = draw(st.sampled_from(("landmarks", "embedding")))
            return {"runtime": {"backend": backend, "precision": precision}, section: {"model": draw(paths)}}
        if pick == 9:
            key = draw(st.sampled_from(("path", "key_file", "key_credential")))
            return {"gallery": {key: draw(st.one_of(paths, hostile_text))}}
        edges = draw(st.lists(st.one_of(st.floats(-10, 100), st.sampled_from(HOSTILE_NUMBERS)), max_size=4))
        thresholds = draw(st.one_of(st.just("from_model_metadata"), st.lists(st.floats(-2, 2), max_size=5), values))
        return {"matching": {"yaw_bin_edges": edges, "thresholds": thresholds}}

    def put(doc: dict, key: Sequence[str], value: Any) -> None:
        if value is None:  # TOML has no null: the key is left out
            return
        node = doc
        for part in key[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[key[-1]] = value

    @st.composite
    def documents(draw) -> dict:
        # Few changes per file: the first bad key stops validation, and hides the others.
        doc: dict = draw(scenarios()) if draw(st.booleans()) else {}
        for _ in range(draw(st.sampled_from((0, 1, 1, 1, 2, 2, 3, 6)) if doc else st.sampled_from((1, 1, 2, 3, 6)))):
            kind = draw(st.sampled_from(("key", "key", "key", "key", "sinks", "profile", "unknown", "not_a_table")))
            if kind == "key":
                key = draw(st.sampled_from(keys))
                put(doc, key, draw(value_for(*schema[key])))
            elif kind == "sinks":
                put(doc, ("events", "sinks"), draw(sinks()))
            elif kind == "profile":
                put(doc, ("profile",), draw(profile_values))
            elif kind == "unknown":
                where = draw(st.sampled_from([(), *((s,) for s in sections)]))
                put(doc, (*where, draw(st.text(min_size=1, max_size=12))), draw(values))
            else:
                put(doc, (draw(st.sampled_from(sections)),), draw(scalars))
        return doc

    @st.composite
    def broken_toml(draw) -> Case:
        text = toml_document(draw(documents()))
        pos = draw(st.integers(0, len(text)))
        kind = draw(st.sampled_from(("truncate", "insert", "delete", "duplicate")))
        if kind == "truncate":
            return Case(f"broken TOML (truncated at {pos}): {_short(repr(text[:pos]), 80)}", text[:pos].encode("utf-8"))
        if kind == "insert":
            junk = draw(st.sampled_from(("[", "]", '"', "'", "=", "\n", "{", "}", "#", "\\", "\x00", '"""', "[[", ".")))
            text = text[:pos] + junk + text[pos:]
        elif kind == "delete":
            text = text[:pos] + text[pos + draw(st.integers(1, 20)) :]
        else:
            lines = text.splitlines(keepends=True)
            index = draw(st.integers(0, len(lines) - 1))
            text = "".join(lines[: index + 1] + lines[index:])
        return Case(f"broken TOML ({kind}): {_short(repr(text), 120)}", text.encode("utf-8"))

    def structured(doc: dict) -> Case:
        text = toml_document(doc)
        return Case(f"TOML {_short(repr(text), 160)}", text.encode("utf-8"))

    strategy = st.one_of(
        st.binary(max_size=300).map(lambda b: Case(f"random bytes {_short(repr(b), 80)}", b)),
        broken_toml(),
        documents().map(structured),
        documents().map(structured),
    )

    def run_one(case: Case) -> Outcome:
        path.write_bytes(case.data)
        return classify(lambda: load_config(path), ConfigError, names)

    return strategy, run_one


# ----------------------------------------------------------------------------- target: gallery export

BAD_BASE64 = (
    "",
    "!!!!",
    "AAAA",
    "AAA",
    "AAAA=",
    "A===",
    "AA AA",
    "AA\nAA",
    "ÀÀÀÀ",
    "-_-_",
    base64.b64encode(struct.pack("<8f", *([float("nan")] * 8))).decode("ascii"),
    base64.b64encode(struct.pack("<8f", *([float("inf")] * 8))).decode("ascii"),
    base64.b64encode(bytes(32)).decode("ascii"),
    base64.b64encode(bytes(31)).decode("ascii"),
    base64.b64encode(bytes(36)).decode("ascii"),
    base64.b64encode(struct.pack("<8f", *([3.0e38] * 8))).decode("ascii"),
)


# The fields the export reader checks inside a record line (top-level keys are always in focus).
EXPORT_FOCUS = tuple(("templates", k, f) for k in (0, 1) for f in ("embedding", "yaw_deg", "created", "source")) + (
    ("templates", 0),
    ("metadata", "team"),
)


_COUNTS = (0, 1, 2, 3, 4, -1, True, None, "3", 3.0) + HOSTILE_NUMBERS
_TIMES = ("", "2024-01-01T00:00:00Z", "yesterday", "\ud800", 0, None, "x" * 2000)
EXPORT_VALUES = {
    "embedding": BAD_BASE64 + (None, 0, ["AAAA"]),
    "yaw_deg": HOSTILE_NUMBERS + (180.0, -180.0, 180.0001, "0", None, True, [0.0]),
    "created": _TIMES,
    "exported": _TIMES,
    "source": ("\ud800", "a\ud800b", "x" * 1025, "x" * 1024, "", None, 0, "a\nb"),
    "name": HOSTILE_STRINGS + ("\ud800", "Ann", "Zoë", "Zoe\u0308", None, 0),
    "metadata": ([], "x", None, {"\ud800": 1}, {"k": "\ud800"}, {"k": math.nan}, {"k": 10**400}),
    "templates": ([], {}, [{}], [None], "x", None),
    "format": ("poseface.gallery ", "POSEFACE.GALLERY", "", None, 1),
    "version": _COUNTS,
    "dim": _COUNTS + (2**31, 2**64),
    "identities": _COUNTS,
}


def _export_values(path: tuple) -> Sequence:
    for part in reversed(path):
        if isinstance(part, str):
            return EXPORT_VALUES.get(part, ())
    return ()


def _json_paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    paths = []
    if isinstance(value, dict):
        for key, item in value.items():
            paths.append(prefix + (key,))
            paths += _json_paths(item, prefix + (key,))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            paths.append(prefix + (index,))
            paths += _json_paths(item, prefix + (index,))
    return paths


def _json_parent(value: Any, path: tuple) -> Any:
    for part in path[:-1]:
        value = value[part]
    return value


_RAW_MARK = "@@fuzz-raw@@"


def _json_mutation(
    st,
    obj: Any,
    label: str,
    field_values: Callable[[tuple], Sequence] | None = None,
    allow_raw: bool = True,
    focus: Sequence = (),
):
    """One structural change to a parsed JSON object: drop a key, add one, or set a value to a
    hostile one (``field_values(path)``: values that target that field, used two times in three),
    or to raw text no encoder writes.

    Half the changes hit a top-level key or a path in ``focus`` (the fields a parser checks),
    the rest any path at all (deep inside free-form objects too)."""

    @st.composite
    def mutate(draw) -> tuple[str, str]:
        data = copy.deepcopy(obj)
        paths = _json_paths(data)
        focused = [p for p in paths if len(p) == 1 or p in focus]
        raw_kind = "raw" if allow_raw else "set"
        kind = draw(st.sampled_from(("drop", "add", "set", "set", "set", raw_kind, raw_kind)))
        if kind == "add" or not paths:
            target = draw(st.sampled_from([()] + [p for p in paths if isinstance(_json_parent(data, p + (0,)), dict)]))
            parent = _json_parent(data, target + (0,)) if target else data
            key = draw(st.one_of(st.text(max_size=10), st.sampled_from(("name", "dim", "embedding", "sha256", "x"))))
            parent[key] = draw(_hostile_json(st))
            return f"{label}: added {'.'.join(map(str, target + (key,)))}", json.dumps(data, ensure_ascii=False)
        path = draw(st.sampled_from(focused if focused and draw(st.booleans()) else paths))
        parent = _json_parent(data, path)
        where = ".".join(map(str, path))
        if kind == "drop":
            del parent[path[-1]]
            return f"{label}: dropped {where}", json.dumps(data, ensure_ascii=False)
        if kind == "raw":
            raw = draw(st.sampled_from(RAW_JSON_TOKENS))
            parent[path[-1]] = _RAW_MARK
            text = json.dumps(data, ensure_ascii=False).replace(json.dumps(_RAW_MARK), raw, 1)
            return f"{label}: {where} = raw {_short(raw, 40)}", text
        choices = _hostile_json(st)
        special = field_values(path) if field_values is not None else ()
        if special:
            choices = st.one_of(st.sampled_from(tuple(special)), st.sampled_from(tuple(special)), choices)
        value = draw(choices)
        parent[path[-1]] = value
        ascii_only = draw(st.booleans())
        return f"{label}: {where} = {_short(repr(value), 60)}", json.dumps(data, ensure_ascii=ascii_only)

    return mutate()


def _gallery_export_target(work: Path):
    from hypothesis import strategies as st

    from edge.storage.gallery.records import GalleryError, Template
    from edge.storage.gallery.store import Gallery

    rng = np.random.default_rng(0)
    with Gallery.open(work / "source.sqlite") as gallery:
        gallery.add_identity("Ann", [Template(rng.normal(size=8), 0.0, "ann_front.jpg")])
        gallery.add_identity(
            "Bo Li",
            [Template(rng.normal(size=8), -35.5, "cam0"), Template(rng.normal(size=8), 60.0, "cam1")],
            metadata={"team": "blue", "badge": 17},
        )
        gallery.add_identity("Zoë", [Template(rng.normal(size=8), 12.25, "")])
        gallery.export(work / "valid.jsonl")
    valid = (work / "valid.jsonl").read_bytes()
    lines = valid.decode("utf-8").splitlines()
    parsed = [json.loads(line) for line in lines]
    path = work / "fuzz_export.jsonl"
    fresh = work / "import.sqlite"

    @st.composite
    def structural(draw) -> Case:
        index = draw(st.integers(0, len(lines) - 1))
        label, text = draw(_json_mutation(st, parsed[index], f"line {index + 1}", _export_values, focus=EXPORT_FOCUS))
        new = lines[:index] + [text] + lines[index + 1 :]
        return Case(_short(label, 160), ("\n".join(new) + "\n").encode("utf-8", "surrogatepass"))

    @st.composite
    def line_edits(draw) -> Case:
        kind = draw(st.sampled_from(("drop", "duplicate", "swap", "replace", "blank", "crlf", "bom", "utf16")))
        new = list(lines)
        index = draw(st.integers(0, len(new) - 1))
        if kind == "drop":
            del new[index]
        elif kind == "duplicate":
            new.insert(index, new[index])
        elif kind == "swap":
            other = draw(st.integers(0, len(new) - 1))
            new[index], new[other] = new[other], new[index]
        elif kind == "replace":
            new[index] = draw(st.one_of(st.text(max_size=40), st.sampled_from(RAW_JSON_TOKENS + HOSTILE_STRINGS)))
        elif kind == "blank":
            new.insert(index, "")
        text = "\n".join(new) + "\n"
        if kind == "crlf":
            return Case("CRLF line endings", text.replace("\n", "\r\n").encode("utf-8"))
        if kind == "bom":
            return Case("UTF-8 BOM", b"\xef\xbb\xbf" + text.encode("utf-8"))
        if kind == "utf16":
            return Case("UTF-16 text", text.encode("utf-16"))
        shown = repr(new[index]) if index < len(new) else "(end of file)"
        return Case(f"line {index + 1} {kind}: {_short(shown, 80)}", text.encode("utf-8"))

    strategy = st.one_of(
        st.just(Case("the valid export", valid)),
        _byte_mutations(st, valid, "export"),
        line_edits(),
        structural(),
        structural(),
        structural(),
    )

    def load() -> None:
        from edge.storage.gallery.exchange import read_export

        read_export(path)
        # An accepted file must also import: into a fresh gallery each time.
        for suffix in ("", "-wal", "-shm"):
            Path(f"{fresh}{suffix}").unlink(missing_ok=True)
        with Gallery.open(fresh) as gallery:
            gallery.import_(path)

    def run_one(case: Case) -> Outcome:
        path.write_bytes(case.data)
        return classify(load, GalleryError, (path.name, fresh.name))

    return strategy, run_one


# ----------------------------------------------------------------------------- target: identity names

NAME_CHARS = (
    "\x00\x01\x07\x08\t\n\x0b\x0c\r\x1b\x7f\x85\xa0\u2028\u2029\u200b\u200d\u200e\u200f\u202a\u202e\u2066"
    "\ufeff\ufffd\ufffe/\\.'\";%_-*?:|<> aZé\u0301\u00c5\u212b\u0130\u0131\u03a3\u1e9e\U0001f642\U0001f1fa"
)


def _names_target(work: Path):
    from hypothesis import strategies as st

    from edge.storage.gallery.records import MAX_NAME_LENGTH, GalleryError, Template, validate_name
    from edge.storage.gallery.store import Gallery

    gallery = Gallery.open(work / "names.sqlite")
    enrolled: set[str] = set()
    template = Template(np.arange(1.0, 9.0), 0.0, "fuzz")

    strategy = st.one_of(
        st.text(max_size=40),
        st.text(alphabet=st.sampled_from(NAME_CHARS), max_size=30),
        st.sampled_from(HOSTILE_STRINGS),
        st.lists(st.sampled_from(HOSTILE_STRINGS + ("Ann", "Zoë", " ")), min_size=2, max_size=4).map("".join),
        st.text(min_size=MAX_NAME_LENGTH - 2, max_size=MAX_NAME_LENGTH + 3),
        st.sampled_from(("\ud800", "a\udfffb")),  # lone surrogates: not encodable as UTF-8
        st.one_of(st.none(), st.integers(), st.binary(max_size=8), st.lists(st.text(max_size=3), max_size=2)),
    ).map(lambda name: Case(f"name {_short(repr(name), 120)}", name))

    def round_trip(name: str) -> str | None:
        """Enrol ``name`` and read it back; returns what went wrong, or None."""
        expected = validate_name(name)
        if expected not in enrolled:
            gallery.add_identity(name, [template])
            enrolled.add(expected)
        listed = [ident.name for ident in gallery.list()]
        if listed.count(expected) != 1:
            return f"round trip: {expected!r} listed {listed.count(expected)} times"
        if gallery.identity(name).name != expected:
            return f"round trip: identity({name!r}).name is {gallery.identity(name).name!r}, expected {expected!r}"
        if name not in gallery:
            return f"round trip: {name!r} in gallery is False after enrolment"
        return None

    def run_one(case: Case) -> Outcome:
        outcome = classify(lambda: validate_name(case.data), GalleryError, ("identity name",))
        if outcome.kind != "accepted":
            return outcome
        try:
            broken = round_trip(case.data)
        except Exception as err:
            return crash_outcome(err)
        return crash_outcome(None, broken) if broken else ACCEPTED

    run_one.close = gallery.close  # type: ignore[attr-defined]  # run_fuzz closes it after the run
    return strategy, run_one


# ----------------------------------------------------------------------------- target: images


def _base_images() -> dict[str, bytes]:
    import cv2

    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, 32, dtype=np.float64)[None, :, None]
    image = np.clip(ramp + rng.normal(0, 20, size=(24, 32, 3)), 0, 255).astype(np.uint8)
    out = {}
    for suffix in (".png", ".jpg", ".bmp", ".ppm", ".pgm", ".pbm", ".tiff", ".webp", ".hdr", ".sr", ".pfm"):
        pixels = image[:, :, 0] if suffix in (".pgm", ".pbm") else image
        try:
            ok, buf = cv2.imencode(suffix, pixels)
        except cv2.error:
            continue
        if ok:
            out[suffix] = buf.tobytes()
    return out


ODD_IMAGE_BYTES = (
    b"",
    b"\x00",
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\xff\xff\xff\x00\x00\x00!\xf9\x04\x00\x00\x00\x00\x00,",
    b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>',
    b"P6\n30000 30000\n255\n\x00\x00\x00",
    b"P6\n0 5\n255\n" + bytes(75),
    b"PF\n0 24\n-1.0\n" + bytes(64),
    b"Pf\n99999 99999\n-1.0\n" + bytes(64),
    b"P5\n-1 -1\n255\n",
    b"P6\n0 0\n255\n",
    b"BM" + bytes(60),
    b"\xff\xd8\xff",
    b"\x89PNG\r\n\x1a\n",
    b"II*\x00" + bytes(16),
    b"RIFF\x00\x00\x00\x00WEBPVP8 ",
    b"#?RADIANCE\n",
    b"not an image at all\n",
)


def _images_target(work: Path):
    from hypothesis import strategies as st

    from edge.imageio import IMAGE_SUFFIXES, ImageReadError, read_image_bgr

    bases = _base_images()
    suffixes = (*IMAGE_SUFFIXES, ".gif", ".txt", "")

    @st.composite
    def cases(draw) -> Case:
        suffix = draw(st.sampled_from(suffixes))
        kind = draw(st.sampled_from(("valid", "mutated", "mutated", "mutated", "mutated", "odd", "random", "head")))
        if kind in ("valid", "mutated", "head"):
            fmt = draw(st.sampled_from(sorted(bases)))
            data = bases[fmt]
            if kind == "mutated":
                case = draw(_byte_mutations(st, data, fmt))
                return Case(case.label, (suffix, case.data))
            if kind == "head":
                keep = draw(st.integers(1, min(64, len(data))))
                tail = draw(st.binary(max_size=64))
                return Case(f"first {keep} bytes of {fmt} + {len(tail)} random bytes", (suffix, data[:keep] + tail))
            return Case(f"valid {fmt}", (suffix, data))
        if kind == "odd":
            data = draw(st.sampled_from(ODD_IMAGE_BYTES))
            return Case(f"odd bytes {_short(repr(data), 60)}", (suffix, data))
        data = draw(st.binary(max_size=200))
        return Case(f"random bytes {_short(repr(data), 60)}", (suffix, data))

    strategy = st.one_of(
        cases(),
        st.sampled_from(("missing", "directory")).map(lambda what: Case(f"a {what} path", (what, None))),
    )

    def check(image: Any) -> str | None:
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            shape = getattr(image, "shape", None)
            return f"read_image_bgr returned {type(image).__name__} {shape}, expected (H, W, 3) uint8"
        return None

    def run_one(case: Case) -> Outcome:
        suffix, data = case.data
        if data is None:
            path = work / ("no_such_image.png" if suffix == "missing" else "a_folder.jpg")
            if suffix == "directory":
                path.mkdir(exist_ok=True)
        else:
            path = work / f"fuzz_image{suffix}"
            path.write_bytes(data)
        try:
            return classify(lambda: read_image_bgr(path), ImageReadError, (path.name,), check)
        finally:
            if data is not None:
                path.unlink()

    return strategy, run_one


# ----------------------------------------------------------------------------- target: model metadata

ENUM_NEAR_MISSES = ("ONNX", "onnx ", "tflite\x00", "pb", "int4", "FP32", "nchw", "NCHWC", "RGBA", "bgr", "gray", "")
SHA_MUTATIONS = (
    "0" * 63,
    "0" * 65,
    "A" * 64,
    "g" * 64,
    " " + "0" * 63,
    "0" * 64 + "\n",
    "0x" + "0" * 62,
    "",
    0,
    ["0" * 64],
)
_SIZES = ([112], [0, 112], [112.0, 112], [True, 1], [-1, 5], [10**400, 1], [112, 112, 3], "112x112", 112)
_NORMS = (
    {"mean": [127.5] * 3},
    {"mean": [127.5] * 3, "std": [0, 0, 0]},
    {"mean": [127.5] * 2, "std": [1.0] * 2},
    {"mean": [math.nan] * 3, "std": [1.0] * 3},
    {"mean": [10**400] * 3, "std": [1.0] * 3},
    {"mean": [127.5] * 3, "std": [-(10**400)] * 3},
    {"mean": ["0"] * 3, "std": [1.0] * 3},
    {"mean": [127.5] * 3, "std": [1.0] * 3, "scale": 1},
    [127.5, 128.0],
)
META_VALUES: dict[str, tuple] = {
    "format": ENUM_NEAR_MISSES,
    "precision": ENUM_NEAR_MISSES,
    "input_layout": ENUM_NEAR_MISSES,
    "color_order": ENUM_NEAR_MISSES,
    "sha256": SHA_MUTATIONS,
    "input_size": _SIZES,
    "normalisation": _NORMS,
    "output_names": (["embedding", "embedding"], [""], [1], [], "embedding", [None]),
    "accuracy": ({"acc": math.nan}, {"acc": "0.9"}, {"acc": 10**400}, {"acc": True}, {"acc": None}, [0.9]),
    "extra": ([], "x", None, 0),
    "landmark_scheme": ("", 68, "ibug68", None),
}


def _meta_values(path: tuple) -> Sequence:
    """Values aimed at the field ``path`` is in: near-miss enums, bad sizes, numbers past float range."""
    if len(path) > 1 and path[0] in ("input_size", "normalisation", "accuracy"):
        return HOSTILE_NUMBERS + ("1", None, True, [1.0])
    return META_VALUES.get(path[0], ()) + (None, 0, "", [], {})


META_FOCUS = (
    ("normalisation", "mean"),
    ("normalisation", "std"),
    ("normalisation", "mean", 0),
    ("input_size", 0),
    ("output_names", 0),
    ("accuracy", "cfp_fold9_ff_acc_fiducials"),
    ("extra", "embedding_dim"),
)


def _meta_target(work: Path):
    from hypothesis import strategies as st

    from edge.runtime.meta import MetaError, load_meta, meta_from_dict

    # poseface_mfn.json first, then its int8 and TFLite variants (other formats and precisions).
    files = [IDENTITY_META] + [p for p in sorted(IDENTITY_MODELS.glob("*.json")) if p != IDENTITY_META]
    bases = [json.loads(p.read_text(encoding="utf-8")) for p in files]
    source = "fuzz_meta.json"
    path = work / source

    @st.composite
    def dict_cases(draw) -> Case:
        index = draw(st.integers(0, len(bases) - 1))
        data = bases[index]
        labels = []
        for _ in range(draw(st.integers(1, 3))):
            # No raw tokens here: a dict is what a JSON parser already returned.
            label, text = draw(_json_mutation(st, data, "meta", _meta_values, allow_raw=False, focus=META_FOCUS))
            data = json.loads(text)
            labels.append(label.removeprefix("meta: "))
        return Case(_short("dict: " + "; ".join(labels), 160), ("dict", data))

    @st.composite
    def file_cases(draw) -> Case:
        data = bases[draw(st.integers(0, len(bases) - 1))]
        kind = draw(st.sampled_from(("field", "field", "bytes", "valid")))
        if kind == "field":
            label, text = draw(_json_mutation(st, data, "file", _meta_values, focus=META_FOCUS))
            return Case(_short(label, 160), ("file", text.encode("utf-8", "surrogatepass")))
        raw = json.dumps(data, indent=2).encode("utf-8")
        if kind == "valid":
            return Case("file: a shipped metadata file", ("file", raw))
        case = draw(_byte_mutations(st, raw, "metadata JSON"))
        return Case(case.label, ("file", case.data))

    def run_one(case: Case) -> Outcome:
        mode, data = case.data
        if mode == "dict":
            return classify(lambda: meta_from_dict(data, source=source), MetaError, (source,))
        path.write_bytes(data)
        return classify(lambda: load_meta(path), MetaError, (path.name,))

    not_an_object = _hostile_json(st).map(lambda v: Case(f"dict: top level {_short(repr(v), 60)}", ("dict", v)))
    strategy = st.one_of(dict_cases(), dict_cases(), file_cases(), file_cases(), not_an_object)
    return strategy, run_one


# ----------------------------------------------------------------------------- target: model files


def _model_files_target(work: Path):
    from hypothesis import strategies as st

    from edge.runtime import ModelFileError, load_model

    models = {}
    for source in FUZZED_MODELS:
        folder = work / source.suffix.lstrip(".")
        folder.mkdir()
        target = folder / source.name
        meta = json.loads(source.with_suffix(".json").read_text(encoding="utf-8"))
        meta["sha256"] = None  # the loader must reach the corrupted file, not stop at its hash
        target.with_suffix(".json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
        models[source.name] = (target, source.read_bytes())
    other = {FUZZED_MODELS[0].name: FUZZED_MODELS[1].name, FUZZED_MODELS[1].name: FUZZED_MODELS[0].name}

    @st.composite
    def cases(draw) -> Case:
        name = draw(st.sampled_from(sorted(models)))
        data = models[name][1]
        kind = draw(st.sampled_from(("mutated", "mutated", "mutated", "mutated", "odd", "valid")))
        if kind == "mutated":
            case = draw(_byte_mutations(st, data, name))
            return Case(case.label, (name, case.data))
        if kind == "valid":
            return Case(f"{name} unchanged", (name, data))
        odd = draw(
            st.sampled_from(("empty", "random", "other model", "text", "header only")),
        )
        if odd == "empty":
            blob = b""
        elif odd == "random":
            blob = draw(st.binary(min_size=1, max_size=512))
        elif odd == "other model":
            blob = models[other[name]][1]
        elif odd == "text":
            blob = b"version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 1\n"
        else:
            blob = data[:8] + bytes(64)
        return Case(f"{name} replaced by {odd} ({len(blob)} bytes)", (name, blob))

    def run_one(case: Case) -> Outcome:
        name, blob = case.data
        target = models[name][0]
        target.write_bytes(blob)
        return classify(lambda: load_model(target, threads=1), ModelFileError, (target.name,))

    return cases(), run_one


# ----------------------------------------------------------------------------- target: iBUG .pts


def _pts_target(work: Path):
    from hypothesis import strategies as st

    from edge.datasets.pts import read_pts
    from edge.datasets.root import DatasetFormatError

    path = work / "fuzz_face.pts"
    rng = np.random.default_rng(0)

    def pts_text(n: int) -> str:
        body = "".join(f"{x:.3f} {y:.3f}\n" for x, y in rng.uniform(0, 640, size=(n, 2)))
        return f"version: 1\nn_points: {n}\n{{\n{body}}}\n"

    bases = {68: pts_text(68), 5: pts_text(5), 0: pts_text(0)}
    hostile_lines = (
        "",
        "}",
        "{",
        "version: 2",
        "version:1.0",
        "n_points: -1",
        "n_points: 68.0",
        "n_points: 0x44",
        "n_points: ６８",
        "n_points: 1000000000000",
        "n_points: 99999999999999999999999",
        "n_points: " + "9" * 5000,
        "n_points:",
        "nan nan",
        "inf 0",
        "1e999 1",
        "1,5 2,5",
        "1 2 3",
        "1",
        "1_0 2_0",
        "0x10 1",
        "١٢ ٣٤",
        "\x00 \x00",
        "1\u20282",
        "1\x0c2 3",
        "#comment",
        "version: 1 n_points: 68",
    )

    header_lines = (
        ("version: 2", "version:1.0", "version: ", "Version: 1", "version 1", "version: 1 # 300-W", "\ufeffversion: 1"),
        tuple(
            f"n_points: {n}"
            for n in ("-1", "68.0", "0x44", "６８", "", "1e3", "10" * 6, str(10**12), str(10**20), "9" * 5000, " 68 ")
        ),
    )

    @st.composite
    def cases(draw) -> Case:
        n_points = draw(st.sampled_from((68, 68, 68, None, None, 5, 0)))
        base = bases[5 if n_points is None else n_points]
        kinds = ("valid", "header", "header", "line", "line", "bytes", "bytes", "ending", "random")
        kind = draw(st.sampled_from(kinds))
        if kind == "valid":
            return Case(f"a valid .pts (n_points={n_points})", (n_points, base.encode("utf-8")))
        if kind == "bytes":
            case = draw(_byte_mutations(st, base.encode("utf-8"), ".pts"))
            return Case(f"{case.label} (n_points={n_points})", (n_points, case.data))
        if kind == "ending":
            ending = draw(st.sampled_from(("\r\n", "\r", "\u2028", "\x0b", "\x1e", "\x85")))
            bom = draw(st.sampled_from(("", "\ufeff")))
            text = bom + base.replace("\n", ending)
            return Case(f"line endings {ending!r}, bom {bool(bom)} (n_points={n_points})", (n_points, text.encode()))
        if kind == "random":
            text = draw(st.text(max_size=200))
            return Case(f"random text {_short(repr(text), 80)} (n_points={n_points})", (n_points, text.encode()))
        lines = base.splitlines()
        if kind == "header":
            index = draw(st.sampled_from((0, 1, 1)))
            lines[index] = draw(st.sampled_from(header_lines[index]))
            text = "\n".join(lines) + "\n"
            return Case(f"header {lines[index]!r} (n_points={n_points})", (n_points, text.encode("utf-8")))
        # Half the line edits hit the header ("version", "n_points", "{"), where the parser decides most.
        index = draw(st.integers(0, 3) if draw(st.booleans()) else st.integers(0, len(lines)))
        new = draw(st.one_of(st.sampled_from(hostile_lines), st.text(max_size=20)))
        action = draw(st.sampled_from(("replace", "insert", "delete")))
        if action == "replace" and index < len(lines):
            lines[index] = new
        elif action == "delete" and index < len(lines):
            del lines[index]
        else:
            lines.insert(index, new)
        text = "\n".join(lines) + "\n"
        label = f"line {index + 1} {action} {_short(repr(new), 60)} (n_points={n_points})"
        return Case(label, (n_points, text.encode("utf-8", "surrogatepass")))

    def check(points: Any) -> str | None:
        if not isinstance(points, np.ndarray) or points.dtype != np.float32 or points.ndim != 2:
            return f"read_pts returned {type(points).__name__} {getattr(points, 'shape', None)}"
        if points.shape[1] != 2 or not np.isfinite(points).all():
            return f"read_pts returned shape {points.shape} or non-finite points"
        return None

    def run_one(case: Case) -> Outcome:
        n_points, data = case.data
        path.write_bytes(data)
        return classify(lambda: read_pts(path, n_points=n_points), DatasetFormatError, (path.name,), check)

    return cases(), run_one


TARGETS: dict[str, Target] = {
    "config": Target(_config_target),
    "gallery_export": Target(_gallery_export_target),
    "identity_names": Target(_names_target),
    "images": Target(_images_target),
    "model_meta": Target(_meta_target),
    "model_files": Target(_model_files_target, max_examples=MODEL_EXAMPLES),
    "pts": Target(_pts_target),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edge.tools.fuzz", description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=200, help="inputs per target (default 200)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--target", action="append", choices=sorted(TARGETS), help="only this target (repeatable)")
    args = parser.parse_args(argv)
    # Runtimes print to stdout while they refuse a corrupt model (onnxruntime's provider
    # fallback): keep stdout for the report alone.
    with contextlib.redirect_stdout(sys.stderr):
        report = run_fuzz(args.examples, args.seed, args.target)
    print(json.dumps(report, indent=2, ensure_ascii=False))
    return 1 if report["crashes"] else 0


if __name__ == "__main__":
    sys.exit(main())
