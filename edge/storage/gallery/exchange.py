"""The export file: a gallery as JSON lines, written atomically and read back validated.

Format ``poseface.gallery`` version 1, UTF-8: line 1 is a header ``{"format":
"poseface.gallery", "version": 1, "dim": D, "exported": TIME, "identities": N}``; each further
line is one identity ``{"name", "created", "metadata", "templates": [{"embedding", "yaw_deg",
"created", "source"}]}`` where ``embedding`` is the base64 of D little-endian float32 values.
JSON lines keep errors addressable by line number and the file diffable; base64 keeps the
embeddings exact and about 4x smaller than decimal text. Export files hold biometric templates,
so they are created owner-only (mode 0600), like the gallery itself.

:func:`read_export` validates a whole file before anything is written
(:meth:`edge.storage.gallery.store.Gallery.import_`); any problem is a
:class:`GalleryImportError` naming the file, the line and the field.

Names with a leading underscore are shared by the modules of :mod:`edge.storage.gallery` only.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge.storage.gallery.records import (
    _EMBEDDING_DTYPE,
    GalleryError,
    Identity,
    StoredTemplate,
    _embedding_bytes,
    _validate_source,
    _validate_yaw,
    normalise_embedding,
    utc_now,
    validate_name,
)

EXPORT_FORMAT = "poseface.gallery"
EXPORT_VERSION = 1


class GalleryImportError(GalleryError):
    """An export file is malformed; the message names the file and the line."""


# ----------------------------------------------------------------------------- writing exports


def export_record(identity: Identity, templates: list[StoredTemplate]) -> dict:
    """One identity as a record (a line) of the export file."""
    return {
        "name": identity.name,
        "created": identity.created,
        "metadata": identity.metadata,
        "templates": [
            {
                "embedding": base64.b64encode(_embedding_bytes(t.embedding)).decode("ascii"),
                "yaw_deg": t.yaw_deg,
                "created": t.created,
                "source": t.source,
            }
            for t in templates
        ],
    }


def write_export(path: Path, dim: int | None, records: list[dict]) -> None:
    """The header and the records as JSON lines, written atomically (a reader never sees half a file)."""
    header = {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "dim": dim,
        "exported": utc_now(),
        "identities": len(records),
    }
    lines = [json.dumps(header, ensure_ascii=False)] + [json.dumps(r, ensure_ascii=False) for r in records]
    _write_atomically(path, ("\n".join(lines) + "\n").encode("utf-8"))


def _write_atomically(path: Path, data: bytes) -> None:
    """Write to a temporary file beside ``path``, fsync, then rename over it: never a half file."""
    if not path.parent.is_dir():
        raise GalleryError(f"{path}: folder {path.parent} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:
        # The rename itself lives in the folder: sync it so the new name survives a power cut.
        dir_fd = os.open(str(path.parent), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


# ----------------------------------------------------------------------------- reading exports


@dataclass(frozen=True)
class _ImportRecord:
    name: str
    created: str
    metadata: dict
    rows: list  # (unit embedding, yaw, source, created) per template


def _reject_constant(value: str) -> Any:
    raise ValueError(f"{value} is not valid JSON")


def read_export(path: os.PathLike | str) -> tuple[int | None, list[tuple[int, _ImportRecord]]]:
    """Parse and validate a whole export file: (dim, [(line number, record)]); nothing is written.

    Any problem raises :class:`GalleryImportError` naming the file, the line and the field.
    """
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise GalleryImportError(f"{path}: no such export file") from None
    except UnicodeDecodeError as err:
        raise GalleryImportError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except OSError as err:
        raise GalleryImportError(f"{path}: cannot read ({err.strerror})") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if not lines:
        raise GalleryImportError(f"{path}: empty file, expected a {EXPORT_FORMAT} header on line 1")

    def fail(line: int, message: str) -> GalleryImportError:
        return GalleryImportError(f"{path}: line {line}: {message}")

    def parse(line: int, raw: str) -> dict:
        try:
            value = json.loads(raw, parse_constant=_reject_constant)
        except ValueError as err:
            raise fail(line, f"not valid JSON ({err})") from None
        except RecursionError:
            raise fail(line, "not usable JSON (nested too deeply)") from None
        try:  # "\ud800" is valid JSON but not text SQLite (or any UTF-8 file) can hold
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise fail(line, "a string holds a lone surrogate (not encodable as UTF-8)") from None
        if not isinstance(value, dict):
            raise fail(line, f"expected a JSON object, got {type(value).__name__}")
        return value

    header = parse(1, lines[0])
    if header.get("format") != EXPORT_FORMAT:
        raise fail(1, f"format: expected {EXPORT_FORMAT!r}, got {header.get('format')!r}")
    if header.get("version") != EXPORT_VERSION:
        raise fail(
            1, f"version: expected {EXPORT_VERSION} (this program's export version), got {header.get('version')!r}"
        )
    dim = header.get("dim")
    if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0):
        raise fail(1, f"dim: expected a positive integer or null, got {dim!r}")
    count = header.get("identities")
    if isinstance(count, bool) or not isinstance(count, int) or count != len(lines) - 1:
        raise fail(1, f"identities: expected {len(lines) - 1} (the number of records that follow), got {count!r}")
    if dim is None and count:
        raise fail(1, "dim: expected a positive integer when the file holds identities")

    records: list[tuple[int, _ImportRecord]] = []
    seen: dict[str, int] = {}
    for line, raw in enumerate(lines[1:], start=2):
        records.append((line, _parse_record(parse(line, raw), dim, line, fail, seen)))
    return dim, records


def _parse_record(data: dict, dim: int | None, line: int, fail, seen: dict) -> _ImportRecord:
    known = {"name", "created", "metadata", "templates"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise fail(line, f"unknown field {unknown[0]!r} (expected {', '.join(sorted(known))})")
    missing = sorted(known - set(data))
    if missing:
        raise fail(line, f"missing field {missing[0]!r}")
    try:
        name = validate_name(data["name"])
    except GalleryError as err:
        raise fail(line, f"name: {err}") from None
    if name in seen:
        raise fail(line, f"identity {name!r} appears twice (first on line {seen[name]})")
    seen[name] = line
    created = data["created"]
    if not isinstance(created, str) or not created:
        raise fail(line, f"created: expected an ISO-8601 time string, got {created!r}")
    metadata = data["metadata"]
    if not isinstance(metadata, dict):
        raise fail(line, f"metadata: expected a JSON object, got {type(metadata).__name__}")
    templates = data["templates"]
    if not isinstance(templates, list) or not templates:
        raise fail(line, "templates: expected a non-empty list")
    rows = []
    template_keys = {"embedding", "yaw_deg", "created", "source"}
    for k, entry in enumerate(templates):
        where = f"templates[{k}]"
        if not isinstance(entry, dict) or set(entry) != template_keys:
            raise fail(line, f"{where}: expected an object with exactly {', '.join(sorted(template_keys))}")
        try:
            blob = base64.b64decode(entry["embedding"], validate=True)
        except (TypeError, ValueError, binascii.Error):
            raise fail(line, f"{where}.embedding: expected base64 of {dim} little-endian float32 values") from None
        if len(blob) != 4 * dim:
            raise fail(line, f"{where}.embedding: expected {4 * dim} bytes ({dim} float32), got {len(blob)}")
        try:
            unit = normalise_embedding(np.frombuffer(blob, dtype=_EMBEDDING_DTYPE), dim, where)
            yaw = _validate_yaw(entry["yaw_deg"], where)
            source = _validate_source(entry["source"], where)
        except GalleryError as err:
            raise fail(line, str(err)) from None
        if not isinstance(entry["created"], str) or not entry["created"]:
            raise fail(line, f"{where}.created: expected an ISO-8601 time string, got {entry['created']!r}")
        rows.append((unit, yaw, source, entry["created"]))
    return _ImportRecord(name=name, created=created, metadata=metadata, rows=rows)
