"""insightface's RecordIO face packs (``train.rec`` + ``train.idx``: MS1MV2, Glint360K, ...) read
and written without mxnet.

The format, as dmlc-core's ``recordio.h``/``recordio.cc`` and mxnet's ``recordio.py`` define it:

- ``.rec``: records one after another, each ``magic lrec payload pad``, little-endian words:
  ``magic`` = 0xced7230a; ``lrec`` = length in the lower 29 bits and a continuation flag in the
  upper 3; the payload padded with zeros to a multiple of 4 bytes. A payload that holds the magic
  word at a 4-byte-aligned position is written split there: the parts carry flags 1 (first),
  2 (middle) and 3 (last) and the magic word between them is left out (the reader puts it back);
  a whole record has flag 0.
- ``.idx``: one ``key<TAB>offset`` line per record, ``offset`` the byte position of its magic.
- the payload of an image record: an ``IRHeader`` (``flag`` uint32, ``label`` float32, ``id``
  uint64, ``id2`` uint64; 24 bytes), then, when ``flag`` > 0, ``flag`` float32 labels (the
  label is then that array and the header's own label field is 0), then the encoded image.
- insightface packs: record 0 is a header record whose labels are ``(first identity record,
  end of identity records)``: the images are records 1 .. labels[0] - 1, and each record k in
  ``labels[0] .. labels[1] - 1`` is identity k - labels[0] with labels ``(first image, end)``,
  the range of its images' records. An image record's class is its label (the first one where
  it has several). A pack without such a header (record 0's flag is 0) is all images.

Every error is a :class:`RecordIOError` whose one-line message names the file and the record.
"""

from __future__ import annotations

import io
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MAGIC = 0xCED7230A
_WORDS = struct.Struct("<II")  # magic, lrec
_IR = struct.Struct("<IfQQ")  # IRHeader: flag, label, id, id2
IR_SIZE = _IR.size  # 24
LENGTH_BITS = 29
MAX_LENGTH = (1 << LENGTH_BITS) - 1
WHOLE, FIRST, MIDDLE, LAST = 0, 1, 2, 3


class RecordIOError(ValueError):
    """A pack that cannot be read as RecordIO; the message names the file and the record."""


def _pad4(n: int) -> int:
    return (n + 3) & ~3


def idx_path_for(rec_path) -> Path:
    """``train.rec`` -> ``train.idx`` (the name insightface's packs and mxnet use)."""
    return Path(rec_path).with_suffix(".idx")


def read_index(idx_path) -> tuple[np.ndarray, np.ndarray]:
    """(keys, offsets) int64 arrays in file order from a ``.idx`` file."""
    idx_path = Path(idx_path)
    try:
        text = idx_path.read_bytes()
    except FileNotFoundError:
        raise RecordIOError(f"{idx_path}: index file not found (a .rec needs its .idx beside it)") from None
    except OSError as err:
        raise RecordIOError(f"{idx_path}: cannot read the index: {err.strerror or err}") from None
    if not text.strip():
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    try:
        table = np.loadtxt(io.BytesIO(text), dtype=np.int64, ndmin=2)
    except ValueError:
        table = None
    if table is None or table.shape[1] != 2:
        _raise_bad_index_line(idx_path, text)
    keys, offsets = table[:, 0].copy(), table[:, 1].copy()
    if len(keys) and (offsets < 0).any():
        line = int(np.flatnonzero(offsets < 0)[0]) + 1
        raise RecordIOError(f"{idx_path}: line {line}: negative offset {int(offsets[line - 1])}")
    if len(np.unique(keys)) != len(keys):
        uniq, counts = np.unique(keys, return_counts=True)
        raise RecordIOError(f"{idx_path}: record {int(uniq[counts > 1][0])} is listed more than once")
    return keys, offsets


