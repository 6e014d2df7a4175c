"""AT&T (ORL) faces: ``s<subject>/<number>.pgm``, 40 subjects x 10 grayscale 92x112 photos."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from edge.datasets.root import DataNotFoundError, require_data_root

_SUBJECT_DIR = re.compile(r"s(\d+)")
_PHOTO_STEM = re.compile(r"\d+")


@dataclass(frozen=True)
class OrlPhoto:
    """One ORL photo: ``subject`` 1..40, ``number`` 1..10."""

    subject: int
    number: int
    path: Path


def orl_root(root: os.PathLike | str | None = None) -> Path:
    """The ORL folder (holding ``s1/`` .. ``s40/``): ``root``, or ``<data root>/orl``."""
    path = require_data_root("orl") if root is None else Path(root)
    if not path.is_dir():
        raise DataNotFoundError(f"ORL folder not found: {path}")
    return path


def orl_photos(root: os.PathLike | str | None = None) -> list[OrlPhoto]:
    """Every ``s<k>/<n>.pgm``, sorted numerically by (subject, number); other files ignored."""
    photos = []
    for folder in orl_root(root).iterdir():
        match = _SUBJECT_DIR.fullmatch(folder.name)
        if not (match and folder.is_dir()):
            continue
        for path in folder.glob("*.pgm"):
            if _PHOTO_STEM.fullmatch(path.stem):
                photos.append(OrlPhoto(int(match.group(1)), int(path.stem), path))
    return sorted(photos, key=lambda photo: (photo.subject, photo.number))
