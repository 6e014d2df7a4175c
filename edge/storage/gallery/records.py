"""What goes into a gallery and comes out of it, and the checks every value passes.

Records: :class:`Template` (a face template to store), :class:`Identity` (a person as listed),
:class:`StoredTemplate` (a template as stored), :class:`GalleryArrays` (what matching needs, one
row per template), :class:`ImportResult`, :class:`IntegrityReport`. Checks: names (NFC, no
control characters or line breaks), yaws (finite degrees), sources, embeddings (unit float32
vectors of the gallery's dim). An embedding is little-endian float32 bytes on disk whatever the
host, so a gallery copied from a Pi to a Jetson still reads. :class:`GalleryError` is the error
every gallery operation raises.

Names with a leading underscore are shared by the modules of :mod:`edge.storage.gallery` only.
"""

from __future__ import annotations

import math
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable, NamedTuple

import numpy as np

MAX_NAME_LENGTH = 128
MAX_SOURCE_LENGTH = 1024


# Stored embeddings are unit vectors; anything further off than this was not written by us.
NORM_TOLERANCE = 1e-3
# Little-endian on disk whatever the host: a gallery copied from a Pi to a Jetson still reads.
_EMBEDDING_DTYPE = np.dtype("<f4")


class GalleryError(ValueError):
    """A gallery operation was refused; the message names the file (or name/field) and why."""

    def __init__(self, message: str):
        from edge.oneline import one_line

        super().__init__(one_line(message))


# ----------------------------------------------------------------------------- dataclasses


@dataclass(frozen=True, eq=False)
class Template:
    """One face template to store: ``embedding`` (D,) any float dtype (normalised on write),
    ``yaw_deg`` the head yaw of the photo it came from (degrees, sign as in
    :mod:`edge.geometry.headpose`), ``source`` where it came from (a file name, "camera", ...)."""

    embedding: np.ndarray
    yaw_deg: float
    source: str = ""


@dataclass(frozen=True)
class Identity:
    """One enrolled person as :meth:`Gallery.list` reports it (yaws in degrees, None when no templates)."""

    name: str
    created: str
    metadata: dict = field(default_factory=dict)
    template_count: int = 0
    yaw_min: float | None = None
    yaw_max: float | None = None


@dataclass(frozen=True, eq=False)
class StoredTemplate:
    """A template as stored: ``embedding`` (D,) float32 unit vector."""

    embedding: np.ndarray
    yaw_deg: float
    created: str
    source: str


class GalleryArrays(NamedTuple):
    """Everything matching needs, in template order: ``names`` (N,) one name per template,
    ``embeddings`` (N, D) float32 unit rows, ``yaws`` (N,) float32 degrees."""

    names: list
    embeddings: np.ndarray
    yaws: np.ndarray


@dataclass(frozen=True)
class ImportResult:
    added: int
    replaced: int
    skipped: int


@dataclass(frozen=True)
class IntegrityReport:
    ok: bool
    problems: tuple[str, ...]
    identities: int
    templates: int


def gallery_arrays_from(items: Iterable[tuple[str, np.ndarray, float]]) -> GalleryArrays:
    """Build :class:`GalleryArrays` from (name, embedding, yaw) triples, normalising each embedding."""
    names, vectors, yaws = [], [], []
    for name, embedding, yaw in items:
        names.append(name)
        vectors.append(normalise_embedding(embedding, None, f"template of {name!r}"))
        yaws.append(float(yaw))
    if not vectors:
        return GalleryArrays([], np.zeros((0, 0), dtype=np.float32), np.zeros((0,), dtype=np.float32))
    return GalleryArrays(names, np.stack(vectors).astype(np.float32), np.asarray(yaws, dtype=np.float32))


# ----------------------------------------------------------------------------- validation


