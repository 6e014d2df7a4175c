"""How a wrong config is said, for the schema, the loader and the profile lookup alike.

:class:`ConfigError` is what a user sees: one line ``FILE: key.path: expected ..., got ...``
naming the file the bad value came from. ``_FieldError`` is raised while checking, before it is
known which layer (file, profile, command line) the key came from; the loader turns it into a
``ConfigError``. ``_show`` words a bad value for the message. The path tests never raise, so a
hostile name (too long for the file system, a NUL byte, ``~nobody``) is a wrong value, not a crash.

Names with a leading underscore are shared by the modules of :mod:`edge.app.config` only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edge.oneline import one_line


class ConfigError(ValueError):
    """A config value is wrong; ``str(err)`` is one line: ``FILE: key.path: expected ..., got ...``."""

    def __init__(self, file: str, key: str, expected: str, got: str):
        self.file, self.key, self.expected, self.got = file, key, expected, got
        where = f"{file}: {key}: " if key else f"{file}: "
        super().__init__(one_line(f"{where}expected {expected}, got {got}"))


class _FieldError(Exception):
    """Raised while validating, before we know which file the key came from."""

    def __init__(self, key: str, expected: str, got: Any, related: tuple[str, ...] = ()):
        super().__init__(key)
        self.key, self.expected, self.got = key, expected, got
        # Other keys that make this one wrong (source.type for source.uri): the error is blamed
        # on whichever layer spoke last among them, the one that broke the combination.
        self.related = related


_NOTHING = object()  # "the key was absent", for messages: got nothing


class _Said(str):
    """A 'got' already worded for the message (shown as is, not repr'd)."""


def _show(value: Any) -> str:
    if value is _NOTHING:
        return "nothing"
    if isinstance(value, _Said):
        return str(value)
    if isinstance(value, dict):
        return "a table"
    text = repr(str(value)) if isinstance(value, Path) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _expand_user(path: Path, key: str) -> Path:
    try:
        return path.expanduser()
    except RuntimeError:  # ~someone who does not exist here
        raise _FieldError(key, "a path whose ~user exists", str(path)) from None


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):  # a name too long for the file system, a NUL byte
        return False


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except (OSError, ValueError):
        return False
