"""The gallery key: templates are sealed with AES-256-GCM (authenticated encryption).

A key is 32 random bytes, kept in a file as one line of base64 (44 characters), readable by its
owner only. ``python -m edge.enroll keygen --key-file FILE`` makes one. On a device the systemd
unit hands it to the service as a credential (``LoadCredential=gallery.key:/etc/...``); without
credentials (systemd < 247), the config's ``gallery.key_file`` names the file.

Each template's embedding is sealed with a fresh 96-bit nonce and bound (GCM's associated data)
to its person (identity row, name, enrolment time) and to its yaw and dimension, so a template
moved to another person, a swapped name or an edited yaw no longer opens. A
gallery stores a *key check* (a known text sealed with its key): a wrong key is refused at
open, not discovered as garbage embeddings.
"""

from __future__ import annotations

import base64
import binascii
import os
import stat
import tempfile
from pathlib import Path

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
SEAL_OVERHEAD = NONCE_BYTES + TAG_BYTES
CIPHER = "aes-256-gcm"
_KEY_CHECK_TEXT = b"poseface.gallery key check"
_KEY_CHECK_AAD = b"poseface.gallery/key-check"


class KeyFileError(ValueError):
    """The key file is missing, too open, or not a key; the message names the file."""

    def __init__(self, message: str):
        from edge.oneline import one_line

        super().__init__(one_line(message))


def _aesgcm(key: bytes):
    try:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    except ImportError:  # pragma: no cover - cryptography is a core dependency
        raise KeyFileError("template encryption needs the 'cryptography' package (pip install cryptography)") from None
    return AESGCM(key)


def load_key(path: os.PathLike | str) -> bytes:
    """The 32-byte key in ``path``; refuses a file that group or others may read or write."""
    path = Path(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        raise KeyFileError(
            f"{path}: no key file here (make one: python -m edge.enroll keygen --key-file {path})"
        ) from None
    except OSError as err:
        raise KeyFileError(f"{path}: cannot read the key file ({err.strerror})") from None
    if not stat.S_ISREG(info.st_mode):
        raise KeyFileError(f"{path}: expected a key file, found something else")
    if info.st_mode & 0o077:
        raise KeyFileError(
            f"{path}: key file mode {stat.S_IMODE(info.st_mode):04o} lets others read it; expected 0600 or "
            f"stricter (chmod 600 {path})"
        )
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise KeyFileError(f"{path}: cannot read the key file ({err.strerror})") from None
    try:
        key = base64.b64decode(raw.strip(), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != KEY_BYTES and len(raw) == KEY_BYTES and not raw.isascii():
        key = raw  # 32 random raw bytes (head -c 32 /dev/urandom) are a key too; 32 characters of text are not
    if len(key) != KEY_BYTES:
        raise KeyFileError(f"{path}: expected one line of base64 holding {KEY_BYTES} bytes (a key from keygen)")
    return key


def generate_key(path: os.PathLike | str) -> Path:
    """Write a new random key to ``path`` (mode 0600, created exclusively: never overwrites)."""
    path = Path(path)
    if not path.parent.is_dir():
        raise KeyFileError(f"{path}: folder {path.parent} does not exist")
    taken = f"{path}: a file is already there; a new key would orphan what the old one sealed"
    if path.exists() or path.is_symlink():
        raise KeyFileError(taken)
    data = base64.b64encode(os.urandom(KEY_BYTES)) + b"\n"
    # Written whole to a private temporary file, then linked into place: the name never holds a
    # partial key, and link() refuses to replace a file that appeared meanwhile.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o600)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
        os.close(fd)
        fd = -1
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise KeyFileError(
                f"{path}: a file is already there; a new key would orphan what the old one sealed"
            ) from None
    finally:
        if fd >= 0:
            os.close(fd)
        os.unlink(tmp)
    folder = os.open(str(path.parent), os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)
    return path


class Sealer:
    """AES-256-GCM sealing of template bytes: ``nonce || ciphertext || tag``."""

    def __init__(self, key: bytes):
        if not isinstance(key, (bytes, bytearray)) or len(key) != KEY_BYTES:
            raise KeyFileError(f"gallery key: expected {KEY_BYTES} bytes")
        self._aead = _aesgcm(bytes(key))

    def seal(self, plain: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, plain, aad)

    def open(self, blob: bytes, aad: bytes) -> bytes | None:
        """The plain bytes, or None when the blob fails authentication (tampered, or another key)."""
        from cryptography.exceptions import InvalidTag

        if len(blob) < SEAL_OVERHEAD:
            return None
        try:
            return self._aead.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad)
        except InvalidTag:
            return None

    def key_check(self) -> str:
        return base64.b64encode(self.seal(_KEY_CHECK_TEXT, _KEY_CHECK_AAD)).decode("ascii")

    def matches(self, key_check: str) -> bool:
        try:
            blob = base64.b64decode(key_check, validate=True)
        except (binascii.Error, ValueError):
            return False
        return self.open(blob, _KEY_CHECK_AAD) == _KEY_CHECK_TEXT


def template_aad(identity_id: int, name: str, enrolled: str, yaw_deg: float, dim: int) -> bytes:
    """What a sealed template is bound to: the person who owns it (identity row, name and the time
    that person was enrolled: a reused row number or a swapped name no longer fits) and the
    template's own plain columns that matching trusts (the yaw picks the threshold, the dim)."""
    import struct

    owner = f"{int(identity_id)}\0{name}\0{enrolled}".encode()
    return b"poseface.template/v1\0" + owner + b"\0" + struct.pack("<dI", float(yaw_deg), int(dim))
