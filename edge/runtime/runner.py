"""One model runner interface over ONNX Runtime and the TFLite interpreter.

``load_model("x.onnx" | "x.tflite")`` reads the metadata beside the file, checks the file's
sha256 against it, opens the model with the runtime its suffix names, and checks that the
model's input and outputs agree with the metadata, so a mismatch fails at load time with a
message naming the file rather than later with a wrong answer.

Every runner takes a float32 batch in the layout of ``meta.input_layout`` (see
:func:`edge.runtime.preprocess.preprocess`) and returns float32 outputs, keyed and ordered
by ``meta.output_names``. Integer (int8/uint8/int16) TFLite inputs are quantised with the
input tensor's own scale and zero point, and integer outputs dequantised with theirs. ONNX
int8 models are expected in QDQ form (float in, float out), so they need nothing special.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from edge.runtime.meta import ModelMeta, load_meta, meta_path_for, verify_sha256


class ModelFileError(ValueError):
    """A model file is missing, unreadable, corrupt, or disagrees with its metadata."""


class RuntimeMissingError(ImportError):
    """The inference runtime a model needs is not installed."""


# ----------------------------------------------------------------------------- quantisation


def _round_half_away(values: np.ndarray) -> np.ndarray:
    # TFLite's quantize kernels round half away from zero (std::round); numpy rounds half to even.
    return np.sign(values) * np.floor(np.abs(values) + 0.5)


def _broadcast_params(scale, zero_point, ndim: int, axis: int) -> tuple[np.ndarray, np.ndarray]:
    scale = np.asarray(scale, dtype=np.float64).reshape(-1)
    zero_point = np.asarray(zero_point, dtype=np.float64).reshape(-1)
    if scale.size > 1:
        shape = [1] * ndim
        shape[axis] = scale.size
        scale = scale.reshape(shape)
        zero_point = np.broadcast_to(zero_point, (scale.size,)).reshape(shape)
    return scale, zero_point


def quantize(values: np.ndarray, scale, zero_point, dtype, axis: int = 0) -> np.ndarray:
    """float -> integer ``dtype``: ``clip(round(values / scale) + zero_point)``.

    ``scale``/``zero_point`` are scalars, or 1-D per-channel arrays along ``axis``.
    """
    values = np.asarray(values, dtype=np.float64)
    scale, zero_point = _broadcast_params(scale, zero_point, values.ndim, axis)
    if np.any(scale <= 0):
        raise ValueError(f"quantize: scale must be positive, got {scale.reshape(-1).tolist()}")
    info = np.iinfo(dtype)
    q = _round_half_away(values / scale) + zero_point
    return np.clip(q, info.min, info.max).astype(dtype)


def dequantize(values: np.ndarray, scale, zero_point, axis: int = 0) -> np.ndarray:
    """integer -> float32: ``(values - zero_point) * scale`` (per-channel along ``axis``)."""
    values = np.asarray(values)
    scale, zero_point = _broadcast_params(scale, zero_point, values.ndim, axis)
    return ((values.astype(np.float64) - zero_point) * scale).astype(np.float32)


# ----------------------------------------------------------------------------- base runner


def _expected_input_dims(meta: ModelMeta) -> tuple[int, int, int]:
    """The non-batch input dims the metadata implies, in the model's layout."""
    width, height = meta.input_size
    if meta.input_layout == "NCHW":
        return (meta.channels, height, width)
    return (height, width, meta.channels)


def _static_dim(value: Any) -> int | None:
    """An ONNX/TFLite dimension as an int, or None when it is symbolic/dynamic."""
    if isinstance(value, (int, np.integer)) and int(value) > 0:
        return int(value)
    return None


