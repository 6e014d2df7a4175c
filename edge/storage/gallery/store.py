"""An open gallery: :class:`Gallery`, its reads, writes, import, export and integrity check.

Every write is one transaction: an identity appears with all its templates or not at all, even
when the process is killed mid-write. SQL is always parameterised; names are free unicode text.

Templates are encrypted at rest when the gallery is opened with a key (``edge.storage.keys``):
each embedding is sealed with AES-256-GCM and bound to its identity row, so a gallery copied
elsewhere without its key yields no embedding. Names, yaws and dates stay readable (an operator
lists who is enrolled without the key being exposed to tools that only list); the biometric
part is the embedding. Removing a person erases them from the bytes on disk, not just from a
b-tree (:meth:`Gallery.remove`).

The file's schema and what an open checks: :mod:`edge.storage.gallery.schema`; records and
checks: :mod:`edge.storage.gallery.records`; the export file: :mod:`edge.storage.gallery.exchange`.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edge.storage.gallery.exchange import GalleryImportError, export_record, read_export, write_export
from edge.storage.gallery.records import (
    NORM_TOLERANCE,
    GalleryArrays,
    GalleryError,
    Identity,
    ImportResult,
    IntegrityReport,
    StoredTemplate,
    Template,
    _embedding_bytes,
    _embedding_from_bytes,
    _validate_source,
    _validate_yaw,
    normalise_embedding,
    utc_now,
    validate_name,
)
from edge.storage.gallery.schema import APPLICATION_ID, READABLE_VERSIONS, _create_private_file, _prepare
from edge.storage.keys import SEAL_OVERHEAD  # cryptography itself is imported only with a key

ON_CONFLICT = ("skip", "replace", "error")


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
            stored_dim, encrypted = _prepare(path, conn, dim, sealer, without_key)
        except BaseException:
            conn.close()
            raise
        locked = encrypted and sealer is None
        return cls(path, conn, stored_dim, sealer if encrypted else None, locked)

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
        """Write every identity to ``path`` (format: :mod:`edge.storage.gallery.exchange`), atomically; returns
        the count."""
        path = Path(path)
        self._conn.execute("BEGIN")  # one read snapshot, so a concurrent enrolment is all in or all out
        try:
            records = [export_record(ident, self.identity_templates(ident.name)) for ident in self.list()]
        finally:
            self._conn.execute("COMMIT")
        write_export(path, self.dim, records)
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
