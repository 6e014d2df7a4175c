"""Build the int8/fp16/TFLite variants of the shipped landmark and identity models.

    python -m quantization build [--task landmarks identity] [--out-root edge/models] [--calib 256]

For each model:
1. Calibration faces: real, prepared by the device's code (``quantization.calibration``).
2. ONNX int8 (QDQ, uint8 activations, int8 per-channel weights) with each calibration method;
   the method is chosen on *selection* faces (training-side faces that neither calibrate nor are
   scored by the report): for landmarks the NME increase over fp32 on 300-W training faces, for
   identity the mean cosine between int8 and fp32 embeddings of CFP folds 1-8 faces.
3. A per-layer sensitivity pass: every weighted layer quantised alone, its damage measured the
   same way; if full int8 misses the selection budget, the most sensitive layers stay float
   (mixed precision), fewest first.
4. TFLite fp32, fp16 and int8 (litert-torch from the training checkpoint in training/checkpoints).
5. Identity variants: their own per-yaw device thresholds (``edge.calibrate``, CFP fold 9, FAR
   1e-3, with the landmark variant of the same runtime and precision).

Every file is written beside the fp32 model with its metadata (``<stem>.json``): checksum,
precision, calibration faces, method, the layers kept in float and why. The accuracy numbers
come from ``python -m quantization.report``, which scores the files on data they never saw.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from edge.runtime import load_model
from edge.runtime.meta import file_sha256, load_meta, save_meta
from edge.runtime.meta import variant_path as shipped_variant_path
from edge.shipped import SHIPPED_IDENTITY, SHIPPED_IDENTITY_MFN, SHIPPED_LANDMARKS
from quantization.calibration import calibration_batch, identity_faces, landmark_faces
from quantization.onnx_int8 import CALIBRATION_METHODS, OnnxInt8Builder, quantisable_nodes
from quantization.tflite import convert_tflite, tflite_meta, torch_graph

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "edge" / "models"
CHECKPOINTS = ROOT / "training" / "checkpoints"

# Selection budgets: half of the report's targets, so what passes here has room on unseen data.
LANDMARK_NME_BUDGET = 0.0005  # +0.05 NME points (report target +0.10 in every yaw bin)
IDENTITY_COSINE_BUDGET = 0.995  # mean int8-vs-fp32 cosine (report target 0.99)
MAX_FLOAT_LAYERS = 4


@dataclass(frozen=True)
class ModelSpec:
    task: str  # "landmarks" | "identity"
    fp32: Path  # shipped fp32 ONNX
    checkpoint: Path  # the training checkpoint it was exported from (TFLite converts from torch)

    @property
    def stem(self) -> str:
        return self.fp32.stem


# The shipped models (edge.shipped) and their training checkpoints (same stem): "identity" is the
# default identity model, "identity_mfn" the small MobileFaceNet that still ships beside it.
SPECS = {
    "landmarks": ModelSpec("landmarks", SHIPPED_LANDMARKS, CHECKPOINTS / f"{SHIPPED_LANDMARKS.stem}.pt"),
    "identity": ModelSpec("identity", SHIPPED_IDENTITY, CHECKPOINTS / f"{SHIPPED_IDENTITY.stem}.pt"),
    "identity_mfn": ModelSpec("identity", SHIPPED_IDENTITY_MFN, CHECKPOINTS / f"{SHIPPED_IDENTITY_MFN.stem}.pt"),
}


def variant_path(spec: ModelSpec, fmt: str, precision: str, out_dir: Path | None = None) -> Path:
    """A variant's file (``edge.runtime.meta.variant_path``), in ``out_dir`` or beside the fp32 model."""
    name = shipped_variant_path(spec.fp32, fmt, precision).name
    return Path(out_dir or spec.fp32.parent) / name


# ------------------------------------------------------------------ selection: damage vs fp32


class Selection:
    """Faces that neither calibrate nor are reported, and the damage score of a model on them
    (lower is better): landmarks NME increase over fp32, identity 1 - mean cosine to fp32."""

    def __init__(self, spec: ModelSpec, images: list, points: np.ndarray | None):
        self.spec, self.images, self.points = spec, images, points
        self.reference = self._outputs(load_model(spec.fp32))

    def _outputs(self, runner) -> np.ndarray:
        if self.spec.task == "landmarks":
            from edge.landmarks.landmarker import Landmarker

            return Landmarker(runner).predict_crops(self.images)
        from edge.core.faces import embed_batch

        return embed_batch(runner, self.images)

    def damage(self, runner) -> float:
        out = self._outputs(runner)
        if self.spec.task == "landmarks":
            from edge.metrics.landmarks import nme

            return float(nme(out, self.points).mean() - nme(self.reference, self.points).mean())
        return float(1.0 - np.mean(np.sum(out * self.reference, axis=1)))

    def passes(self, damage: float) -> bool:
        if self.spec.task == "landmarks":
            return damage <= LANDMARK_NME_BUDGET
        return 1.0 - damage >= IDENTITY_COSINE_BUDGET


