"""CFP (Celebrities in Frontal-Profile): photos, fiducials and the 10-fold protocol.

Layout under the CFP folder (``<data root>/cfp``)::

    Data/Images/<id:03d>/<frontal|profile>/<nn:02d>.jpg
    Data/Fiducials/<id:03d>/<frontal|profile>/<nn:02d>.txt    30 lines "x,y" (pixels)
    Protocol/Pair_list_F.txt, Pair_list_P.txt                  "<index> <path>" lines
    Protocol/Split/<FF|FP>/<fold:02d>/{same,diff}.txt           "i,j" lines (1-based)

Fold k holds identities 50(k-1)+1 .. 50k (:func:`fold_identities`). Which folds exist is read
from disk (:func:`available_folds`): a copy may lack some (ours has no fold 10).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from edge.datasets.root import DataNotFoundError, DatasetFormatError, require_data_root

CFP_FOLD_SIZE = 50
N_FIDUCIALS = 30
VIEWS = ("frontal", "profile")
PROTOCOLS = ("FF", "FP")
_NUMBERED = re.compile(r"\d+")


def fold_identities(fold: int) -> range:
    """The identities of protocol fold ``fold`` (1-based): 50(fold-1)+1 .. 50*fold."""
    return range(CFP_FOLD_SIZE * (fold - 1) + 1, CFP_FOLD_SIZE * fold + 1)


def fold_of(identity: int) -> int:
    """The protocol fold holding ``identity`` (the inverse of :func:`fold_identities`)."""
    return (int(identity) - 1) // CFP_FOLD_SIZE + 1


@dataclass(frozen=True)
class CfpPhoto:
    """One CFP photo; ``view`` is "frontal" or "profile", ``number`` its 1-based index."""

    identity: int
    view: str
    number: int
    image_path: Path
    fiducials_path: Path


@dataclass(frozen=True)
class CfpFold:
    """One protocol fold: ``same`` and ``diff`` are ``(n, 2)`` int64 1-based pair-list indices.

    Column 0 indexes the frontal (F) list; column 1 the F list for "FF", the P list for "FP".
    """

    protocol: str
    fold: int
    same: np.ndarray
    diff: np.ndarray


def cfp_root(root: os.PathLike | str | None = None) -> Path:
    """The CFP folder (holding ``Data/`` and ``Protocol/``): ``root``, or ``<data root>/cfp``."""
    path = require_data_root("cfp") if root is None else Path(root)
    if not path.is_dir():
        raise DataNotFoundError(f"CFP folder not found: {path}")
    return path


def cfp_photos(
    root: os.PathLike | str | None = None,
    identities: Iterable[int] | None = None,
    views: Iterable[str] = VIEWS,
) -> list[CfpPhoto]:
    """Photos whose image exists, sorted by (identity, view, number).

    ``identities`` limits the people (e.g. ``fold_identities(3)``); ``None`` means all present.
    """
    data = cfp_root(root) / "Data"
    images, fiducials = data / "Images", data / "Fiducials"
    if not images.is_dir():
        raise DataNotFoundError(f"CFP image folder not found: {images}")
    views = tuple(views)
    unknown = set(views) - set(VIEWS)
    if unknown:
        raise ValueError(f"views must be among {VIEWS}, got {sorted(unknown)}")
    wanted = None if identities is None else set(identities)

    photos = []
    for person in images.iterdir():
        if not (person.is_dir() and _NUMBERED.fullmatch(person.name)):
            continue
        identity = int(person.name)
        if wanted is not None and identity not in wanted:
            continue
        for view in views:
            for image_path in (person / view).glob("*.jpg"):
                if not _NUMBERED.fullmatch(image_path.stem):
                    continue
                fiducials_path = fiducials / person.name / view / f"{image_path.stem}.txt"
                photos.append(
                    CfpPhoto(identity, view, int(image_path.stem), image_path, fiducials_path)
                )
    return sorted(photos, key=lambda p: (p.identity, VIEWS.index(p.view), p.number))


def read_fiducials(path: os.PathLike | str) -> np.ndarray:
    """The 30 hand-marked points of one photo: ``(30, 2)`` float32, x,y pixels.

    Points may lie slightly outside the photo (one real file has x = -3.78).
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetFormatError(path, "no such fiducials file")
    points = []
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    for line_no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        fields = line.split(",")
        try:
            if len(fields) != 2:
                raise ValueError
            x, y = float(fields[0]), float(fields[1])
        except ValueError:
            raise DatasetFormatError(
                path, f"expected a point 'x,y', found {line.strip()!r}", line=line_no
            ) from None
        if not (np.isfinite(x) and np.isfinite(y)):
            raise DatasetFormatError(
                path, f"expected finite x,y, found {line.strip()!r}", line=line_no
            )
        points.append((x, y))
    if len(points) != N_FIDUCIALS:
        raise DatasetFormatError(path, f"expected {N_FIDUCIALS} points, found {len(points)}")
    return np.asarray(points, dtype=np.float32)


def fiducial_box(points: np.ndarray) -> np.ndarray:
    """Tight box around points: ``(4,)`` float32 ``[x1, y1, x2, y2]`` pixels (NaN ignored)."""
    points = np.asarray(points, dtype=np.float32)
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"points must have shape (n, 2), got {points.shape}")
    finite = points[np.isfinite(points).all(axis=1)]
    if len(finite) == 0:
        raise ValueError("no finite point to box")
    return np.concatenate([finite.min(axis=0), finite.max(axis=0)]).astype(np.float32)


