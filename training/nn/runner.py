"""A torch model behind the edge runner interface, so training evaluates with the device's code."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from edge.runtime.meta import ModelMeta
from edge.runtime.runner import ModelRunner


class TorchRunner(ModelRunner):
    """Runs ``model`` in eval mode without gradients (restoring its mode after); its outputs, one
    tensor or a tuple of them, come back in ``meta.output_names`` order."""

    def __init__(self, model: torch.nn.Module, meta: ModelMeta):
        super().__init__(Path(f"<torch {meta.name}>"), meta)
        self.model = model

    def _run(self, batch: np.ndarray) -> list[np.ndarray]:
        was_training = self.model.training
        self.model.eval()
        with torch.no_grad():
            outs = self.model(torch.from_numpy(batch))
        self.model.train(was_training)
        if isinstance(outs, torch.Tensor):
            outs = (outs,)
        return [o.float().numpy() for o in outs]