def _load_with_meta(path: Path, meta) -> object:
    save_meta(dataclasses.replace(meta, sha256=file_sha256(path)), path.with_suffix(".json"))
    return load_model(path)


def faces_for(spec: ModelSpec, count: int, skip: int, seed: int = 0):
    meta = load_meta(spec.fp32.with_suffix(".json"))
    if spec.task == "landmarks":
        return landmark_faces(count, meta.width, seed=seed, skip=skip)
    from edge.geometry.align import alignment_from_meta

    return identity_faces(count, seed=seed, skip=skip, spec=alignment_from_meta(meta))


# ------------------------------------------------------------------ ONNX int8


def build_onnx_int8(spec: ModelSpec, calib_images: list, selection: Selection, out_dir: Path, work: Path) -> dict:
    meta = load_meta(spec.fp32.with_suffix(".json"))
    inputs = calibration_batch(calib_images, meta)
    builder = OnnxInt8Builder(spec.fp32, inputs, meta.input_name, work)
    int8_meta = dataclasses.replace(meta, precision="int8", accuracy={})
    methods = {}
    for method in tqdm(CALIBRATION_METHODS, desc=f"{spec.stem}: calibration methods"):
        path = builder.write(work / f"{method}.onnx", method)
        methods[method] = selection.damage(_load_with_meta(path, int8_meta))
    method = min(methods, key=methods.get)

    # Sensitivity: each weighted layer quantised alone, scored like the whole model.
    nodes = quantisable_nodes(builder.prepared)
    sensitivity = {}
    for node in tqdm(nodes, desc=f"{spec.stem}: per-layer sensitivity"):
        path = builder.write(work / "one.onnx", method, only_nodes=[node])
        sensitivity[node] = selection.damage(_load_with_meta(path, int8_meta))
    ranked = sorted(sensitivity, key=sensitivity.get, reverse=True)

    kept_float: list[str] = []
    damage = methods[method]
    tried = {0: damage}
    k = 0
    while not selection.passes(damage) and k < MAX_FLOAT_LAYERS:
        k = k + 1 if k < 2 else k * 2
        path = builder.write(work / "mixed.onnx", method, exclude_nodes=ranked[:k])
        damage = selection.damage(_load_with_meta(path, int8_meta))
        tried[k] = damage
    if selection.passes(damage) and k:
        kept_float = ranked[:k]
    elif k:  # mixed precision did not reach the budget either: ship full int8, say so
        damage = methods[method]

    out = variant_path(spec, "onnx", "int8", out_dir)
    builder.write(out, method, exclude_nodes=kept_float)
    record = {
        "tool": "onnxruntime.quantization.quantize_static (QDQ, per-channel)",
        "activations": "uint8 (asymmetric, per tensor)",
        "weights": "int8 (symmetric, per channel)",
        "calibration_method": method,
        "calibration_faces": len(calib_images),
        "calibration_data": calibration_data(spec),
        "selection_damage_by_method": {k2: round(v, 6) for k2, v in methods.items()},
        "selection_metric": SELECTION_METRIC[spec.task],
        "selection_faces": len(selection.images),
        "layers_kept_float": kept_float,
        "mixed_precision_tried": {str(k2): round(v, 6) for k2, v in tried.items()},
        "most_sensitive_layers": {n: round(sensitivity[n], 6) for n in ranked[:8]},
        "selection_damage": round(damage, 6),
        "source_fp32_sha256": file_sha256(spec.fp32),
    }
    save_meta(
        dataclasses.replace(int8_meta, sha256=file_sha256(out), extra={**meta.extra, "quantization": record}),
        out.with_suffix(".json"),
    )
    return record


CALIBRATION_DATA = {
    "landmarks": "300-W training split (AFW + HELEN-train), test crop policy, seeded sample",
    "identity": "CFP folds 1-8 (frontal and profile), fiducial box, PIPNet landmarks, "
    "aligned as the model's metadata says",
}


def calibration_data(spec: ModelSpec) -> str:
    """Where the calibration faces came from; for identity with the model's own crop named."""
    text = CALIBRATION_DATA[spec.task]
    if spec.task == "identity":
        from edge.geometry.align import alignment_from_meta

        a = alignment_from_meta(load_meta(spec.fp32.with_suffix(".json")))
        text += f" ({a.template} at {a.size}x{a.size})"
    return text
SELECTION_METRIC = {
    "landmarks": "NME increase over fp32 on other 300-W training faces",
    "identity": "1 - mean cosine(int8, fp32) on other CFP folds 1-8 faces",
}


# ------------------------------------------------------------------ TFLite


