"""Export the identity path (trunk + identity projection) of a checkpoint to ONNX, opset 17.

The pose branch is training-only and is not in the graph. Output ``embedding`` (N, D) is not
normalised: the runtime L2-normalises it (``edge.core.faces.embed_batch``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from edge.runtime.meta import file_sha256, save_meta
from edge.runtime.runner import load_model
from training.identity.checkpoint import load_checkpoint

TOLERANCE = 1e-4


class _IdentityPath(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.trunk, self.id_proj, self.id_bn = net.trunk, net.id_proj, net.id_bn

    def forward(self, x):
        return self.id_bn(self.id_proj(self.trunk(x)))


def export_onnx(
    checkpoint: Path,
    out: Path,
    accuracy: dict | None = None,
    name: str | None = None,
    notes: str | None = None,
    flip: bool | None = None,
) -> Path:
    """``flip``: record ``extra.test_time_flip`` (None leaves it out: the runtime's default, off)."""
    from training.nn.dlib_resnet import fused_copy

    net, meta, _ = load_checkpoint(checkpoint)
    graph = fused_copy(_IdentityPath(net)).eval()  # dlib's affine layers folded into its convs
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.onnx")
    size = meta.input_size[0]
    torch.onnx.export(
        graph,
        (torch.zeros(1, 3, size, size),),
        str(tmp),
        input_names=[meta.input_name],
        output_names=list(meta.output_names),
        dynamic_axes={meta.input_name: {0: "batch"}, meta.output_names[0]: {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    tmp.replace(out)
    extra = dict(meta.extra)
    if notes:
        extra["accuracy_notes"] = notes
    if flip is not None:
        extra["test_time_flip"] = bool(flip)
    extra["parameters"] = int(sum(p.numel() for p in graph.parameters()))
    origin, licence = f"poseface-edge training/identity, checkpoint {Path(checkpoint).name}", "Apache-2.0"
    pretrained = extra.get("pretrained")
    if isinstance(pretrained, dict):
        origin += f"; starts from {pretrained.get('origin')} (sha256 {pretrained.get('sha256')})"
        licence = f"Apache-2.0; the pretrained weights it starts from: {pretrained.get('licence')}"
    meta = dataclasses.replace(
        meta,
        name=name or out.stem,
        sha256=file_sha256(out),
        accuracy=dict(accuracy or {}),
        origin=origin,
        licence=licence,
        extra=extra,
    )
    save_meta(meta, out.with_suffix(".json"))
    check_export(graph, out)
    return out


def check_export(graph: torch.nn.Module, path: Path, batch: int = 3) -> float:
    """Max |onnxruntime - torch| on random input, relative to the output's scale (at least 1);
    raises above TOLERANCE."""
    graph.eval()
    runner = load_model(path, threads=1)
    w, h = runner.meta.input_size
    x = np.random.default_rng(0).normal(0, 1, (batch, 3, h, w)).astype(np.float32)
    got = runner.run(x)[runner.meta.output_names[0]]
    with torch.no_grad():
        want = graph(torch.from_numpy(x)).numpy()
    err = float(np.abs(got - want).max()) / max(1.0, float(np.abs(want).max()))
    if err > TOLERANCE:
        raise RuntimeError(f"{path}: ONNX output differs from torch by {err:.2e} (> {TOLERANCE:g})")
    return err
