"""The 300-W training faces (AFW and part of HELEN) with their 68 landmarks.

Layout under the 300-W folder (``<data root>/300w``)::

    train/<subset>/<id>_<k>.jpg   the cropped photo
    train/<subset>/<id>_<k>.pts   its 68 iBUG points, pixels of the cropped photo
    train/crops.json              "<subset>/<id>_<k>.jpg" -> how the crop was cut

A face's ``name`` is ``"<subset>/<id>_<k>"`` (e.g. ``"afw/1051618982_1"``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import posixpath
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from edge.datasets.pts import read_pts
from edge.datasets.root import DataNotFoundError, DatasetFormatError, require_data_root

SUBSETS = ("afw", "helen")
N_LANDMARKS = 68
CROPS_FILE = "crops.json"
_FACE_STEM = re.compile(r"(?P<photo>.+)_(?P<k>\d+)")


@dataclass(frozen=True)
class CropInfo:
    """How a 300-W image was cut from its original photo.

    ``crop_xy = source_xy * scale + offset`` (pixels, x then y), so
    ``source_xy = (crop_xy - offset) / scale``. ``offset`` is in pixels of the crop.

    ``source_size`` is (width, height) of the original photo. crops.json does not say so;
    we checked it against the images: where a crop runs past the photo's right or bottom
    edge, the zero padding starts exactly at ``source_size * scale + offset`` read as
    (width, height) (524 of the 525 padded crops; the other has one JPEG-ringing pixel),
    while the (height, width) reading puts photo content in the padding for 579 crops.
    ``side_in_source``: side of the square crop in original-photo pixels
    (``side_in_source * scale`` is the crop's side, at most 400).
    """

    source_size: tuple[int, int]
    scale: float
    offset: tuple[float, float]
    side_in_source: float

    def to_source(self, points: np.ndarray) -> np.ndarray:
        """``(n, 2)`` x,y in the crop -> x,y in the original photo (float32)."""
        offset = np.asarray(self.offset, dtype=np.float64)
        return ((np.asarray(points, dtype=np.float64) - offset) / self.scale).astype(np.float32)

    def to_crop(self, points: np.ndarray) -> np.ndarray:
        """``(n, 2)`` x,y in the original photo -> x,y in the crop (float32)."""
        offset = np.asarray(self.offset, dtype=np.float64)
        return (np.asarray(points, dtype=np.float64) * self.scale + offset).astype(np.float32)


@dataclass(frozen=True)
class Face300W:
    """One annotated face: ``name`` like ``"afw/1051618982_1"``; ``crop`` None if unlisted."""

    name: str
    subset: str
    image_path: Path
    pts_path: Path
    crop: CropInfo | None


def w300_root(root: os.PathLike | str | None = None) -> Path:
    """The 300-W folder (holding ``train/``): ``root``, or ``<data root>/300w``."""
    path = require_data_root("300w") if root is None else Path(root)
    if not (path / "train").is_dir():
        raise DataNotFoundError(f"300-W training folder not found: {path / 'train'}")
    return path


def _number(path: Path, value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DatasetFormatError(path, f"{where}: expected a finite number, found {value!r}")
    return float(value)


def _pair(path: Path, value: object, where: str) -> tuple[float, float]:
    if not isinstance(value, list) or len(value) != 2:
        raise DatasetFormatError(path, f"{where}: expected a pair [x, y], found {value!r}")
    return _number(path, value[0], where), _number(path, value[1], where)


def read_crops(path: os.PathLike | str) -> dict[str, CropInfo]:
    """``crops.json`` as face name (``"afw/1051618982_1"``, no suffix) -> :class:`CropInfo`."""
    path = Path(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8", errors="replace"))
    except json.JSONDecodeError as error:
        raise DatasetFormatError(path, f"expected JSON: {error.msg}", line=error.lineno) from None
    if not isinstance(document, dict):
        raise DatasetFormatError(path, "expected an object of image name -> crop record")
    crops = {}
    for key, record in document.items():
        if not isinstance(record, dict):
            raise DatasetFormatError(path, f"{key}: expected an object, found {record!r}")
        missing = {"source_size", "scale", "offset", "side_in_source"} - set(record)
        if missing:
            raise DatasetFormatError(path, f"{key}: missing {sorted(missing)}")
        width, height = _pair(path, record["source_size"], f"{key}.source_size")
        scale = _number(path, record["scale"], f"{key}.scale")
        if scale <= 0 or width <= 0 or height <= 0:
            raise DatasetFormatError(path, f"{key}: expected positive scale and source size")
        crops[posixpath.splitext(key)[0]] = CropInfo(
            source_size=(int(width), int(height)),
            scale=scale,
            offset=_pair(path, record["offset"], f"{key}.offset"),
            side_in_source=_number(path, record["side_in_source"], f"{key}.side_in_source"),
        )
    return crops


def list_300w(
    root: os.PathLike | str | None = None, subsets: Sequence[str] = SUBSETS
) -> list[Face300W]:
    """Every ``.jpg`` of the chosen subsets, sorted by name, with its ``.pts`` and crop.

    A missing ``.pts`` is an error here; a face absent from ``crops.json`` gets ``crop=None``.
    """
    train = w300_root(root) / "train"
    crops_path = train / CROPS_FILE
    crops = read_crops(crops_path) if crops_path.is_file() else {}
    faces = []
    for subset in subsets:
        folder = train / subset
        if not folder.is_dir():
            raise DataNotFoundError(f"300-W subset folder not found: {folder}")
        for image_path in sorted(folder.glob("*.jpg")):
            pts_path = image_path.with_suffix(".pts")
            if not pts_path.is_file():
                raise DatasetFormatError(pts_path, f"expected the landmarks of {image_path.name}")
            name = f"{subset}/{image_path.stem}"
            faces.append(Face300W(name, subset, image_path, pts_path, crops.get(name)))
    return sorted(faces, key=lambda face: face.name)


def load_landmarks(face: Face300W) -> np.ndarray:
    """The face's 68 points, ``(68, 2)`` float32, x,y pixels of its (cropped) image."""
    return read_pts(face.pts_path, n_points=N_LANDMARKS)


def photo_id(face: Face300W | str) -> str:
    """The original photo a face was cut from: the name without its ``_<k>`` face number.

    AFW lists a photo with several faces once per face (``afw/111076519_1``, ``_2``). HELEN
    ``<id>_<k>`` names are separate crops around the faces of one Flickr photo, so they
    share a photo too. Names without ``_<k>`` are their own photo.
    """
    name = face.name if isinstance(face, Face300W) else face
    subset, _, stem = name.rpartition("/")
    match = _FACE_STEM.fullmatch(stem)
    photo = match.group("photo") if match else stem
    return f"{subset}/{photo}" if subset else photo


def _in_validation(photo: str, val_fraction: float, seed: int) -> bool:
    digest = hashlib.sha256(f"{seed}:{photo}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64 < val_fraction


def split_300w(
    faces: Iterable[Face300W], val_fraction: float = 0.2, seed: int = 0
) -> tuple[list[Face300W], list[Face300W]]:
    """Split faces into (train, val) by photo, deterministically.

    Rule: a face goes to validation iff ``sha256(f"{seed}:{photo_id(face)}")``, its first 8
    bytes read as a big-endian integer and divided by 2**64, is below ``val_fraction``.
    So all faces of one photo land on the same side (no photo leaks across the split), the
    decision for a photo never depends on which other files exist (adding data does not
    reshuffle the split), and the validation share is ``val_fraction`` of photos on average,
    not exactly. Both lists keep the input order.
    """
    if not 0.0 <= val_fraction <= 1.0:
        raise ValueError(f"val_fraction must be in [0, 1], got {val_fraction}")
    train, val = [], []
    for face in faces:
        (val if _in_validation(photo_id(face), val_fraction, seed) else train).append(face)
    return train, val
