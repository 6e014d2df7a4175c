"""Large face datasets streamed from disk for identity training: an image folder
(``<root>/<identity>/<image>``) or an insightface RecordIO pack (``train.rec`` + ``train.idx``,
how MS1MV2 and Glint360K are distributed; format in :mod:`training.identity.data.recordio`).

Both readers are torch Datasets that hold only the index in memory (record offsets, or relative
paths as one fixed-width bytes array, so forked DataLoader workers share it without copying):
each item is read from disk and decoded with OpenCV in the worker that asks for it (a ``.rec``
is opened lazily, once per worker process, and read by offset), then passed through the
augmentation callable given to the reader. A broken record (unreadable, bad framing, an image
OpenCV cannot decode, a label outside the pack's classes) does not stop a run: it is marked in a
shared table, warned about once (:class:`BrokenRecordWarning`, naming the file and the record),
and the next good record is returned instead; ``dataset.broken`` counts them over all workers.

Faces in these sources are already aligned (ArcFace 5-point, 112x112: ``SOURCE_ALIGNMENT``);
images of another size are resized to the model's input (``python -m training.identity.data
check`` reports the sizes found).

Yaw, for the pose-adaptive ArcFace (PAA) margin
-----------------------------------------------
Today the cache supplies yaw: ``training.identity.prepare`` runs our PIPNet landmarks and the
shared head-pose fit on every photo once, and ``IdentityDataset.collate`` puts each face's yaw in
``batch["yaw"]``, which ``PoseAdaptiveArcFace`` turns into a per-sample margin. The packs carry no
pose. Of the three ways to get it:

- our landmark model on the fly would run PIPNet (three passes with re-crops) on every sample of
  every epoch inside the loader: on CPU that costs more than the identity trunk's own step, and
  the same yaw would be recomputed for every epoch;
- turning PAA off throws the method away for exactly the large sets it is meant for;
- a pre-pass computes yaw once per image (``python -m training.identity.data yaw``, the cache's
  own chain: PIPNet on the aligned crop, ``ANNOTATION_REFINE`` re-crops, ``head_pose``) and writes
  it beside the source (``train.yaw.npz`` beside ``train.rec``, ``DIR.yaw.npz`` beside a folder;
  ``key`` = record id or relative path, ``yaw`` in degrees). It is paid once, can run on a
  faster machine than the training, and is optional.

So: the readers read a yaw sidecar when there is one, and otherwise give every face an unknown
yaw (NaN). Unknown yaw means the base margin: ``collate`` sends ``yaw`` 0 there (PAA's ramp is 0
at 0 degrees, so the margin is exactly ArcFace's m_b, never a NaN loss) together with
``yaw_known``, the mask of faces whose yaw was measured. A mirror augmentation flips a known yaw's
sign, as the cache's augmentation does.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch

from edge.geometry.align import ARCFACE_112
from training.identity.data.recordio import RecordFile, RecordIOError, idx_path_for, read_index, unpack

# The crops these sources hold: insightface's packs are ArcFace 5-point 112x112.
SOURCE_ALIGNMENT = ARCFACE_112
# File suffixes OpenCV's imread reads (its documentation's list); others in a folder are ignored.
IMAGE_SUFFIXES = frozenset(
    ".bmp .dib .jpeg .jpg .jpe .jp2 .png .webp .avif .pbm .pgm .ppm .pxm .pnm .pfm .sr .ras .tiff .tif "
    ".exr .hdr .pic".split()
)
# More broken records than this in a row (after the one asked for) stop the run: the source is
# damaged, not noisy.
MAX_BROKEN_IN_A_ROW = 64

# (image uint8 BGR (S, S, 3), yaw degrees or NaN, numpy Generator) -> (image, yaw)
Augment = Callable[[np.ndarray, float, np.random.Generator], tuple[np.ndarray, float]]


class FaceDataError(ValueError):
    """A source that cannot be used at all; the message names the file."""


class BrokenRecordWarning(RuntimeWarning):
    """One record skipped (message: file, record, reason, count so far)."""


class BrokenRecord(Exception):
    """Raised by a reader's ``load`` for one unusable record (one-line message)."""


