"""Export a trained PIPNet to ONNX (opset 17) with its metadata record beside it.

The graph outputs the five raw heads (``score``, ``off_x``, ``off_y``, ``nb_x``, ``nb_y``);
decoding happens outside the graph in numpy (edge.landmarks.pipnet_decode), which keeps the
graph free of ArgMax/Gather so int8 quantisation touches only convolutions. ``decoder="graph"``
instead appends the torch decoder and outputs ``landmarks`` (N, 68, 2) in input pixels, for
runtimes that prefer one output. The export is checked: onnxruntime's outputs must equal
torch's within 1e-4.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edge.runtime.meta import file_sha256, save_meta
from edge.runtime.runner import load_model
from training.landmarks.decode_torch import PipNetDecoder
from training.landmarks.train import load_checkpoint

TOLERANCE = 1e-4


class _WithDecoder(nn.Module):
    def __init__(self, model: nn.Module, decoder: PipNetDecoder):
        super().__init__()
        self.model, self.decoder = model, decoder

    def forward(self, x):
        return self.decoder(*self.model(x))


def export_onnx(
    checkpoint: Path,
    out: Path,
    decoder: str = "numpy",
    accuracy: dict | None = None,
    name: str | None = None,
    notes: str | None = None,
    refine: int | None = None,
) -> Path:
    """Write ``out`` (.onnx) and its metadata; ``accuracy`` holds measured numbers, ``notes`` how;
    ``refine``: the re-crops the device makes with this model (metadata ``extra.refine``)."""
    from training.nn.dlib_resnet import fused_copy

    model, meta, _ = load_checkpoint(checkpoint)
    model = fused_copy(model)  # a dlib trunk's affines folded into its convs (others: unchanged)
    size = meta.input_size[0]
    if decoder == "graph":
        net: nn.Module = _WithDecoder(model, PipNetDecoder(np.asarray(meta.extra["neighbours"]), meta.extra["stride"]))
        output_names: tuple[str, ...] = ("landmarks",)
    elif decoder == "numpy":
        net, output_names = model, tuple(meta.output_names)
    else:
        raise ValueError(f"decoder must be 'numpy' or 'graph', got {decoder!r}")
    net.eval()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.onnx")
    dummy = torch.zeros(1, 3, size, size)
    torch.onnx.export(
        net,
        (dummy,),
        str(tmp),
        input_names=[meta.input_name],
        output_names=list(output_names),
        dynamic_axes={meta.input_name: {0: "batch"}, **{k: {0: "batch"} for k in output_names}},
        opset_version=17,
        dynamo=False,
    )
    tmp.replace(out)
    extra = dict(meta.extra)
    extra["decoder"] = decoder
    if refine is not None:
        if refine < 0:
            raise ValueError(f"refine must be >= 0, got {refine}")
        extra["refine"] = int(refine)
    if notes:
        extra["accuracy_notes"] = notes
    meta = dataclasses.replace(
        meta,
        name=name or out.stem,
        output_names=output_names,
        sha256=file_sha256(out),
        accuracy=dict(accuracy or {}),
        origin=f"poseface-edge training/landmarks, checkpoint {Path(checkpoint).name}",
        licence="Apache-2.0",
        extra=extra,
    )
    save_meta(meta, out.with_suffix(".json"))
    check_export(net, out)
    return out


def check_export(net: nn.Module, path: Path, batch: int = 2) -> float:
    """Max |onnxruntime - torch| on random input; raises if above TOLERANCE.

    For a graph with the decoder inside, landmarks whose two best score cells are within
    1e-3 are left out: there float rounding may legitimately pick the other cell.
    """
    net.eval()  # the exporter restores the top module's mode recursively: a fresh wrapper is in train mode
    runner = load_model(path, threads=1)
    size = runner.meta.input_size
    x = np.random.default_rng(0).normal(0, 1, (batch, 3, size[1], size[0])).astype(np.float32)
    got = runner.run(x)
    with torch.no_grad():
        want = net(torch.from_numpy(x))
        if isinstance(net, _WithDecoder):
            score = net.model(torch.from_numpy(x))[0].flatten(2)
            top2 = score.topk(2, dim=2).values
            clear = ((top2[..., 0] - top2[..., 1]) > 1e-3).numpy()  # (N, L)
    want = want if isinstance(want, (tuple, list)) else (want,)
    diffs = []
    for k, w in zip(runner.meta.output_names, want):
        d = np.abs(got[k] - w.numpy())
        diffs.append(float(d[clear].max()) if isinstance(net, _WithDecoder) else float(d.max()))
    worst = max(diffs)
    if worst > TOLERANCE:
        raise RuntimeError(f"{path}: ONNX output differs from torch by {worst:.2e} (> {TOLERANCE})")
    return worst
