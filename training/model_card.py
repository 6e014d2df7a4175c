"""What every model-card writer shares (landmark cards, identity cards): the card's section that
``python -m quantization.report --cards`` writes, and writing a card without dropping it.

The markers live on the training side because quantization imports training and never the
other way round.
"""

from __future__ import annotations

from pathlib import Path

# The section of a model card that ``python -m quantization.report --cards`` writes (the variants'
# numbers), between these two lines.
CARD_BEGIN = "<!-- quantization report: begin (written by python -m quantization.report --cards) -->"
CARD_END = "<!-- quantization report: end -->"


def write_card_text(out: Path, text: str) -> Path:
    """Write a card atomically, keeping the section ``python -m quantization.report --cards``
    wrote into an earlier version of it (the variants' numbers are not this writer's to drop)."""
    old = out.read_text() if out.exists() else ""
    if CARD_BEGIN in old and CARD_END in old:
        text = text.rstrip() + "\n\n" + old[old.index(CARD_BEGIN) : old.index(CARD_END) + len(CARD_END)] + "\n"
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(out)
    return out
