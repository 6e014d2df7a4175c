"""The identity network from a recipe, and a trained one back from its checkpoint.

Below both the trainer (:mod:`training.identity.train`) and every reader of its checkpoints
(evaluation, export, reports, the student, quantization), so none of them imports the trainer
to load a model.
"""

from __future__ import annotations

from pathlib import Path

from edge.runtime.meta import ModelMeta, meta_from_dict
from training.config import from_dict
from training.identity.config import IdentityTrainConfig
from training.identity.model import IdentityNet
from training.run_folder import load_state


def build_net(cfg: IdentityTrainConfig, input_size: int = 112) -> IdentityNet:
    return IdentityNet(
        cfg.trunk,
        cfg.width,
        cfg.depth,
        cfg.embedding_dim,
        pose_dim=cfg.pose_dim,
        input_size=input_size,
        embedding_bn=cfg.embedding_bn,
    )


def load_checkpoint(path: Path) -> tuple[IdentityNet, ModelMeta, dict]:
    """The checkpoint's net on the CPU (whatever device trained it), in eval mode."""
    ckpt = load_state(path)
    cfg = from_dict(IdentityTrainConfig, ckpt["config"])
    net = build_net(cfg, int(ckpt["meta"]["input_size"][0]))
    net.load_state_dict(ckpt["model"])
    net.eval()
    return net, meta_from_dict(ckpt["meta"], str(path)), ckpt