class ModelRunner(ABC):
    """A loaded model: ``run(batch)`` -> {output name: float32 array}, in metadata order.

    ``input_shape`` is (N, ...) in the model's layout; N is None when the model accepts any
    batch size. A model with a fixed batch of 1 is run once per sample for larger batches.
    ``output_shapes`` maps each output name to the model's declared shape (None for a dynamic
    dimension), so callers can check a model against what they expect at load time.
    """

    def __init__(self, path: Path, meta: ModelMeta):
        self.path = path
        self.meta = meta
        self.input_shape: tuple[int | None, ...] = (None, *_expected_input_dims(meta))
        # Per output name, the model's declared shape (None for a dynamic/symbolic dim).
        self.output_shapes: dict[str, tuple[int | None, ...]] = {}

    def _check_model_input_shape(self, model_shape: Sequence[Any]) -> None:
        expected = _expected_input_dims(self.meta)
        dims = list(model_shape)
        if len(dims) != 4:
            raise ModelFileError(
                f"{self.path}: model input '{self.meta.input_name}' has shape {dims}, expected 4 "
                f"dimensions ({self.meta.input_layout})"
            )
        for got, want in zip(dims[1:], expected):
            got = _static_dim(got)
            if got is not None and got != want:
                raise ModelFileError(
                    f"{self.path}: model input shape {dims} disagrees with the metadata "
                    f"(input_size {list(self.meta.input_size)}, {self.meta.input_layout}, "
                    f"{self.meta.color_order} -> (N, {', '.join(map(str, expected))}))"
                )
        self.input_shape = (_static_dim(dims[0]), *expected)

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Run a float32 batch; returns float32 outputs keyed by ``meta.output_names``."""
        if not isinstance(batch, np.ndarray) or batch.dtype != np.float32:
            got = batch.dtype if isinstance(batch, np.ndarray) else type(batch).__name__
            raise TypeError(f"{self.path.name}: run() expected a float32 numpy batch, got {got}")
        expected = self.input_shape[1:]
        dims = ", ".join(map(str, expected))
        if batch.ndim != 4 or tuple(batch.shape[1:]) != expected or batch.shape[0] == 0:
            raise ValueError(
                f"{self.path.name}: run() expected a batch of shape (N, {dims}) "
                f"({self.meta.input_layout}), got {tuple(batch.shape)}"
            )
        fixed = self.input_shape[0]
        if fixed is None or batch.shape[0] == fixed:
            outputs = self._run(np.ascontiguousarray(batch))
        elif fixed == 1:
            parts = [self._run(np.ascontiguousarray(batch[i : i + 1])) for i in range(len(batch))]
            outputs = [np.concatenate(column, axis=0) for column in zip(*parts)]
        else:
            raise ValueError(f"{self.path.name}: model has a fixed batch size of {fixed}, got {batch.shape[0]}")
        return dict(zip(self.meta.output_names, outputs))

    @abstractmethod
    def _run(self, batch: np.ndarray) -> list[np.ndarray]:
        """Outputs as float32 arrays in ``meta.output_names`` order."""


# ----------------------------------------------------------------------------- ONNX Runtime

_ONNX_FLOAT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


class OnnxRunner(ModelRunner):
    """ONNX Runtime session; outputs are matched to the metadata by name."""

    def __init__(self, path: Path, meta: ModelMeta, threads: int = 1, providers: list | None = None):
        super().__init__(path, meta)
        try:
            import onnxruntime as ort
        except ImportError:
            raise RuntimeMissingError(f"{path}: onnxruntime is not installed (pip install onnxruntime)") from None
        available = ort.get_available_providers()
        providers = list(providers) if providers else ["CPUExecutionProvider"]
        unknown = [p for p in providers if (p[0] if isinstance(p, tuple) else p) not in available]
        if unknown:
            raise ValueError(f"{path}: execution provider(s) {unknown} not available; this onnxruntime has {available}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as err:  # ORT raises its own pybind exception types for bad files
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ModelFileError(f"{path}: not a loadable ONNX model (corrupt or truncated?): {first}") from None

        inputs = {i.name: i for i in self._session.get_inputs()}
        if meta.input_name not in inputs:
            raise ModelFileError(
                f"{path}: metadata input_name '{meta.input_name}' is not a model input (model inputs: {sorted(inputs)})"
            )
        if len(inputs) != 1:
            raise ModelFileError(f"{path}: model has {len(inputs)} inputs {sorted(inputs)}; the runner feeds one")
        model_input = inputs[meta.input_name]
        if model_input.type not in _ONNX_FLOAT_TYPES:
            raise ModelFileError(
                f"{path}: model input '{meta.input_name}' is {model_input.type}; expected "
                "tensor(float) or tensor(float16) (export int8 ONNX models in QDQ form)"
            )
        self._input_dtype = _ONNX_FLOAT_TYPES[model_input.type]
        self._check_model_input_shape(model_input.shape)

        outputs = [o.name for o in self._session.get_outputs()]
        missing = [name for name in meta.output_names if name not in outputs]
        if missing:
            raise ModelFileError(
                f"{path}: metadata output_names {missing} are not model outputs (model outputs: {outputs})"
            )
        self._output_names = list(meta.output_names)
        declared = {o.name: o.shape for o in self._session.get_outputs()}
        self.output_shapes = {name: tuple(_static_dim(d) for d in declared[name]) for name in meta.output_names}

    def _run(self, batch: np.ndarray) -> list[np.ndarray]:
        feed = {self.meta.input_name: batch.astype(self._input_dtype, copy=False)}
        results = self._session.run(self._output_names, feed)
        # Integer ONNX outputs are genuine integers (indices, counts): QDQ models end in
        # DequantizeLinear, so there is no scale to apply here.
        return [np.asarray(r).astype(np.float32, copy=False) for r in results]


# ----------------------------------------------------------------------------- TFLite


def _tflite_interpreter_class() -> Callable:
    """LiteRT's interpreter, else tflite-runtime's; imported only when a .tflite model loads."""
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter

        return Interpreter
    except ImportError:
        raise RuntimeMissingError(
            "no TFLite interpreter installed: pip install ai-edge-litert (or tflite-runtime on older platforms)"
        ) from None


def _quant_params(detail: dict) -> tuple[np.ndarray, np.ndarray, int]:
    params = detail.get("quantization_parameters") or {}
    scales = np.asarray(params.get("scales", []), dtype=np.float64)
    zero_points = np.asarray(params.get("zero_points", []), dtype=np.int64)
    axis = int(params.get("quantized_dimension", 0))
    if scales.size == 0:
        scale, zero_point = detail.get("quantization", (0.0, 0))
        scales = np.asarray([scale], dtype=np.float64)
        zero_points = np.asarray([zero_point], dtype=np.int64)
    return scales, zero_points, axis


def _is_quantised(detail: dict) -> bool:
    scales, _, _ = _quant_params(detail)
    return np.issubdtype(detail["dtype"], np.integer) and bool(np.all(scales > 0))


_TFLITE_MAGIC = b"TFL3"


class TFLiteRunner(ModelRunner):
    """TFLite interpreter (LiteRT or tflite-runtime).

    Outputs are matched to ``meta.output_names`` by tensor name; when none of the names occurs
    in the model, by position (the metadata then lists them in the interpreter's output order).
    """

    def __init__(self, path: Path, meta: ModelMeta, threads: int = 1):
        super().__init__(path, meta)
        # A cheap header check first: the interpreter's own error for a non-flatbuffer is vague.
        with open(path, "rb") as handle:
            header = handle.read(8)
        if len(header) < 8 or header[4:8] != _TFLITE_MAGIC:
            raise ModelFileError(f"{path}: not a TFLite model (no 'TFL3' flatbuffer identifier)")
        interpreter_class = _tflite_interpreter_class()
        try:
            self._interpreter = interpreter_class(model_path=str(path), num_threads=threads)
            self._interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ModelFileError(f"{path}: not a loadable TFLite model (corrupt or truncated?): {first}") from None

        inputs = self._interpreter.get_input_details()
        if len(inputs) != 1:
            names = [d["name"] for d in inputs]
            raise ModelFileError(f"{path}: model has {len(inputs)} inputs {names}; the runner feeds one")
        detail = inputs[0]
        if detail["name"] != meta.input_name:
            raise ModelFileError(
                f"{path}: metadata input_name '{meta.input_name}' is not a model input "
                f"(model input: '{detail['name']}')"
            )
        signature = detail.get("shape_signature", detail["shape"])
        self._check_model_input_shape(list(signature))
        if any(int(d) < 0 for d in signature):
            # Dynamic dims: fix them to the metadata's size with batch 1, run per sample.
            self._interpreter.resize_tensor_input(detail["index"], [1, *self.input_shape[1:]])
            self._interpreter.allocate_tensors()
            detail = self._interpreter.get_input_details()[0]
        self.input_shape = (int(detail["shape"][0]), *self.input_shape[1:])
        self._input = detail
        if np.issubdtype(detail["dtype"], np.integer):
            scales, zero_points, _ = _quant_params(detail)
            if scales.size != 1 or scales[0] <= 0:
                raise ModelFileError(
                    f"{path}: integer input '{detail['name']}' has no per-tensor quantisation "
                    f"scale (got scales {scales.tolist()})"
                )
            self._input_quant: tuple[float, int] | None = (float(scales[0]), int(zero_points[0]))
        else:
            self._input_quant = None

        self._outputs = self._match_outputs(self._interpreter.get_output_details())
        self.output_shapes = {
            name: tuple(_static_dim(d) for d in detail["shape"])
            for name, detail in zip(meta.output_names, self._outputs)
        }

    def _match_outputs(self, details: list[dict]) -> list[dict]:
        by_name = {d["name"]: d for d in details}
        wanted = self.meta.output_names
        present = [name for name in wanted if name in by_name]
        if len(present) == len(wanted):
            return [by_name[name] for name in wanted]
        if not present and len(wanted) == len(details):
            return list(details)
        missing = [name for name in wanted if name not in by_name]
        raise ModelFileError(
            f"{self.path}: metadata output_names {missing} are not model outputs "
            f"(model outputs, in order: {[d['name'] for d in details]}; name them all, or "
            "none to match by position)"
        )

    def _run(self, batch: np.ndarray) -> list[np.ndarray]:
        detail = self._input
        if self._input_quant is not None:
            scale, zero_point = self._input_quant
            tensor = quantize(batch, scale, zero_point, detail["dtype"])
        else:
            tensor = batch.astype(detail["dtype"], copy=False)
        self._interpreter.set_tensor(detail["index"], tensor)
        self._interpreter.invoke()
        results = []
        for out in self._outputs:
            value = self._interpreter.get_tensor(out["index"])
            if _is_quantised(out):
                scales, zero_points, axis = _quant_params(out)
                value = dequantize(value, scales, zero_points, axis)
            results.append(np.asarray(value).astype(np.float32, copy=False))
        return results


# ----------------------------------------------------------------------------- loading


def _open_onnx(path: Path, meta: ModelMeta, threads: int, providers: list | None) -> ModelRunner:
    return OnnxRunner(path, meta, threads=threads, providers=providers)


def _open_tflite(path: Path, meta: ModelMeta, threads: int, providers: list | None) -> ModelRunner:
    if providers:
        raise ValueError(f"{path}: providers apply to ONNX models only, got {providers}")
    return TFLiteRunner(path, meta, threads=threads)


_OPENERS: dict[str, tuple[str, Callable[..., ModelRunner]]] = {
    ".onnx": ("onnx", _open_onnx),
    ".tflite": ("tflite", _open_tflite),
}


def load_model(
    path: os.PathLike | str,
    threads: int = 1,
    providers: list | None = None,
    meta: ModelMeta | None = None,
    verify_hash: bool = True,
) -> ModelRunner:
    """Open ``path`` (.onnx or .tflite) with its metadata (``meta``, else the JSON beside it).

    ``threads`` is the intra-op thread count; ``providers`` are ONNX Runtime execution
    providers (default CPU). Raises :class:`ModelFileError` naming the file when it is
    missing, corrupt or disagrees with the metadata.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in _OPENERS:
        raise ModelFileError(f"{path}: unknown model suffix '{path.suffix}' (expected one of {sorted(_OPENERS)})")
    if not path.is_file():
        raise ModelFileError(f"{path}: model file not found")
    if path.stat().st_size == 0:
        raise ModelFileError(f"{path}: model file is empty (0 bytes)")
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise ValueError(f"load_model: threads must be a positive integer, got {threads!r}")
    if meta is None:
        meta = load_meta(meta_path_for(path))
    fmt, opener = _OPENERS[suffix]
    if meta.format != fmt:
        raise ModelFileError(f"{path}: metadata says format '{meta.format}' but the file suffix means '{fmt}'")
    if verify_hash:
        verify_sha256(meta, path)
    return opener(path, meta, threads, providers)
