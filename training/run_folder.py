"""What a training run writes to its folder, shared by every trainer (landmarks with its STC
rounds, identity, the student): checkpoints saved atomically and read back on the CPU, JSON
files written atomically, and the metrics log (``metrics.jsonl``, one JSON object an epoch).

Under torchrun rank 0 alone writes these (:mod:`training.runtime`); a reader, another process
or a resumed run never sees half a file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

# torch is imported where a checkpoint is saved or loaded, so the JSON helpers serve torch-free
# tools too (training.geometry.fit_mean_face3d).


def atomic_save(obj, path: Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename: a reader never sees half a file."""
    import torch

    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def write_json(path: Path, payload) -> None:
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1) + "\n")
    os.replace(tmp, path)


def load_state(path) -> dict:
    """A checkpoint, its tensors on the CPU whatever device wrote it (move the model afterwards)."""
    import torch

    return torch.load(path, map_location="cpu", weights_only=False)


def append_metrics(log_path: Path, row: dict) -> None:
    """One epoch's row appended to the run's metrics log (JSON lines)."""
    with open(log_path, "a") as fh:
        fh.write(json.dumps(row) + "\n")


def read_metrics(log_path: Path) -> list[dict]:
    """Every row of a metrics log, in order (blank lines skipped)."""
    return [json.loads(line) for line in Path(log_path).read_text().splitlines() if line.strip()]