def read_pair_list(path: os.PathLike | str) -> dict[int, Path]:
    """``Pair_list_{F,P}.txt``: 1-based index -> absolute image path.

    Paths in the file are relative to the list's own folder (``../Data/Images/...``).
    Entries are returned whether or not the image exists (the held-back fold has none).
    """
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(f"CFP pair list not found: {path}")
    base = path.parent.absolute()
    entries: dict[int, Path] = {}
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    for line_no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        fields = line.split(maxsplit=1)
        if len(fields) != 2 or not fields[0].isdigit():
            raise DatasetFormatError(
                path, f"expected '<index> <path>', found {line.strip()!r}", line=line_no
            )
        index = int(fields[0])
        if index in entries:
            raise DatasetFormatError(path, f"index {index} appears twice", line=line_no)
        entries[index] = Path(os.path.normpath(base / fields[1].strip()))
    return entries


def _split_dir(root: os.PathLike | str | None, protocol: str) -> Path:
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    return cfp_root(root) / "Protocol" / "Split" / protocol


def _read_index_pairs(path: Path) -> np.ndarray:
    if not path.is_file():
        raise DataNotFoundError(f"CFP protocol file not found: {path}")
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    pairs = np.empty((len(lines), 2), dtype=np.int64)
    # No blank lines inside, so row r is line r + 1 and later errors can name the line.
    for row, line in enumerate(lines):
        fields = [field.strip() for field in line.split(",")]
        if len(fields) != 2 or not all(field.isdigit() and int(field) > 0 for field in fields):
            raise DatasetFormatError(
                path, f"expected 'i,j' (two 1-based indices), found {line.strip()!r}", line=row + 1
            )
        pairs[row] = int(fields[0]), int(fields[1])
    return pairs


def read_fold(root: os.PathLike | str | None, protocol: str, fold: int) -> CfpFold:
    """Pairs of one fold of protocol "FF" or "FP" (1-based indices into the pair lists)."""
    folder = _split_dir(root, protocol) / f"{fold:02d}"
    if not folder.is_dir():
        raise DataNotFoundError(f"CFP {protocol} fold {fold} not found: {folder}")
    return CfpFold(
        protocol=protocol,
        fold=fold,
        same=_read_index_pairs(folder / "same.txt"),
        diff=_read_index_pairs(folder / "diff.txt"),
    )


def available_folds(root: os.PathLike | str | None = None, protocol: str = "FP") -> list[int]:
    """Fold numbers present on disk for ``protocol`` (both same.txt and diff.txt), sorted."""
    split = _split_dir(root, protocol)
    if not split.is_dir():
        return []
    return sorted(
        int(folder.name)
        for folder in split.iterdir()
        if _NUMBERED.fullmatch(folder.name)
        and (folder / "same.txt").is_file()
        and (folder / "diff.txt").is_file()
    )


def absent_folds(root: os.PathLike | str | None, folds: Iterable[int], protocols: Iterable[str] = ("FP",)) -> list[int]:
    """Those of ``folds`` that are not on disk for every one of ``protocols``, in the order given."""
    have = set.intersection(*(set(available_folds(root, p)) for p in protocols))
    return [f for f in folds if f not in have]


def fold_pairs(
    root: os.PathLike | str | None, protocol: str, fold: int
) -> list[tuple[Path, Path, bool]]:
    """The fold's pairs as (first image, second image, same person), same pairs first.

    The first index is looked up in the F list; the second in the F list for "FF" and the P
    list for "FP". An index missing from its list, or naming an image that is not on disk,
    is an error naming the split file and line.
    """
    split_dir = _split_dir(root, protocol) / f"{fold:02d}"
    protocol_dir = cfp_root(root) / "Protocol"
    frontal = read_pair_list(protocol_dir / "Pair_list_F.txt")
    second_list = frontal if protocol == "FF" else read_pair_list(protocol_dir / "Pair_list_P.txt")
    record = read_fold(root, protocol, fold)

    result = []
    for kind, pairs in (("same", record.same), ("diff", record.diff)):
        for row, (i, j) in enumerate(pairs):
            where = (split_dir / f"{kind}.txt", row + 1)
            first = _resolve(frontal, int(i), "F", where)
            second = _resolve(second_list, int(j), "F" if protocol == "FF" else "P", where)
            result.append((first, second, kind == "same"))
    return result


def _resolve(entries: dict[int, Path], index: int, list_name: str, where: tuple[Path, int]) -> Path:
    path = entries.get(index)
    if path is None:
        raise DatasetFormatError(
            where[0], f"index {index} is not in Pair_list_{list_name}.txt", line=where[1]
        )
    if not path.is_file():
        raise DatasetFormatError(
            where[0],
            f"index {index} of Pair_list_{list_name}.txt names a missing image {path}",
            line=where[1],
        )
    return path


def parse_folds(text: str) -> list[int]:
    """ "1-9", "3", "1,4,7-9" -> sorted fold numbers."""
    folds: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        try:
            if "-" in part:
                first, last = (int(v) for v in part.split("-", 1))
                if first > last:
                    raise ValueError
                folds.update(range(first, last + 1))
            else:
                folds.add(int(part))
        except ValueError:
            raise ValueError(f"--folds: expected fold numbers like '1-9' or '1,3,5-7', got {text!r}") from None
    if not folds or min(folds) < 1:
        raise ValueError(f"--folds: expected positive fold numbers, got {text!r}")
    return sorted(folds)
