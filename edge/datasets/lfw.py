"""LFW: people folders and the View-2 verification pairs.

Layout under the LFW folder (``<data root>/lfw_gray``)::

    lfw/<Name>/<Name>_<NNNN>.jpg     photo NNNN (1-based, 4 digits) of one person
    pairs.txt                        View 2: header "<folds> <n>", then per fold n same
                                     lines "name i j" and n different lines "name1 i name2 j"

A header with a single number n (View 1's pairsDevTrain/Test.txt) reads as one fold.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.datasets.root import DataNotFoundError, DatasetFormatError, require_data_root


@dataclass(frozen=True)
class LfwPair:
    """One verification pair; ``fold`` is 1-based, paths are absolute."""

    fold: int
    first: Path
    second: Path
    same: bool


@dataclass(frozen=True)
class LfwPairs:
    """All pairs of a pairs file, in file order: per fold, its same pairs then its different."""

    n_folds: int
    pairs_per_class: int
    pairs: tuple[LfwPair, ...]

    def __len__(self) -> int:
        return len(self.pairs)

    @property
    def folds(self) -> np.ndarray:
        """``(n,)`` int64 fold number (1..n_folds) of each pair."""
        return np.fromiter(
            (pair.fold for pair in self.pairs), dtype=np.int64, count=len(self.pairs)
        )

    @property
    def same(self) -> np.ndarray:
        """``(n,)`` bool: the two photos show the same person."""
        return np.fromiter((pair.same for pair in self.pairs), dtype=bool, count=len(self.pairs))

    def fold(self, fold: int) -> list[LfwPair]:
        """The pairs of one fold (1-based)."""
        return [pair for pair in self.pairs if pair.fold == fold]


def lfw_root(root: os.PathLike | str | None = None) -> Path:
    """The LFW folder (with ``lfw/`` and ``pairs.txt``): ``root``, or ``<data root>/lfw_gray``."""
    path = require_data_root("lfw_gray") if root is None else Path(root)
    if not path.is_dir():
        raise DataNotFoundError(f"LFW folder not found: {path}")
    return path


def lfw_photo_path(images: Path, name: str, number: int) -> Path:
    """``<images>/<Name>/<Name>_<NNNN>.jpg``, the LFW naming rule."""
    return images / name / f"{name}_{number:04d}.jpg"


def _photo_number(path: Path, text: str, line_no: int) -> int:
    if not text.isdigit() or int(text) < 1:
        raise DatasetFormatError(
            path, f"expected a photo number >= 1, found {text!r}", line=line_no
        )
    return int(text)


def _read_header(path: Path, line: str) -> tuple[int, int]:
    fields = line.split()
    if not 1 <= len(fields) <= 2 or not all(field.isdigit() for field in fields):
        raise DatasetFormatError(
            path, f"expected a header '<folds> <pairs per class>', found {line.strip()!r}", line=1
        )
    return (1, int(fields[0])) if len(fields) == 1 else (int(fields[0]), int(fields[1]))


def read_lfw_pairs(path: os.PathLike | str, images: os.PathLike | str | None = None) -> LfwPairs:
    """Parse a LFW pairs file; photo paths are under ``images`` (default: ``lfw/`` beside it).

    The line count must match the header exactly; a short, long or malformed file is an
    error naming the line. Whether the photos exist is not checked here.
    """
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(f"LFW pairs file not found: {path}")
    images = path.parent.absolute() / "lfw" if images is None else Path(images)
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise DatasetFormatError(
            path, "expected a header '<folds> <pairs per class>', file is empty"
        )
    n_folds, per_class = _read_header(path, lines[0])
    expected_lines = 1 + n_folds * 2 * per_class
    if len(lines) < expected_lines:
        raise DatasetFormatError(
            path,
            f"header '{n_folds} {per_class}' promises {expected_lines - 1} pair lines, "
            f"file ends after {len(lines) - 1}",
            line=len(lines) + 1,
        )
    if len(lines) > expected_lines:
        raise DatasetFormatError(
            path,
            f"header '{n_folds} {per_class}' promises {expected_lines - 1} pair lines; "
            f"expected end of file, found {lines[expected_lines].strip()!r}",
            line=expected_lines + 1,
        )

    pairs = []
    for index, line in enumerate(lines[1:]):
        line_no = index + 2
        fold = index // (2 * per_class) + 1
        same = index % (2 * per_class) < per_class
        fields = line.split()
        if same and len(fields) == 3:
            name, i, j = fields
            first, second = (
                (name, _photo_number(path, i, line_no)),
                (name, _photo_number(path, j, line_no)),
            )
        elif not same and len(fields) == 4:
            first = (fields[0], _photo_number(path, fields[1], line_no))
            second = (fields[2], _photo_number(path, fields[3], line_no))
        else:
            shape = "'name i j' (same pair" if same else "'name1 i name2 j' (different pair"
            raise DatasetFormatError(
                path, f"expected {shape} of fold {fold}), found {line.strip()!r}", line=line_no
            )
        pairs.append(
            LfwPair(fold, lfw_photo_path(images, *first), lfw_photo_path(images, *second), same)
        )
    return LfwPairs(n_folds=n_folds, pairs_per_class=per_class, pairs=tuple(pairs))


def lfw_people(root: os.PathLike | str | None = None) -> dict[str, list[Path]]:
    """Person name -> that person's photos (sorted), for every folder under ``lfw/``."""
    images = lfw_root(root) / "lfw"
    if not images.is_dir():
        raise DataNotFoundError(f"LFW image folder not found: {images}")
    people = {}
    for person in sorted(images.iterdir()):
        if person.is_dir():
            photos = sorted(person.glob("*.jpg"))
            if photos:
                people[person.name] = photos
    return people