class FaceAugment:
    """The recipe's augmentation (:func:`training.identity.data.augment_face`) as the readers'
    callable: a mirror flips yaw's sign (NaN stays NaN), rotation and the rest leave it."""

    _NO_LANDMARKS = np.zeros((68, 2), np.float32)

    def __init__(self, aug):
        self.aug = aug

    def __call__(self, image: np.ndarray, yaw: float, rng: np.random.Generator) -> tuple[np.ndarray, float]:
        from training.identity.data import augment_face

        out, pose, _ = augment_face(image, (yaw, 0.0, 0.0), self._NO_LANDMARKS, self.aug, rng)
        return out, float(pose[0])


def yaw_sidecar_path(source) -> Path:
    """Where the yaw pre-pass writes and the readers look: ``train.rec`` -> ``train.yaw.npz``,
    folder ``DIR`` -> ``DIR.yaw.npz`` beside it."""
    source = Path(source)
    if source.suffix == ".rec" and not source.is_dir():
        return source.with_suffix(".yaw.npz")
    return source.with_name(source.name + ".yaw.npz")


def load_yaw(path, keys: np.ndarray) -> np.ndarray:
    """(len(keys),) float32 yaw in degrees from a sidecar for these keys (record ids or relative
    paths as bytes); NaN where the sidecar has no finite value."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            side_keys, side_yaw = z["key"], z["yaw"].astype(np.float32)
    except FileNotFoundError:
        raise FaceDataError(f"{path}: yaw sidecar not found") from None
    except (OSError, ValueError, KeyError) as err:
        raise FaceDataError(f"{path}: not a yaw sidecar (.npz with 'key' and 'yaw'): {err}") from None
    if side_keys.shape != side_yaw.shape or side_keys.ndim != 1:
        raise FaceDataError(f"{path}: 'key' and 'yaw' must be two 1-D arrays of the same length")
    if side_keys.dtype.kind == "U":
        side_keys = np.char.encode(side_keys, "utf-8")
    if (side_keys.dtype.kind == "S") != (keys.dtype.kind == "S"):
        raise FaceDataError(
            f"{path}: its keys are {side_keys.dtype}, this source's are {keys.dtype}: another source's?"
        )
    out = np.full(len(keys), np.nan, np.float32)
    if not len(side_keys):
        return out
    order = np.argsort(side_keys, kind="stable")
    sorted_keys = side_keys[order]
    pos = np.clip(np.searchsorted(sorted_keys, keys), 0, len(sorted_keys) - 1)
    hit = sorted_keys[pos] == keys
    out[hit] = side_yaw[order][pos[hit]]
    return out


class StreamedFaces(torch.utils.data.Dataset):
    """The shared part of both readers: broken-record skipping, yaw, augmentation, collate.

    Items are ``(image uint8 BGR (S, S, 3), label, yaw degrees or NaN, index)``; ``collate``
    makes the batch dict the identity trainer reads (``image``, ``label``, ``yaw``, plus
    ``yaw_known`` and ``index``). ``epoch`` and ``seed`` seed each item's augmentation, as in
    :class:`training.identity.data.IdentityDataset`."""

    source: Path
    classes: list[str]

    def __init__(self, count: int, size: int, augment: Augment | None, meta, seed: int, keys: np.ndarray, yaw):
        self.size, self.augment, self.meta = int(size), augment, meta
        self.seed, self.epoch = seed, 0
        self._pid = None
        # One byte per record, in shared memory: DataLoader workers mark what they found broken,
        # every process sees it (counted once, warned once, never read again).
        self._broken = torch.zeros(max(count, 1), dtype=torch.uint8).share_memory_()
        self.yaw = np.full(count, np.nan, np.float32)
        self.yaw_file = None
        if yaw is True:
            default = yaw_sidecar_path(self.source)
            yaw = default if default.exists() else None
        if yaw:
            self.yaw = load_yaw(yaw, keys)
            self.yaw_file = Path(yaw)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def broken(self) -> int:
        """Records found broken so far, by any process (each counted once)."""
        return int(self._broken.sum())

    def broken_items(self) -> list[str]:
        return [self.item_name(int(i)) for i in torch.nonzero(self._broken[: len(self)]).flatten()]

    def item_name(self, i: int) -> str:
        raise NotImplementedError

    def load(self, i: int) -> tuple[np.ndarray, int]:
        """(image uint8 BGR at the reader's size, label) of item ``i``; BrokenRecord if unusable."""
        raise NotImplementedError

    def _fit(self, image: np.ndarray) -> np.ndarray:
        if image.shape[:2] == (self.size, self.size):
            return image
        shrink = max(image.shape[:2]) > self.size
        return cv2.resize(image, (self.size, self.size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)

    def __getitem__(self, i: int):
        if self._pid != os.getpid():
            self._pid = os.getpid()
            if torch.utils.data.get_worker_info() is not None:
                cv2.setNumThreads(1)  # the workers are the parallelism: no OpenCV thread pool in each
        n = len(self)
        j = int(i)
        for step in range(min(n, MAX_BROKEN_IN_A_ROW + 1)):
            j = (int(i) + step) % n
            if self._broken[j]:
                continue
            try:
                image, label = self.load(j)
            except BrokenRecord as err:
                self._broken[j] = 1
                warnings.warn(f"{err}; skipped ({self.broken} broken so far)", BrokenRecordWarning, stacklevel=2)
                continue
            yaw = float(self.yaw[j])
            if self.augment is not None:
                image, yaw = self.augment(image, yaw, np.random.default_rng((self.seed, self.epoch, j)))
            return image, label, yaw, j
        raise FaceDataError(
            f"{self.source}: items {int(i)}..{j} ({self.item_name(j)}) are all broken: the source is damaged "
            f"(python -m training.identity.data check)"
        )

    def collate(self, items) -> dict:
        from edge.runtime.preprocess import preprocess

        images, labels, yaws, index = zip(*items)
        yaw = np.asarray(yaws, dtype=np.float32)
        known = np.isfinite(yaw)
        if self.meta is not None:
            image = torch.from_numpy(preprocess(list(images), self.meta))
        else:
            image = torch.from_numpy(np.stack(images))
        return {
            "image": image,
            "label": torch.tensor(labels, dtype=torch.int64),
            # unknown yaw -> 0: PAA's base margin (ArcFace's), never NaN
            "yaw": torch.from_numpy(np.where(known, yaw, 0.0).astype(np.float32)),
            "yaw_known": torch.from_numpy(known),
            "index": torch.tensor(index, dtype=torch.int64),
        }

    def describe(self) -> str:
        known = int(np.isfinite(self.yaw).sum())
        yaw = f"yaw from {self.yaw_file} for {known}" if self.yaw_file else "no yaw sidecar: PAA uses its base margin"
        return f"{len(self)} faces of {self.num_classes} identities streamed from {self.source} ({yaw})"


def _decode(data: np.ndarray | bytes) -> np.ndarray | None:
    buf = np.frombuffer(data, np.uint8) if isinstance(data, (bytes, bytearray, memoryview)) else data
    if not buf.size:
        return None
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)


class FolderListing:
    """The images of ``<root>/<identity>/<image>``: identities = sorted folder names that hold at
    least one image (labels 0..N-1 in that order), images sorted within each. Hidden entries are
    left out; other files OpenCV does not read (by suffix), files beside the identity folders and
    folders inside them are left out and counted (``stray``)."""

    def __init__(self, root, progress: bool = True):
        from tqdm import tqdm

        self.root = Path(root)
        if not self.root.is_dir():
            raise FaceDataError(f"{self.root}: not a folder (expected <root>/<identity>/<image>)")
        folders, self.stray = [], 0
        with os.scandir(self.root) as it:
            for entry in it:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir():
                    folders.append(entry.name)
                else:
                    self.stray += 1
        folders.sort()
        self.classes: list[str] = []
        self.empty: list[str] = []
        paths: list[bytes] = []
        labels: list[np.ndarray] = []
        for name in tqdm(folders, desc=f"listing {self.root.name}", unit="identity", disable=not progress):
            images = []
            with os.scandir(self.root / name) as it:
                for entry in it:
                    if entry.name.startswith("."):
                        continue
                    if entry.is_file() and os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES:
                        images.append(entry.name)
                    else:
                        self.stray += 1
            if not images:
                self.empty.append(name)
                continue
            images.sort()
            labels.append(np.full(len(images), len(self.classes), np.int32))
            self.classes.append(name)
            paths += [os.fsencode(f"{name}/{image}") for image in images]
        if not paths:
            raise FaceDataError(f"{self.root}: no images in the <root>/<identity>/<image> layout")
        self.paths = np.array(paths, dtype=bytes)  # fixed-width bytes: one buffer, no Python objects
        self.labels = np.concatenate(labels)


class FolderFaces(StreamedFaces):
    """Aligned faces in ``<root>/<identity>/<image>`` (any format OpenCV reads); labels are the
    sorted identity folder names -> 0..N-1. ``yaw``: True (the sidecar ``<root>.yaw.npz`` if
    present), False (unknown), or a sidecar path."""

    def __init__(
        self,
        root,
        *,
        size: int = 112,
        augment: Augment | None = None,
        meta=None,
        seed: int = 0,
        yaw=True,
        progress: bool = True,
    ):
        self.source = Path(root)
        listing = FolderListing(root, progress)
        self.classes = listing.classes
        self.paths, self.labels = listing.paths, listing.labels
        self.empty, self.stray = listing.empty, listing.stray
        super().__init__(len(self.paths), size, augment, meta, seed, self.paths, yaw)

    def __len__(self) -> int:
        return len(self.paths)

    def item_name(self, i: int) -> str:
        return str(self.source / os.fsdecode(self.paths[i]))

    def load(self, i: int) -> tuple[np.ndarray, int]:
        path = self.source / os.fsdecode(self.paths[i])
        try:
            data = np.fromfile(path, np.uint8)
        except OSError as err:
            raise BrokenRecord(f"{path}: cannot read: {err.strerror or err}") from None
        image = _decode(data)
        if image is None:
            raise BrokenRecord(f"{path}: not an image OpenCV can decode")
        return self._fit(image), int(self.labels[i])


class PackLayout:
    """Which records of a pack are images, and how many identities it has: from insightface's
    header record 0 when there is one, else every record is an image and the identities are
    counted from their labels (a scan of all records' headers)."""

    def __init__(self, file: RecordFile, keys: np.ndarray, offsets: np.ndarray, progress: bool = True):
        self.file = file
        order = np.argsort(keys, kind="stable")
        self._sorted_keys, self._sorted_offsets = keys[order], offsets[order]
        self.header = None
        if len(keys) and self._sorted_keys[0] == 0:
            head, _ = unpack(file.read(int(self._sorted_offsets[0]), 0)[0], f"{file.path}: record 0")
            if head.flag >= 2 and 1 <= head.labels[0] <= head.labels[1]:
                self.header = (int(head.labels[0]), int(head.labels[1]))
        if self.header is not None:
            first_identity, end = self.header
            self.image_keys = np.arange(1, first_identity, dtype=np.int64)
            self.image_offsets = self.offsets_of(self.image_keys, "an image record (the header's range)")
            self.identity_keys = np.arange(first_identity, end, dtype=np.int64)
            self.num_classes = end - first_identity
        else:
            self.image_keys, self.image_offsets = keys, offsets
            self.identity_keys = np.zeros(0, np.int64)
            self.num_classes = self._count_labels(progress)

    def offsets_of(self, wanted: np.ndarray, what: str) -> np.ndarray:
        pos = np.clip(np.searchsorted(self._sorted_keys, wanted), 0, max(len(self._sorted_keys) - 1, 0))
        missing = ~(self._sorted_keys[pos] == wanted) if len(self._sorted_keys) else np.ones(len(wanted), bool)
        if missing.any():
            k = int(wanted[np.flatnonzero(missing)[0]])
            raise RecordIOError(f"{idx_path_for(self.file.path)}: record {k} ({what}) is not in the index")
        return self._sorted_offsets[pos]

    def _count_labels(self, progress: bool) -> int:
        from tqdm import tqdm

        top = -1
        for k, off in tqdm(
            zip(self.image_keys, self.image_offsets),
            total=len(self.image_keys),
            desc=f"{self.file.path.name}: labels (no header record)",
            disable=not progress,
            mininterval=2,
        ):
            try:
                head, _ = unpack(self.file.read(int(off), int(k))[0], f"{self.file.path}: record {int(k)}")
            except RecordIOError:
                continue  # the reader skips it when it comes up; check reports it
            if np.isfinite(head.label):
                top = max(top, int(head.label))
        if top < 0:
            raise RecordIOError(f"{self.file.path}: no record has a label >= 0")
        return top + 1


class RecordFaces(StreamedFaces):
    """The images of an insightface RecordIO pack (``.rec`` with its ``.idx`` beside it, or
    ``idx``), read by offset; classes 0..C-1 as the header record says. ``yaw``: True (the
    sidecar ``<stem>.yaw.npz`` if present), False (unknown), or a sidecar path."""

    def __init__(
        self,
        rec,
        *,
        size: int = 112,
        augment: Augment | None = None,
        meta=None,
        seed: int = 0,
        yaw=True,
        idx=None,
        progress: bool = True,
    ):
        self.source = Path(rec)
        if not self.source.is_file():
            raise FaceDataError(f"{self.source}: RecordIO pack not found")
        keys, offsets = read_index(idx or idx_path_for(self.source))
        self.file = RecordFile(self.source)
        layout = PackLayout(self.file, keys, offsets, progress)
        self.file.close()  # workers open their own
        self.header = layout.header
        self.keys, self.offsets = layout.image_keys, layout.image_offsets
        self.classes = [str(c) for c in range(layout.num_classes)]
        super().__init__(len(self.keys), size, augment, meta, seed, self.keys, yaw)

    def __len__(self) -> int:
        return len(self.keys)

    def item_name(self, i: int) -> str:
        return f"{self.source}: record {int(self.keys[i])}"

    def load(self, i: int) -> tuple[np.ndarray, int]:
        key = int(self.keys[i])
        where = f"{self.source}: record {key}"
        try:
            header, data = unpack(self.file.read(int(self.offsets[i]), key)[0], where)
        except RecordIOError as err:
            raise BrokenRecord(str(err)) from None
        label = header.label
        if not np.isfinite(label) or not 0 <= int(label) < self.num_classes:
            raise BrokenRecord(f"{where}: label {label:g} outside the pack's classes 0..{self.num_classes - 1}")
        image = _decode(data)
        if image is None:
            raise BrokenRecord(f"{where}: the image ({len(data)} bytes) does not decode")
        return self._fit(image), int(label)


def open_source(source, **kwargs) -> StreamedFaces:
    """A folder -> :class:`FolderFaces`, a ``.rec`` file -> :class:`RecordFaces`."""
    path = Path(source)
    if path.is_dir():
        return FolderFaces(path, **kwargs)
    if path.suffix == ".rec":
        return RecordFaces(path, **kwargs)
    if not path.exists():
        raise FaceDataError(f"{path}: training source not found (expected an image folder or a .rec pack)")
    raise FaceDataError(f"{path}: expected an image folder <root>/<identity>/<image> or a .rec pack")


def check_source_flag(folder=None, rec=None) -> str:
    """The ``train_source`` that ``--train-folder DIR`` or ``--train-rec FILE.rec`` names, checked."""
    if folder:
        if not Path(folder).is_dir():
            raise FaceDataError(f"--train-folder {folder}: not a folder")
        return str(folder)
    path = Path(rec)
    if path.suffix != ".rec" or path.is_dir():
        raise FaceDataError(f"--train-rec {rec}: expected a .rec file")
    if not path.is_file():
        raise FaceDataError(f"--train-rec {rec}: file not found")
    if not idx_path_for(path).is_file():
        raise FaceDataError(f"--train-rec {rec}: its index {idx_path_for(path)} is missing")
    return str(path)


def build_train_dataset(cfg, meta=None, progress: bool = True) -> StreamedFaces:
    """The streamed training set a recipe names (``cfg.train_source``, yaw from ``cfg.train_yaw``
    or the sidecar beside the source), with the recipe's augmentation, seeded like the cache's
    :class:`IdentityDataset`; ``meta`` (the model's) makes ``collate`` preprocess the batch."""
    if not cfg.train_source:
        raise FaceDataError("train_source is empty: this recipe trains from the aligned-face cache")
    size = int(meta.input_size[0]) if meta is not None else SOURCE_ALIGNMENT.size
    return open_source(
        cfg.train_source,
        size=size,
        augment=FaceAugment(cfg.augment),
        meta=meta,
        seed=cfg.seed,
        yaw=cfg.train_yaw or True,
        progress=progress,
    )