def utc_now() -> str:
    """The current time as ISO-8601 UTC with milliseconds, e.g. 2024-05-01T12:00:00.123Z."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def validate_name(name: Any) -> str:
    """The NFC form of ``name``, or :class:`GalleryError` saying what is wrong with it.

    Any unicode is allowed (emoji, quotes, slashes: SQL is parameterised and names never become
    paths) except control characters and line/paragraph separators, which would break the
    one-line-per-record outputs. NFC makes the composed and decomposed spellings of "é" one
    identity rather than two that look the same.
    """
    if not isinstance(name, str):
        raise GalleryError(f"identity name: expected a string, got {type(name).__name__}")
    name = unicodedata.normalize("NFC", name)
    if not name.strip():
        raise GalleryError(f"identity name: expected a non-empty name, got {name!r}")
    if name != name.strip():
        raise GalleryError(f"identity name {name!r}: expected no leading or trailing whitespace")
    if len(name) > MAX_NAME_LENGTH:
        raise GalleryError(f"identity name: expected at most {MAX_NAME_LENGTH} characters, got {len(name)}")
    for char in name:
        if unicodedata.category(char) in ("Cc", "Cs", "Zl", "Zp"):
            raise GalleryError(f"identity name {name!r}: control character U+{ord(char):04X} is not allowed")
    return name


def _validate_source(source: Any, where: str) -> str:
    if not isinstance(source, str):
        raise GalleryError(f"{where}: source: expected a string, got {type(source).__name__}")
    if len(source) > MAX_SOURCE_LENGTH:
        raise GalleryError(f"{where}: source: expected at most {MAX_SOURCE_LENGTH} characters, got {len(source)}")
    _check_encodable(source, f"{where}: source")
    return source


def _check_encodable(text: str, where: str) -> None:
    """Text SQLite can store: UTF-8 encodable (no lone surrogate from a hostile JSON file)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise GalleryError(f"{where}: expected text, got a lone surrogate (not encodable as UTF-8)") from None


def _validate_yaw(yaw: Any, where: str) -> float:
    if isinstance(yaw, bool) or not isinstance(yaw, (int, float, np.integer, np.floating)):
        raise GalleryError(f"{where}: yaw_deg: expected a number of degrees, got {yaw!r}")
    try:
        yaw = float(yaw)
    except OverflowError:
        raise GalleryError(f"{where}: yaw_deg: expected a finite value in [-180, 180] degrees, got {yaw}") from None
    if not (math.isfinite(yaw) and -180.0 <= yaw <= 180.0):
        raise GalleryError(f"{where}: yaw_deg: expected a finite value in [-180, 180] degrees, got {yaw}")
    return yaw


def normalise_embedding(embedding: Any, dim: int | None, where: str) -> np.ndarray:
    """``embedding`` as a (D,) float32 unit vector; refuses a wrong dim, NaN/inf, or zero norm."""
    try:
        vec = np.asarray(embedding, dtype=np.float64)
    except (TypeError, ValueError):
        raise GalleryError(f"{where}: embedding: expected a 1-D array of numbers") from None
    if vec.ndim != 1 or vec.size == 0:
        raise GalleryError(f"{where}: embedding: expected shape (D,), got {vec.shape}")
    if dim is not None and vec.size != dim:
        raise GalleryError(f"{where}: embedding: expected {dim} values (the gallery's dim), got {vec.size}")
    if not np.isfinite(vec).all():
        raise GalleryError(f"{where}: embedding: contains NaN or infinity")
    norm = float(np.linalg.norm(vec))
    if not norm > 1e-12:
        raise GalleryError(f"{where}: embedding: has zero length, cannot be normalised")
    return (vec / norm).astype(np.float32)


def _embedding_bytes(unit: np.ndarray) -> bytes:
    return unit.astype(_EMBEDDING_DTYPE).tobytes()


def _embedding_from_bytes(blob: bytes, dim: int) -> np.ndarray:
    return np.frombuffer(blob, dtype=_EMBEDDING_DTYPE, count=dim).astype(np.float32)
