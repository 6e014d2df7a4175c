"""TFLite variants (fp32, fp16, full-integer int8) converted from the torch model with litert-torch.

- The converter is litert-torch (installs beside torch 2.13 without TensorFlow); onnx2tf would
  need TensorFlow, which this project does not install.
- Inputs are NHWC (``litert_torch.to_channel_last_io``): the interpreter's XNNPACK kernels are
  channels-last, and an NCHW input costs a transpose per frame. Outputs keep the torch layout.
- fp16: weights stored as float16 (ai-edge-quantizer float casting); the CPU computes in fp32,
  so it halves the file, not the time.
- int8: PT2E (litert-torch's quantizer: symmetric per-channel int8 weights, int8 activations,
  calibrated on the same real faces as ONNX int8). Inputs and outputs are int8 as well; the edge
  runner quantises inputs and dequantises outputs with the scale and zero point stored in the
  file. (ai-edge-quantizer's static int8 recipe gave the same graph but a larger error on a
  probe network, so PT2E is the path here.)
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Sequence

import numpy as np

os.environ.setdefault("LITERT_TORCH_SHOW_PROGRESS", "n")

TFLITE_PRECISIONS = ("fp32", "fp16", "int8")


def torch_graph(task: str, checkpoint: Path):
    """(module, metadata) of the deployed graph of a training checkpoint: the five raw PIPNet
    heads for landmarks (decoded in numpy by edge/), the identity path for identity."""
    if task == "landmarks":
        from training.landmarks.train import load_checkpoint
        from training.nn.dlib_resnet import fused_copy

        model, meta, _ = load_checkpoint(checkpoint)
        return fused_copy(model).eval(), meta  # a dlib trunk's affines folded (others: unchanged)
    if task == "identity":
        from training.identity.checkpoint import load_checkpoint
        from training.identity.export import _IdentityPath
        from training.nn.dlib_resnet import fused_copy

        net, meta, _ = load_checkpoint(checkpoint)
        return fused_copy(_IdentityPath(net)).eval(), meta
    raise ValueError(f"task: expected landmarks or identity, got {task!r}")


def _nhwc(module, size: int):
    import litert_torch
    import torch

    sample = (torch.zeros(1, size, size, 3),)
    return litert_torch.to_channel_last_io(module, args=[0]).eval(), sample


def convert_tflite(module, size: int, out: Path, precision: str, calibration: np.ndarray | None = None) -> Path:
    """Write ``out`` (.tflite, atomically). ``calibration``: (N, H, W, C) float32 model inputs
    (NHWC, already normalised), required for int8."""
    import litert_torch
    import torch

    if precision not in TFLITE_PRECISIONS:
        raise ValueError(f"precision: expected one of {', '.join(TFLITE_PRECISIONS)}, got {precision!r}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    part = out.with_name(out.name + ".part")
    graph, sample = _nhwc(module, size)
    if precision == "fp32":
        litert_torch.convert(graph, sample).export(str(part))
    elif precision == "fp16":
        from litert_torch.generative.quantize import quant_recipes

        litert_torch.convert(graph, sample, quant_config=quant_recipes.full_fp16_recipe()).export(str(part))
    else:
        if calibration is None or calibration.ndim != 4 or calibration.shape[1:] != (size, size, 3):
            got = None if calibration is None else calibration.shape
            raise ValueError(f"int8 TFLite needs NHWC calibration inputs (N, {size}, {size}, 3), got {got}")
        from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
        from litert_torch.quantize.quant_config import QuantConfig
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False))
        prepared = prepare_pt2e(torch.export.export(graph, sample).module(), quantizer)
        with torch.no_grad():
            for x in calibration:
                prepared(torch.from_numpy(np.ascontiguousarray(x[None])))
        quantised = convert_pt2e(prepared, fold_quantize=False)
        quantised.training = False
        litert_torch.convert(quantised, sample, quant_config=QuantConfig(pt2e_quantizer=quantizer)).export(str(part))
    os.replace(part, out)
    return out


def tflite_meta(fp32_meta, path: Path, precision: str, extra: dict):
    """Metadata of a converted file: the fp32 model's, with the file's own input name, NHWC
    layout, precision and checksum; outputs are matched by position (same order as torch)."""
    from edge.runtime.meta import file_sha256
    from edge.runtime.runner import _tflite_interpreter_class

    interpreter = _tflite_interpreter_class()(model_path=str(path), num_threads=1)
    input_name = interpreter.get_input_details()[0]["name"]
    return dataclasses.replace(
        fp32_meta,
        format="tflite",
        precision=precision,
        input_name=input_name,
        input_layout="NHWC",
        sha256=file_sha256(path),
        accuracy={},
        extra={**fp32_meta.extra, **extra},
    )


def max_output_error(reference: dict, got: dict, names: Sequence[str]) -> float:
    return max(float(np.abs(reference[n] - got[n]).max()) for n in names)
