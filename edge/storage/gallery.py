"""The gallery: a SQLite file of enrolled identities and their face templates.

One row per identity (``identities``: id, name UNIQUE, created, metadata JSON) and one row per
template (``templates``: the L2-normalised embedding as little-endian float32 bytes, its
dimension, the yaw in degrees of the photo it came from, when, and from which source). The file
is opened with:

- ``journal_mode=WAL`` and ``synchronous=FULL``: every committed write survives a crash or a
  power cut, and readers (the run loop) never block the writer (``edge.app.enroll``);
- ``foreign_keys=ON``: removing an identity removes its templates (ON DELETE CASCADE);
- ``secure_delete=ON``: freed pages are zeroed, and :meth:`Gallery.remove` also rebuilds the
  file (VACUUM) and checkpoints the WAL, so a removed person's name and embeddings are really
  gone from the bytes on disk, not just unlinked from a b-tree;
- ``application_id`` and ``user_version``: a gallery says what it is and which schema version
  wrote it, so a stray SQLite file or a newer gallery is refused instead of modified.

Every write is one transaction: an identity appears with all its templates or not at all, even
when the process is killed mid-write. SQL is always parameterised; names are free unicode text.

Templates are encrypted at rest when the gallery is opened with a key (``edge.storage.keys``): each
embedding is sealed with AES-256-GCM and bound to its identity row, and the file keeps a key
check, so a gallery copied elsewhere without its key yields no embedding, and a wrong key is
refused at open. Names, yaws and dates stay readable (an operator lists who is enrolled without
the key being exposed to tools that only list); the biometric part is the embedding.

Export format (``poseface.gallery`` version 1, JSON lines, UTF-8): line 1 is a header
``{"format": "poseface.gallery", "version": 1, "dim": D, "exported": TIME, "identities": N}``;
each further line is one identity ``{"name", "created", "metadata", "templates": [{"embedding",
"yaw_deg", "created", "source"}]}`` where ``embedding`` is the base64 of D little-endian float32
values. JSON lines keep errors addressable by line number and the file diffable; base64 keeps
the embeddings exact and about 4x smaller than decimal text. Export files hold biometric
templates, so they are created owner-only (mode 0600), like the gallery itself.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import os
import sqlite3
import tempfile
import time
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, NamedTuple, Sequence

import numpy as np

from edge.storage.keys import SEAL_OVERHEAD  # cryptography itself is imported only with a key

# Version 2 lets a template's embedding be sealed (AES-256-GCM: 28 bytes more than the plain
# float32 bytes); version 1 files (plain only) are still read and written, but cannot be encrypted.
SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)
# "PFGL" as a big-endian int32: SQLite's header field for telling file formats apart.
APPLICATION_ID = 0x5046474C
EXPORT_FORMAT = "poseface.gallery"
EXPORT_VERSION = 1
MAX_NAME_LENGTH = 128
MAX_SOURCE_LENGTH = 1024
ON_CONFLICT = ("skip", "replace", "error")
# Stored embeddings are unit vectors; anything further off than this was not written by us.
NORM_TOLERANCE = 1e-3
# Little-endian on disk whatever the host: a gallery copied from a Pi to a Jetson still reads.
_EMBEDDING_DTYPE = np.dtype("<f4")

_SCHEMA = """
CREATE TABLE settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE identities (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created TEXT NOT NULL,
    metadata TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE templates (
    id INTEGER PRIMARY KEY,
    identity_id INTEGER NOT NULL REFERENCES identities(id) ON DELETE CASCADE,
    embedding BLOB NOT NULL,
    dim INTEGER NOT NULL CHECK (dim > 0 AND length(embedding) IN (4 * dim, 4 * dim + {SEAL_OVERHEAD})),
    yaw_deg REAL NOT NULL CHECK (yaw_deg BETWEEN -180.0 AND 180.0),
    created TEXT NOT NULL,
    source TEXT NOT NULL
);
CREATE INDEX templates_by_identity ON templates(identity_id);
""".replace("{SEAL_OVERHEAD}", str(SEAL_OVERHEAD))
_TABLES = {"settings", "identities", "templates"}


class GalleryError(ValueError):
    """A gallery operation was refused; the message names the file (or name/field) and why."""

    def __init__(self, message: str):
        from edge.oneline import one_line

        super().__init__(one_line(message))


class GalleryImportError(GalleryError):
    """An export file is malformed; the message names the file and the line."""


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


# ----------------------------------------------------------------------------- the gallery


def _create_private_file(path: Path) -> None:
    """Create an empty file readable by its owner only (face templates are biometric data)."""
    try:
        fd = os.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    os.close(fd)


class Gallery:
    """An open gallery file. Use :meth:`open`; close it (or use ``with``) when done.

    One object per thread: sqlite3 connections refuse to be shared across threads.
    """

    def __init__(self, path: Path, conn: sqlite3.Connection, dim: int | None, sealer=None, locked: bool = False):
        self.path = path
        self._conn = conn
        self._dim = dim
        self._sealer = sealer
        # Encrypted, opened without its key: names can be listed and removed, no embedding read or written.
        self._locked = locked

    @property
    def encrypted(self) -> bool:
        """Whether templates are sealed with the gallery key."""
        return self._sealer is not None or self._locked

    # ------------------------------------------------------------------ open / close

    @classmethod
    def open(
        cls,
        path: os.PathLike | str,
        dim: int | None = None,
        create: bool = True,
        key: bytes | None = None,
        without_key: bool = False,
    ) -> Gallery:
        """Open (and with ``create``, create) the gallery at ``path``.

        ``dim`` is the embedding dimension the caller works with: a new gallery is fixed to it
        (or to the first template's when None); an existing gallery with another dim is refused.
        ``key`` (32 bytes, :func:`edge.storage.keys.load_key`): a new gallery is encrypted with it; an
        encrypted gallery opens only with its own key; a plain gallery with templates refuses a key
        (export it and import into a new, encrypted gallery). ``without_key``: an encrypted gallery
        opens without its key for what needs none (list, remove, integrity of the rows).
        """
        sealer = None
        if key is not None:
            from edge.storage.keys import KeyFileError, Sealer

            try:
                sealer = Sealer(key)
            except KeyFileError as err:
                raise GalleryError(f"{path}: {err}") from None
        path = Path(path)
        if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0):
            raise GalleryError(f"{path}: dim: expected a positive integer, got {dim!r}")
        if path.is_dir():
            raise GalleryError(f"{path}: is a directory, expected a gallery file")
        if not path.exists():
            if not create:
                raise GalleryError(f"{path}: no gallery file here (enrol someone first: python -m edge.enroll add)")
            if not path.parent.is_dir():
                raise GalleryError(f"{path}: folder {path.parent} does not exist")
            _create_private_file(path)
        try:
            # isolation_level=None: no implicit transactions; every write below says BEGIN itself.
            conn = sqlite3.connect(str(path), timeout=10.0, isolation_level=None)
        except sqlite3.Error as err:
            raise GalleryError(f"{path}: cannot open ({err})") from None
        try:
            stored_dim, encrypted = cls._prepare(path, conn, dim, sealer, without_key)
        except BaseException:
            conn.close()
            raise
        locked = encrypted and sealer is None
        return cls(path, conn, stored_dim, sealer if encrypted else None, locked)

    @staticmethod
    def _prepare(
        path: Path, conn: sqlite3.Connection, dim: int | None, sealer, without_key: bool = False
    ) -> tuple[int | None, bool]:
        try:
            # The first read of the header: a file that is not SQLite fails right here.
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.DatabaseError:
            raise GalleryError(f"{path}: not a gallery (not an SQLite database)") from None
        if tables and app_id != APPLICATION_ID:
            raise GalleryError(f"{path}: not a gallery (an SQLite database of another application)")
        # Connection settings; secure_delete and foreign_keys are per connection, so every open sets them.
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA secure_delete = ON")
        conn.execute("PRAGMA synchronous = FULL")
        # VACUUM's scratch copy stays in memory: no temporary file with face data on disk.
        conn.execute("PRAGMA temp_store = MEMORY")
        try:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        except sqlite3.OperationalError as err:
            raise GalleryError(f"{path}: cannot switch to WAL journal ({err})") from None
        if str(mode).lower() != "wal":
            raise GalleryError(f"{path}: cannot switch to WAL journal (SQLite kept '{mode}'; is the folder writable?)")

        conn.execute("BEGIN IMMEDIATE")
        try:
            # Re-read under the write lock: another process may have created the schema meanwhile.
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if not tables:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                if dim is not None:
                    conn.execute("INSERT INTO settings (key, value) VALUES ('dim', ?)", (str(dim),))
                conn.execute("INSERT INTO settings (key, value) VALUES ('created', ?)", (utc_now(),))
                if sealer is not None:
                    _set_encryption(conn, sealer)
            else:
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                if version not in READABLE_VERSIONS:
                    newer = "a newer" if version > SCHEMA_VERSION else "an older"
                    raise GalleryError(
                        f"{path}: gallery schema version {version}, this program reads versions "
                        f"{', '.join(map(str, READABLE_VERSIONS))} (written by {newer} poseface-edge)"
                    )
                if not _TABLES <= tables:
                    raise GalleryError(f"{path}: not a gallery (tables {sorted(_TABLES - tables)} are missing)")
            encrypted = _check_encryption(path, conn, sealer, without_key)
            row = conn.execute("SELECT value FROM settings WHERE key = 'dim'").fetchone()
            stored = int(row[0]) if row else None
            if stored is not None and dim is not None and stored != dim:
                raise GalleryError(f"{path}: gallery holds {stored}-d embeddings, expected {dim}-d (another model?)")
            if stored is None and dim is not None:
                conn.execute("INSERT INTO settings (key, value) VALUES ('dim', ?)", (str(dim),))
                stored = dim
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return stored, encrypted

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Gallery:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def dim(self) -> int | None:
        """The gallery's embedding dimension; None until the first template fixes it."""
        if self._dim is None:
            # Another process may have enrolled the first template since this one opened the file.
            self._dim = self._stored_dim()
        return self._dim

    def _stored_dim(self) -> int | None:
        row = self._conn.execute("SELECT value FROM settings WHERE key = 'dim'").fetchone()
        return None if row is None else int(row[0])

    # ------------------------------------------------------------------ writes

    def _write(self):
        """A write transaction: BEGIN IMMEDIATE takes the write lock up front, so no deadlock upgrade."""
        return _Transaction(self._conn)

    def _dim_in_transaction(self, wanted: int) -> int:
        row = self._conn.execute("SELECT value FROM settings WHERE key = 'dim'").fetchone()
        if row is None:
            self._conn.execute("INSERT INTO settings (key, value) VALUES ('dim', ?)", (str(wanted),))
            return wanted
        return int(row[0])

    def _prepared_templates(self, name: str, templates: Sequence[Template]) -> list[tuple]:
        if isinstance(templates, (str, bytes)) or not isinstance(templates, Sequence):
            raise GalleryError(f"identity {name!r}: templates: expected a list of Template")
        if len(templates) == 0:
            raise GalleryError(f"identity {name!r}: templates: expected at least one template")
        rows = []
        for i, template in enumerate(templates):
            where = f"identity {name!r}: template {i}"
            if not isinstance(template, Template):
                raise GalleryError(f"{where}: expected a Template, got {type(template).__name__}")
            unit = normalise_embedding(template.embedding, self.dim, where)
            yaw = _validate_yaw(template.yaw_deg, where)
            source = _validate_source(template.source, where)
            rows.append((unit, yaw, source, None))
        dims = {row[0].size for row in rows}
        if len(dims) != 1:
            raise GalleryError(f"identity {name!r}: templates: expected one embedding dim, got {sorted(dims)}")
        return rows

    def _need_key(self, what: str) -> None:
        if self._locked:
            raise GalleryError(f"{self.path}: templates are encrypted: {what} needs the gallery key (--key-file FILE)")

    def _stored_bytes(self, unit: np.ndarray, owner: tuple, yaw: float) -> bytes:
        """``owner``: (identity id, name, enrolled) of the person the template belongs to."""
        self._need_key("adding templates")
        plain = _embedding_bytes(unit)
        if self._sealer is None:
            return plain
        from edge.storage.keys import template_aad

        return self._sealer.seal(plain, template_aad(*owner, yaw, unit.size))

    def _embedding(self, blob: bytes, dim: int, owner: tuple, yaw: float, where: str) -> np.ndarray:
        """A stored embedding, unsealed when the gallery is encrypted; GalleryError when it will not open."""
        self._need_key("reading templates")
        if self._sealer is not None:
            from edge.storage.keys import template_aad

            plain = self._sealer.open(bytes(blob), template_aad(*owner, yaw, dim))
            if plain is None:
                raise GalleryError(
                    f"{self.path}: {where}: sealed embedding fails authentication (altered, or moved to another "
                    "person, or its name or yaw edited)"
                )
            blob = plain
        elif len(blob) != 4 * dim:
            raise GalleryError(f"{self.path}: {where}: embedding is sealed but the gallery has no key")
        return _embedding_from_bytes(blob, dim)

    def _insert_templates(self, identity_id: int, rows: list[tuple], created: str | None = None) -> None:
        """Insert (unit embedding, yaw, source, created or None) rows; inside a write transaction."""
        dim = self._dim_in_transaction(rows[0][0].size)
        if rows[0][0].size != dim:
            raise GalleryError(f"{self.path}: gallery holds {dim}-d embeddings, got {rows[0][0].size}-d templates")
        default_created = created or utc_now()
        self._need_key("adding templates")
        # Another connection may have encrypted this (empty) gallery since we opened it.
        encrypted = self._conn.execute("SELECT 1 FROM settings WHERE key = 'encryption'").fetchone() is not None
        if encrypted and self._sealer is None:
            raise GalleryError(f"{self.path}: the gallery was encrypted since it was opened here; open it with the key")
        name, enrolled = self._conn.execute(
            "SELECT name, created FROM identities WHERE id = ?", (identity_id,)
        ).fetchone()
        owner = (identity_id, name, enrolled)
        self._conn.executemany(
            "INSERT INTO templates (identity_id, embedding, dim, yaw_deg, created, source) VALUES (?, ?, ?, ?, ?, ?)",
            [
                (
                    identity_id,
                    self._stored_bytes(unit, owner, yaw),
                    unit.size,
                    yaw,
                    row_created or default_created,
                    source,
                )
                for unit, yaw, source, row_created in rows
            ],
        )

    def _identity_id(self, name: str) -> int | None:
        row = self._conn.execute("SELECT id FROM identities WHERE name = ?", (name,)).fetchone()
        return None if row is None else int(row[0])

    def add_identity(self, name: str, templates: Sequence[Template], metadata: dict | None = None) -> Identity:
        """Enrol ``name`` with ``templates`` (at least one) in one transaction: all or nothing."""
        name = validate_name(name)
        metadata_json = _metadata_json(metadata, f"identity {name!r}")
        rows = self._prepared_templates(name, templates)
        with self._write():
            if self._identity_id(name) is not None:
                raise GalleryError(f"identity {name!r} is already enrolled (add templates to it instead)")
            created = utc_now()
            cur = self._conn.execute(
                "INSERT INTO identities (name, created, metadata) VALUES (?, ?, ?)", (name, created, metadata_json)
            )
            self._insert_templates(int(cur.lastrowid), rows, created)
        # Only after COMMIT: the first template of a new gallery fixed its dim.
        self._dim = rows[0][0].size
        return self.identity(name)

    def add_templates(self, name: str, templates: Sequence[Template]) -> int:
        """Add templates to an enrolled identity in one transaction; returns how many were added."""
        name = validate_name(name)
        rows = self._prepared_templates(name, templates)
        with self._write():
            identity_id = self._identity_id(name)
            if identity_id is None:
                raise GalleryError(f"identity {name!r} is not enrolled")
            self._insert_templates(identity_id, rows)
        self._dim = rows[0][0].size
        return len(rows)

    def remove(self, name: str) -> int:
        """Remove ``name`` and its templates, and erase them from the file; returns templates removed.

        Erasing is: delete the rows (secure_delete zeroes the freed space), VACUUM (rebuild the
        file without the free pages), and a TRUNCATE checkpoint (copy the WAL into the file and
        cut the WAL to zero bytes, so old page images in it are gone too).
        """
        name = validate_name(name)
        with self._write():
            identity_id = self._identity_id(name)
            if identity_id is None:
                raise GalleryError(f"identity {name!r} is not enrolled")
            count = self._conn.execute("SELECT COUNT(*) FROM templates WHERE identity_id = ?", (identity_id,))
            count = int(count.fetchone()[0])
            self._conn.execute("DELETE FROM identities WHERE id = ?", (identity_id,))
        self.erase_freed_space()
        return count

    def erase_freed_space(self) -> None:
        """VACUUM and truncate the WAL, so deleted rows leave no bytes behind in the gallery files.

        Raises :class:`GalleryError` when another connection's open read keeps the WAL alive;
        the deletion itself is committed, and calling this again later finishes the erasure.
        """
        self._conn.execute("VACUUM")
        for _ in range(50):
            busy, _log, _done = self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            if not busy:
                return
            time.sleep(0.1)
        raise GalleryError(
            f"{self.path}: removed, but another process is reading the gallery, so old bytes may stay in "
            f"{self.path.name}-wal until it stops; run the removal again later to finish erasing"
        )

    # ------------------------------------------------------------------ reads

    def identity(self, name: str) -> Identity:
        name = validate_name(name)
        found = [i for i in self._list(name) if i.name == name]
        if not found:
            raise GalleryError(f"identity {name!r} is not enrolled")
        return found[0]

    def __contains__(self, name: object) -> bool:
        try:
            name = validate_name(name)
        except GalleryError:
            return False
        return self._identity_id(name) is not None

    def list(self) -> list[Identity]:
        """Every identity, by name, with its template count and yaw range (degrees)."""
        return self._list(None)

    def _list(self, only: str | None) -> list[Identity]:
        sql = (
            "SELECT i.name, i.created, i.metadata, COUNT(t.id), MIN(t.yaw_deg), MAX(t.yaw_deg) "
            "FROM identities i LEFT JOIN templates t ON t.identity_id = i.id "
        )
        params: tuple = ()
        if only is not None:
            sql += "WHERE i.name = ? "
            params = (only,)
        sql += "GROUP BY i.id ORDER BY i.name"
        out = []
        for name, created, metadata, count, yaw_min, yaw_max in self._conn.execute(sql, params):
            out.append(
                Identity(
                    name=name,
                    created=created,
                    metadata=json.loads(metadata),
                    template_count=int(count),
                    yaw_min=None if yaw_min is None else float(yaw_min),
                    yaw_max=None if yaw_max is None else float(yaw_max),
                )
            )
        return out

    def identity_templates(self, name: str) -> list[StoredTemplate]:
        """The templates of one identity, in the order they were added."""
        name = validate_name(name)
        identity_id = self._identity_id(name)
        if identity_id is None:
            raise GalleryError(f"identity {name!r} is not enrolled")
        enrolled = self._conn.execute("SELECT created FROM identities WHERE id = ?", (identity_id,)).fetchone()[0]
        owner = (identity_id, name, enrolled)
        rows = self._conn.execute(
            "SELECT id, embedding, dim, yaw_deg, created, source FROM templates WHERE identity_id = ? ORDER BY id",
            (identity_id,),
        )
        return [
            StoredTemplate(self._embedding(b, d, owner, y, f"template {t} of {name!r}"), float(y), c, s)
            for t, b, d, y, c, s in rows
        ]

    def templates(self) -> GalleryArrays:
        """All templates as arrays for matching (see :class:`GalleryArrays`); D = 0 when empty."""
        rows = self._conn.execute(
            "SELECT i.name, t.embedding, t.dim, t.yaw_deg, t.identity_id, t.id, i.created FROM templates t "
            "JOIN identities i ON i.id = t.identity_id ORDER BY i.name, t.id"
        ).fetchall()
        dim = rows[0][2] if rows else (self.dim or 0)
        embeddings = np.zeros((len(rows), dim), dtype=np.float32)
        for k, (name, blob, d, yaw, identity_id, tid, enrolled) in enumerate(rows):
            owner = (identity_id, name, enrolled)
            embeddings[k] = self._embedding(blob, d, owner, yaw, f"template {tid} of {name!r}")
        yaws = np.array([r[3] for r in rows], dtype=np.float32)
        return GalleryArrays([r[0] for r in rows], embeddings, yaws)

    # ------------------------------------------------------------------ export / import

    def export(self, path: os.PathLike | str) -> int:
        """Write every identity to ``path`` (format in the module docstring), atomically; returns the count."""
        path = Path(path)
        self._conn.execute("BEGIN")  # one read snapshot, so a concurrent enrolment is all in or all out
        try:
            identities = self.list()
            records = []
            for ident in identities:
                records.append(
                    {
                        "name": ident.name,
                        "created": ident.created,
                        "metadata": ident.metadata,
                        "templates": [
                            {
                                "embedding": base64.b64encode(_embedding_bytes(t.embedding)).decode("ascii"),
                                "yaw_deg": t.yaw_deg,
                                "created": t.created,
                                "source": t.source,
                            }
                            for t in self.identity_templates(ident.name)
                        ],
                    }
                )
        finally:
            self._conn.execute("COMMIT")
        header = {
            "format": EXPORT_FORMAT,
            "version": EXPORT_VERSION,
            "dim": self.dim,
            "exported": utc_now(),
            "identities": len(records),
        }
        lines = [json.dumps(header, ensure_ascii=False)] + [json.dumps(r, ensure_ascii=False) for r in records]
        _write_atomically(path, ("\n".join(lines) + "\n").encode("utf-8"))
        return len(records)

    def import_(self, path: os.PathLike | str, on_conflict: str = "skip") -> ImportResult:
        """Read an export file into this gallery, in one transaction, after validating all of it.

        ``on_conflict`` says what to do with a name already enrolled: ``skip`` keeps ours,
        ``replace`` takes the file's (and erases ours from disk), ``error`` refuses the import.
        """
        if on_conflict not in ON_CONFLICT:
            raise GalleryError(f"on_conflict: expected one of {'|'.join(ON_CONFLICT)}, got {on_conflict!r}")
        path = Path(path)
        dim, records = read_export(path)
        if self.dim is not None and dim is not None and dim != self.dim:
            raise GalleryImportError(f"{path}: line 1: dim: file holds {dim}-d embeddings, this gallery {self.dim}-d")
        added = replaced = skipped = 0
        with self._write():
            for line, record in records:
                existing = self._identity_id(record.name)
                if existing is not None:
                    if on_conflict == "skip":
                        skipped += 1
                        continue
                    if on_conflict == "error":
                        raise GalleryImportError(
                            f"{path}: line {line}: identity {record.name!r} is already enrolled (on_conflict=error)"
                        )
                    self._conn.execute("DELETE FROM identities WHERE id = ?", (existing,))
                    replaced += 1
                else:
                    added += 1
                cur = self._conn.execute(
                    "INSERT INTO identities (name, created, metadata) VALUES (?, ?, ?)",
                    (record.name, record.created, json.dumps(record.metadata, ensure_ascii=False)),
                )
                self._insert_templates(int(cur.lastrowid), record.rows)
        if added or replaced:
            self._dim = dim
        if replaced:
            self.erase_freed_space()
        return ImportResult(added=added, replaced=replaced, skipped=skipped)

    # ------------------------------------------------------------------ checks

    def integrity_check(self) -> IntegrityReport:
        """SQLite's own checks plus ours: every template has the gallery's dim, a unit norm, a sane yaw."""
        problems: list[str] = []
        for (message,) in self._conn.execute("PRAGMA integrity_check"):
            if message != "ok":
                problems.append(f"integrity_check: {message}")
        for table, rowid, parent, _ in self._conn.execute("PRAGMA foreign_key_check"):
            problems.append(f"foreign_key_check: {table} row {rowid} points at a missing {parent} row")
        if self._conn.execute("PRAGMA application_id").fetchone()[0] != APPLICATION_ID:
            problems.append("application_id: not a gallery's")
        if self._conn.execute("PRAGMA user_version").fetchone()[0] not in READABLE_VERSIONS:
            problems.append(f"user_version: expected one of {READABLE_VERSIONS}")
        identities = 0
        for name, metadata in self._conn.execute("SELECT name, metadata FROM identities"):
            identities += 1
            try:
                validate_name(name)
            except GalleryError as err:
                problems.append(str(err))
            try:
                if not isinstance(json.loads(metadata), dict):
                    raise ValueError
            except ValueError:
                problems.append(f"identity {name!r}: metadata is not a JSON object")
        for (name,) in self._conn.execute(
            "SELECT name FROM identities i WHERE NOT EXISTS (SELECT 1 FROM templates t WHERE t.identity_id = i.id)"
        ):
            problems.append(f"identity {name!r}: has no templates")
        templates = 0
        gallery_dim = self._stored_dim()
        rows = self._conn.execute(
            "SELECT t.id, i.name, t.embedding, t.dim, t.yaw_deg, t.identity_id, i.created "
            "FROM templates t JOIN identities i ON i.id = t.identity_id"
        )
        overhead = SEAL_OVERHEAD if self.encrypted else 0
        for tid, name, blob, dim, yaw, identity_id, enrolled in rows:
            templates += 1
            where = f"template {tid} of {name!r}"
            if gallery_dim is not None and dim != gallery_dim:
                problems.append(f"{where}: dim {dim}, the gallery's is {gallery_dim}")
                continue
            if len(blob) != 4 * dim + overhead:
                problems.append(f"{where}: embedding has {len(blob)} bytes, expected {4 * dim + overhead}")
                continue
            if self._locked:
                continue  # sealed: its size is checked; what is inside needs the key
            try:
                vec = self._embedding(blob, dim, (identity_id, name, enrolled), yaw, where).astype(np.float64)
            except GalleryError as err:
                problems.append(str(err).split(": ", 1)[1])
                continue
            if not np.isfinite(vec).all():
                problems.append(f"{where}: embedding contains NaN or infinity")
            elif abs(float(np.linalg.norm(vec)) - 1.0) > NORM_TOLERANCE:
                problems.append(f"{where}: embedding norm {np.linalg.norm(vec):.4f}, expected 1")
            if not (isinstance(yaw, float) and math.isfinite(yaw)):
                problems.append(f"{where}: yaw_deg {yaw!r} is not a finite number")
        return IntegrityReport(ok=not problems, problems=tuple(problems), identities=identities, templates=templates)


def _set_encryption(conn: sqlite3.Connection, sealer) -> None:
    from edge.storage.keys import CIPHER

    conn.execute("INSERT INTO settings (key, value) VALUES ('encryption', ?)", (CIPHER,))
    conn.execute("INSERT INTO settings (key, value) VALUES ('key_check', ?)", (sealer.key_check(),))


def _check_encryption(path: Path, conn: sqlite3.Connection, sealer, without_key: bool = False) -> bool:
    """Whether the gallery is encrypted; refuses a missing or wrong key, or a key for a plain
    gallery that already holds templates. Runs inside the open's write transaction."""
    settings = dict(conn.execute("SELECT key, value FROM settings WHERE key IN ('encryption', 'key_check')"))
    if "encryption" in settings:
        if sealer is None:
            if without_key:
                return True
            raise GalleryError(
                f"{path}: templates are encrypted ({settings['encryption']}): give the gallery key "
                "(--key-file FILE, or gallery.key_file / gallery.key_credential in the config)"
            )
        if not sealer.matches(settings.get("key_check", "")):
            raise GalleryError(f"{path}: this key does not open the gallery (its key check fails): another key?")
        return True
    if sealer is None:
        return False
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    has_templates = conn.execute("SELECT 1 FROM templates LIMIT 1").fetchone() is not None
    if has_templates or version < 2:
        raise GalleryError(
            f"{path}: a gallery without encryption (its templates are plain): to encrypt it, export it "
            "(python -m edge.enroll export FILE) and import FILE into a new gallery with --key-file; then erase "
            "the old one (edge.enroll remove each name, which zeroes freed space) and shred the export"
        )
    _set_encryption(conn, sealer)  # an empty version-2 gallery becomes encrypted
    return True


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any exception (KeyboardInterrupt included)."""

    def __init__(self, conn: sqlite3.Connection):
        self._conn = conn

    def __enter__(self) -> None:
        self._conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self._conn.execute("ROLLBACK")
            return
        try:
            self._conn.execute("COMMIT")
        except BaseException:
            # A failed COMMIT leaves the transaction open; close it so the connection stays usable.
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            raise


def _metadata_json(metadata: Any, where: str) -> str:
    if metadata is None:
        return "{}"
    if not isinstance(metadata, dict):
        raise GalleryError(f"{where}: metadata: expected a JSON object (dict), got {type(metadata).__name__}")
    try:
        return json.dumps(metadata, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise GalleryError(f"{where}: metadata: not JSON-serialisable ({err})") from None


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
