"""iBUG ``.pts`` landmark files (300-W, menpo, and our own pseudo-labels).

Layout, one item a line::

    version: 1
    n_points: 68
    {
    x y          <- n_points lines, pixels, origin at the top-left pixel of the image
    }

Points come back as an ``(n_points, 2)`` float32 array, columns x then y.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import numpy as np

from edge.datasets.root import DatasetFormatError


def _header_value(path: Path, lines: list[str], index: int, key: str) -> str:
    if index >= len(lines):
        raise DatasetFormatError(path, f"file ends before the '{key}: ...' header line", line=index + 1)
    name, sep, value = lines[index].partition(":")
    if not sep or name.strip() != key:
        raise DatasetFormatError(path, f"expected '{key}: ...' header, found {lines[index].strip()!r}", line=index + 1)
    return value.strip()


def _expect_line(path: Path, lines: list[str], index: int, text: str) -> None:
    if index >= len(lines):
        raise DatasetFormatError(path, f"file ends where {text!r} was expected", line=index + 1)
    if lines[index].strip() != text:
        raise DatasetFormatError(path, f"expected {text!r}, found {lines[index].strip()!r}", line=index + 1)


def _parse_point(path: Path, line: str, line_no: int) -> tuple[float, float]:
    fields = line.split()
    if len(fields) != 2:
        raise DatasetFormatError(path, f"expected a point 'x y' (2 numbers), found {line.strip()!r}", line=line_no)
    try:
        x, y = float(fields[0]), float(fields[1])
    except ValueError:
        raise DatasetFormatError(
            path, f"expected a point 'x y' (2 numbers), found {line.strip()!r}", line=line_no
        ) from None
    if not (math.isfinite(x) and math.isfinite(y)):
        raise DatasetFormatError(path, f"expected finite coordinates, found {line.strip()!r}", line=line_no)
    return x, y


def read_pts(path: os.PathLike | str, n_points: int | None = 68) -> np.ndarray:
    """Landmarks of one ``.pts`` file: ``(n, 2)`` float32, x then y, in pixels.

    ``n_points`` is the count the caller needs (the header must agree); ``None`` accepts
    whatever the header declares. Blank lines after the closing brace are tolerated.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DatasetFormatError(path, "no such .pts file") from None
    except UnicodeDecodeError:
        raise DatasetFormatError(path, "expected a text .pts file, found binary data") from None
    lines = text.splitlines()

    version = _header_value(path, lines, 0, "version")
    if version != "1":
        raise DatasetFormatError(path, f"expected 'version: 1', found version {version!r}", line=1)
    declared_text = _header_value(path, lines, 1, "n_points")
    try:
        declared = int(declared_text)
    except ValueError:
        raise DatasetFormatError(path, f"expected an integer point count, found {declared_text!r}", line=2) from None
    if declared < 0:
        raise DatasetFormatError(path, f"expected a non-negative point count, found {declared}", line=2)
    if n_points is not None and declared != n_points:
        raise DatasetFormatError(path, f"expected n_points: {n_points}, found {declared}", line=2)
    if declared > len(lines):  # more points than the file has lines: refuse before allocating them
        raise DatasetFormatError(
            path, f"n_points: {declared} declared, but the file has only {len(lines)} lines", line=2
        )
    _expect_line(path, lines, 2, "{")

    points = np.empty((declared, 2), dtype=np.float32)
    for k in range(declared):
        index = 3 + k
        if index >= len(lines) or lines[index].strip() == "}":
            raise DatasetFormatError(
                path,
                f"expected {declared} points, found {k} before the closing brace or end of file",
                line=index + 1,
            )
        points[k] = _parse_point(path, lines[index], index + 1)

    _expect_line(path, lines, 3 + declared, "}")
    for index in range(4 + declared, len(lines)):
        if lines[index].strip():
            raise DatasetFormatError(
                path,
                f"expected nothing after the closing brace, found {lines[index].strip()!r}",
                line=index + 1,
            )
    return points


def write_pts(path: os.PathLike | str, points: np.ndarray) -> None:
    """Write ``(n, 2)`` x,y pixel points as a ``.pts`` file, atomically.

    The file appears complete or not at all (temporary file in the same folder, then
    ``os.replace``), so a crash while writing pseudo-labels never leaves a torn file
    that a later run would trust.
    """
    path = Path(path)
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"points must have shape (n, 2) (x, y), got {points.shape}")
    if not np.all(np.isfinite(points)):
        raise ValueError("points must be finite; .pts has no way to mark a missing point")
    body = "".join(f"{x:.3f} {y:.3f}\n" for x, y in points)
    text = f"version: 1\nn_points: {len(points)}\n{{\n{body}}}\n"

    # mkstemp makes the file 0600; keep the old file's mode, else an ordinary 0644.
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, mode)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
