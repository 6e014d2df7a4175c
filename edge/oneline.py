"""One-line error messages: a value quoted into a message must not break it over lines."""

from __future__ import annotations

# Every character str.splitlines() breaks at, shown as its escape instead.
_BREAKS = {c: repr(chr(c))[1:-1] for c in (0x0A, 0x0B, 0x0C, 0x0D, 0x1C, 0x1D, 0x1E, 0x85, 0x2028, 0x2029)}


def one_line(text: str) -> str:
    """``text`` with every line break escaped (``\\n``, ``\\u2028``...): a message stays one line
    whatever file name, key or value it quotes."""
    return str(text).translate(_BREAKS)
