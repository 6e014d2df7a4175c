"""The gallery file: its SQLite schema and versions, and what opening a file checks and sets.

One row per identity (``identities``: id, name UNIQUE, created, metadata JSON) and one row per
template (``templates``: the L2-normalised embedding as little-endian float32 bytes, its
dimension, the yaw in degrees of the photo it came from, when, and from which source), and a
``settings`` table (the embedding dim, when the file was created, the encryption and its key
check). Every open sets:

- ``journal_mode=WAL`` and ``synchronous=FULL``: every committed write survives a crash or a
  power cut, and readers (the run loop) never block the writer (``edge.app.enroll``);
- ``foreign_keys=ON``: removing an identity removes its templates (ON DELETE CASCADE);
- ``secure_delete=ON``: freed pages are zeroed (removal also rebuilds the file and checkpoints
  the WAL: :meth:`edge.storage.gallery.store.Gallery.remove`);
- ``application_id`` and ``user_version``: a gallery says what it is and which schema version
  wrote it, so a stray SQLite file or a newer gallery is refused instead of modified. Version 1
  files (plain templates only) are still read and written; version 2 lets templates be sealed.

An encrypted gallery keeps a key check in ``settings``, so a wrong key is refused at open; a
gallery opened without its key can list and remove names, never read or write an embedding.

Names with a leading underscore are shared by the modules of :mod:`edge.storage.gallery` only.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from edge.storage.gallery.records import GalleryError, utc_now
from edge.storage.keys import SEAL_OVERHEAD  # cryptography itself is imported only with a key

# Version 2 lets a template's embedding be sealed (AES-256-GCM: 28 bytes more than the plain
# float32 bytes); version 1 files (plain only) are still read and written, but cannot be encrypted.
SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)
# "PFGL" as a big-endian int32: SQLite's header field for telling file formats apart.
APPLICATION_ID = 0x5046474C


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


def _create_private_file(path: Path) -> None:
    """Create an empty file readable by its owner only (face templates are biometric data)."""
    try:
        fd = os.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    os.close(fd)


def _prepare(
    path: Path, conn: sqlite3.Connection, dim: int | None, sealer, without_key: bool = False
) -> tuple[int | None, bool]:
    """Check a freshly connected file is a gallery this program reads (creating the schema in an
    empty one), set the connection's pragmas, and check its key: (stored dim, encrypted)."""
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