def build_tflite(spec: ModelSpec, calib_images: list, selection: Selection, out_dir: Path) -> dict:
    fp32_meta = load_meta(spec.fp32.with_suffix(".json"))
    module, _ = torch_graph(spec.task, spec.checkpoint)
    nhwc = dataclasses.replace(fp32_meta, input_layout="NHWC")
    calibration = calibration_batch(calib_images, nhwc)
    records = {}
    for precision in tqdm(("fp32", "fp16", "int8"), desc=f"{spec.stem}: TFLite"):
        out = variant_path(spec, "tflite", precision, out_dir)
        convert_tflite(module, fp32_meta.width, out, precision, calibration if precision == "int8" else None)
        record = {
            "tool": "litert-torch " + _version("litert-torch"),
            "from": f"training/checkpoints/{spec.checkpoint.name} (sha256 {file_sha256(spec.checkpoint)[:16]}...)",
            "input": "NHWC" + (", int8 (scale and zero point in the file)" if precision == "int8" else ", float32"),
        }
        if precision == "int8":
            record.update(
                {
                    "method": "PT2E, symmetric int8 per-channel weights, int8 activations (min-max observers)",
                    "calibration_faces": len(calib_images),
                    "calibration_data": calibration_data(spec),
                }
            )
        if precision == "fp16":
            record["method"] = "float16 weights (ai-edge-quantizer float casting); computes in fp32 on the CPU"
        meta = tflite_meta(fp32_meta, out, precision, {"quantization": record})
        save_meta(meta, out.with_suffix(".json"))
        record["selection_damage"] = round(selection.damage(load_model(out)), 6)
        meta = dataclasses.replace(meta, extra={**meta.extra, "quantization": record})
        save_meta(meta, out.with_suffix(".json"))
        records[precision] = record
    return records


def _version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


def calibrate_thresholds(identity_file: Path, landmarks_dir: Path) -> None:
    """The device's per-yaw thresholds for one identity variant (``edge.tools.calibrate`` on CFP fold 9,
    FAR 1e-3), with the landmark variant of the same runtime and precision when it exists, as the
    device would run them together; written into the variant's own metadata."""
    from edge.tools.calibrate import main as calibrate

    meta = load_meta(identity_file.with_suffix(".json"))
    landmarks = shipped_variant_path(SPECS["landmarks"].fp32, meta.format, meta.precision).name
    landmark_file = landmarks_dir / landmarks
    args = ["--model", str(identity_file), "--folds", "9", "--far", "1e-3", "--threads", "1"]
    if landmark_file.exists():
        args += ["--landmark-model", str(landmark_file)]
    if calibrate(args) != 0:
        raise ValueError(f"{identity_file}: threshold calibration failed")


def build(task: str, out_dir: Path | None = None, calib: int = 256, select: int = 200, formats=("onnx", "tflite")):
    spec = SPECS[task]
    for path in (spec.fp32, spec.checkpoint):
        if not path.exists():
            raise FileNotFoundError(f"{path}: missing (the shipped model and its training checkpoint)")
    out_dir = Path(out_dir or spec.fp32.parent)
    calib_images = faces_for(spec, calib, skip=0)[0]
    sel_images, sel_aux = faces_for(spec, select, skip=calib)
    selection = Selection(spec, sel_images, sel_aux if task == "landmarks" else None)
    summary = {"task": task}
    with tempfile.TemporaryDirectory(prefix="poseface-quant-") as tmp:
        if "onnx" in formats:
            summary["onnx_int8"] = build_onnx_int8(spec, calib_images, selection, out_dir, Path(tmp))
        if "tflite" in formats:
            summary["tflite"] = build_tflite(spec, calib_images, selection, out_dir)
    if spec.task == "identity":  # the copied fp32 thresholds would not be this file's own
        landmarks_dir = out_dir.parent / "landmarks"
        landmarks_dir = landmarks_dir if landmarks_dir.is_dir() else MODELS / "landmarks"
        for fmt, precision in (("onnx", "int8"), ("tflite", "fp32"), ("tflite", "fp16"), ("tflite", "int8")):
            path = variant_path(spec, fmt, precision, out_dir)
            if path.exists():
                calibrate_thresholds(path, landmarks_dir)
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m quantization build", description=__doc__.split("\n\n")[0])
    # landmarks first: the identity variants' thresholds are calibrated with the landmark variants
    parser.add_argument("--task", nargs="+", choices=sorted(SPECS), default=["landmarks", "identity"])
    parser.add_argument("--out-root", type=Path, help="write variants to OUT_ROOT/<task>/ (default: beside fp32)")
    parser.add_argument("--calib", type=int, default=256, help="calibration faces per model (default 256)")
    parser.add_argument("--select", type=int, default=200, help="selection faces per model (default 200)")
    parser.add_argument("--formats", nargs="+", choices=["onnx", "tflite"], default=["onnx", "tflite"])
    parser.add_argument("--json", type=Path, help="write the build summary here")
    args = parser.parse_args(argv)
    summaries = []
    for task in args.task:
        out_dir = args.out_root / task if args.out_root else None
        try:
            summaries.append(build(task, out_dir, args.calib, args.select, tuple(args.formats)))
        except (FileNotFoundError, ValueError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    text = json.dumps(summaries, indent=1)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