def _raise_bad_index_line(idx_path: Path, text: bytes) -> None:
    for number, line in enumerate(text.decode("utf-8", "replace").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not all(p.lstrip("-").isdigit() for p in parts):
            raise RecordIOError(f"{idx_path}: line {number}: expected 'key<TAB>offset', got {line[:60]!r}")
    raise RecordIOError(f"{idx_path}: not a RecordIO index (expected 'key<TAB>offset' lines)")


class RecordFile:
    """Random access to the records of a ``.rec`` file by offset. The file is opened on first
    use and again in every process that uses it (a DataLoader worker never shares the parent's
    file position); the object pickles without its handle."""

    def __init__(self, path):
        self.path = Path(path)
        self._fh = None
        self._pid = None
        self._size = None

    def __getstate__(self):
        return {"path": self.path, "_fh": None, "_pid": None, "_size": None}

    def _file(self):
        if self._fh is None or self._pid != os.getpid():
            try:
                self._fh = open(self.path, "rb")
            except FileNotFoundError:
                raise RecordIOError(f"{self.path}: file not found") from None
            self._pid = os.getpid()
            self._size = os.fstat(self._fh.fileno()).st_size
        return self._fh

    @property
    def size(self) -> int:
        self._file()
        return self._size

    def close(self) -> None:
        if self._fh is not None and self._pid == os.getpid():
            self._fh.close()
        self._fh = None

    def read(self, offset: int, key) -> tuple[bytes, int]:
        """(payload, end offset) of the record whose magic is at ``offset`` (parts of a split
        record joined, their magic words put back). ``key`` only names the record in errors."""
        fh = self._file()
        where = f"{self.path}: record {key}"
        if offset < 0 or offset + _WORDS.size > self._size:
            raise RecordIOError(
                f"{where}: offset {offset} is past the end of the file ({self._size} bytes): truncated pack?"
            )
        parts, pos, first = [], offset, True
        while True:
            fh.seek(pos)
            head = fh.read(_WORDS.size)
            if len(head) < _WORDS.size:
                raise RecordIOError(f"{where}: truncated: the file ends inside a record header at offset {pos}")
            magic, lrec = _WORDS.unpack(head)
            if magic != MAGIC:
                raise RecordIOError(f"{where}: bad magic number 0x{magic:08x} at offset {pos} (expected 0x{MAGIC:08x})")
            flag, length = lrec >> LENGTH_BITS, lrec & MAX_LENGTH
            if (first and flag not in (WHOLE, FIRST)) or (not first and flag not in (MIDDLE, LAST)):
                raise RecordIOError(f"{where}: bad continuation flag {flag} at offset {pos}")
            padded = _pad4(length)
            if pos + _WORDS.size + padded > self._size:
                raise RecordIOError(
                    f"{where}: truncated: {length} payload bytes from offset {pos + _WORDS.size}, "
                    f"but the file ends at {self._size}"
                )
            data = fh.read(padded)
            if len(data) < padded:
                raise RecordIOError(f"{where}: truncated: short read at offset {pos + _WORDS.size}")
            parts.append(data[:length])
            pos += _WORDS.size + padded
            if flag in (WHOLE, LAST):
                break
            parts.append(struct.pack("<I", MAGIC))
            first = False
        return b"".join(parts), pos


@dataclass(frozen=True)
class RecordHeader:
    """mxnet's IRHeader: ``labels`` holds the one label (flag 0) or the ``flag`` labels."""

    flag: int
    labels: np.ndarray  # float32, at least one value
    id: int
    id2: int

    @property
    def label(self) -> float:
        return float(self.labels[0])


def unpack(payload: bytes, where: str = "record") -> tuple[RecordHeader, bytes]:
    """(header, the rest: the encoded image) of a record's payload."""
    if len(payload) < IR_SIZE:
        raise RecordIOError(f"{where}: payload of {len(payload)} bytes is shorter than its {IR_SIZE}-byte header")
    flag, label, id_, id2 = _IR.unpack_from(payload)
    rest = payload[IR_SIZE:]
    if flag > 0:
        if len(rest) < 4 * flag:
            raise RecordIOError(f"{where}: header announces {flag} labels, the payload holds {len(rest) // 4}")
        labels = np.frombuffer(rest, dtype="<f4", count=flag).astype(np.float32)
        rest = rest[4 * flag :]
    else:
        labels = np.array([label], dtype=np.float32)
    return RecordHeader(int(flag), labels, int(id_), int(id2)), rest


def pack(label, data: bytes = b"", id: int = 0, id2: int = 0) -> bytes:
    """The payload of a record: IRHeader (+ label array when ``label`` is a sequence) + data,
    as mxnet's ``recordio.pack`` writes it."""
    if np.ndim(label) == 0:
        return _IR.pack(0, float(label), id, id2) + bytes(data)
    labels = np.asarray(label, dtype="<f4").reshape(-1)
    return _IR.pack(len(labels), 0.0, id, id2) + labels.tobytes() + bytes(data)


class RecordWriter:
    """Writes a ``.rec`` and its ``.idx`` the way dmlc-core does (split at aligned magic words,
    zero padding). For tests and tools; a context manager."""

    def __init__(self, rec_path, idx_path=None):
        self.rec_path = Path(rec_path)
        self.idx_path = Path(idx_path) if idx_path else idx_path_for(rec_path)
        self._rec = open(self.rec_path, "wb")
        self._idx = open(self.idx_path, "w")
        self.splits = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        self._rec.close()
        self._idx.close()

    def write(self, key: int, payload: bytes) -> int:
        """Append one record under ``key``; returns its offset."""
        if len(payload) > MAX_LENGTH:
            raise ValueError(f"{self.rec_path}: record {key}: {len(payload)} bytes, RecordIO takes < 2**29")
        offset = self._rec.tell()
        magic = struct.pack("<I", MAGIC)
        start, flag = 0, WHOLE
        for i in range(0, len(payload) - 3, 4):
            if payload[i : i + 4] == magic:
                self._part(FIRST if start == 0 else MIDDLE, payload[start:i])
                start, flag = i + 4, LAST
                self.splits += 1
        self._part(flag, payload[start:])
        self._idx.write(f"{key}\t{offset}\n")
        return offset

    def _part(self, flag: int, data: bytes) -> None:
        self._rec.write(_WORDS.pack(MAGIC, (flag << LENGTH_BITS) | len(data)))
        self._rec.write(data)
        self._rec.write(b"\0" * (_pad4(len(data)) - len(data)))


def write_face_pack(rec_path, faces, header: bool = True) -> Path:
    """Write an insightface-style pack: ``faces`` is a sequence of (label, encoded image bytes),
    grouped by label (classes 0..C-1 in order, as insightface's packs are). With ``header``:
    record 0 = (first identity record, end), images 1..N, then one identity record per class
    with its image range; without: the images only, keys 0..N-1."""
    faces = list(faces)
    labels = [int(lab) for lab, _ in faces]
    if labels != sorted(labels):
        raise ValueError("write_face_pack: faces must be grouped by label in increasing order")
    rec_path = Path(rec_path)
    with RecordWriter(rec_path) as w:
        if not header:
            for k, (label, data) in enumerate(faces):
                w.write(k, pack(float(label), data, id=k))
            return rec_path
        n = len(faces)
        classes = sorted(set(labels))
        w.write(0, pack([n + 1, n + 1 + len(classes)]))
        for k, (label, data) in enumerate(faces, 1):
            w.write(k, pack(float(label), data, id=k))
        start = 1
        for j, c in enumerate(classes):
            end = start + labels.count(c)
            w.write(n + 1 + j, pack([start, end]))
            start = end
    return rec_path
