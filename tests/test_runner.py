"""The model runner: metadata, preprocessing, ONNX and TFLite (fp32 and int8) behind one interface."""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.runtime import (
    MetaError,
    ModelFileError,
    ModelHashError,
    ModelMeta,
    Normalisation,
    dequantize,
    file_sha256,
    load_meta,
    load_model,
    meta_path_for,
    preprocess,
    quantize,
    save_meta,
)

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402

DETECTOR_DIR = Path(__file__).resolve().parents[1] / "edge" / "models" / "detector"


# ----------------------------------------------------------------------------- helpers


def make_meta(**overrides) -> ModelMeta:
    values = dict(
        name="tiny",
        version="1",
        task="embedding",
        format="onnx",
        precision="fp32",
        input_size=(4, 3),
        input_layout="NCHW",
        color_order="RGB",
        normalisation=Normalisation(mean=(127.5,) * 3, std=(127.5,) * 3),
        input_name="x",
        output_names=("y", "z"),
    )
    values.update(overrides)
    return ModelMeta(**values)


def write_onnx(path: Path, batch: int | str = "N", height: int = 3, width: int = 4) -> Path:
    """y = 2x + 1 and z = relu(x), on a float (batch, 3, height, width) input."""
    shape = [batch, 3, height, width]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, shape)
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    one = helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])
    nodes = [
        helper.make_node("Mul", ["x", "two"], ["twice"]),
        helper.make_node("Add", ["twice", "one"], ["y"]),
        helper.make_node("Relu", ["x"], ["z"]),
    ]
    graph = helper.make_graph(nodes, "tiny", [x], [y, z], initializer=[two, one])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture()
def tiny_onnx(tmp_path):
    path = write_onnx(tmp_path / "tiny.onnx")
    save_meta(make_meta(sha256=file_sha256(path)), meta_path_for(path))
    return path


# ----------------------------------------------------------------------------- metadata


def test_meta_round_trip_is_atomic_and_lossless(tmp_path):
    meta = make_meta(accuracy={"nme": 0.031}, extra={"anchors": {"strides": [8, 16]}}, landmark_scheme="ibug68")
    path = save_meta(meta, tmp_path / "m.json")
    assert load_meta(path) == meta
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json"]  # no temporary left behind
    assert meta_path_for(tmp_path / "model.onnx") == tmp_path / "model.json"
    assert meta_path_for(tmp_path / "x.tflite") == tmp_path / "x.json"


@pytest.mark.parametrize(
    "change, field",
    [
        (lambda d: d.update(colour="RGB"), "colour"),  # unknown field
        (lambda d: d.pop("input_name"), "input_name"),  # missing field
        (lambda d: d.update(input_size=[4, "3"]), "input_size"),  # wrong type
        (lambda d: d.update(input_layout="NWHC"), "input_layout"),
        (lambda d: d.update(precision=8), "precision"),
        (lambda d: d.update(output_names="y"), "output_names"),
        (lambda d: d.update(normalisation={"mean": [0, 0], "std": [1, 1, 1]}), "normalisation.mean"),
        (lambda d: d.update(normalisation={"mean": [0, 0, 0], "std": [1, 0, 1]}), "normalisation.std"),
        (lambda d: d.update(sha256="ABC"), "sha256"),
        (lambda d: d.update(accuracy={"recall": "high"}), "accuracy"),
    ],
)
def test_meta_errors_name_the_file_and_field(tmp_path, change, field):
    data = make_meta().to_dict()
    change(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(MetaError) as err:
        load_meta(path)
    message = str(err.value)
    assert str(path) in message and f"'{field}'" in message
    assert "\n" not in message


def test_meta_rejects_bad_values_built_in_code():
    with pytest.raises(MetaError, match="color_order"):
        make_meta(color_order="YUV")


def test_meta_not_json_names_the_file(tmp_path):
    path = tmp_path / "m.json"
    path.write_text("{not json")
    with pytest.raises(MetaError, match="m.json: not valid JSON"):
        load_meta(path)


# ----------------------------------------------------------------------------- preprocessing


def test_preprocess_resizes_converts_and_normalises():
    bgr = np.zeros((6, 8, 3), np.uint8)
    bgr[..., 0], bgr[..., 1], bgr[..., 2] = 10, 20, 30  # B, G, R
    meta = make_meta(normalisation=Normalisation(mean=(30.0, 20.0, 10.0), std=(2.0, 4.0, 5.0)))
    nchw = preprocess([bgr, bgr], meta)
    assert nchw.shape == (2, 3, 3, 4) and nchw.dtype == np.float32
    np.testing.assert_allclose(nchw[0, :, 0, 0], [0.0, 0.0, 0.0])  # R-30, G-20, B-10 all zero

    plain = Normalisation(mean=(0.0,) * 3, std=(1.0,) * 3)
    nhwc = preprocess([bgr], replace(make_meta(normalisation=plain), input_layout="NHWC"))
    assert nhwc.shape == (1, 3, 4, 3)
    np.testing.assert_allclose(nhwc[0, 1, 1], [30, 20, 10])  # RGB order

    gray_meta = make_meta(color_order="GRAY", normalisation=Normalisation(mean=(0.0,), std=(255.0,)))
    gray = preprocess([np.full((5, 5), 255, np.uint8)], gray_meta)
    assert gray.shape == (1, 1, 3, 4)
    np.testing.assert_allclose(gray, 1.0)


def test_preprocess_rejects_non_images():
    with pytest.raises(ValueError, match="at least one image"):
        preprocess([], make_meta())
    with pytest.raises(TypeError, match="uint8"):
        preprocess([np.zeros((4, 4, 3), np.float64)], make_meta())
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        preprocess([np.zeros((4, 4, 4), np.uint8)], make_meta())


# ----------------------------------------------------------------------------- ONNX


def test_onnx_model_matches_numpy(tiny_onnx):
    runner = load_model(tiny_onnx)
    assert runner.input_shape == (None, 3, 3, 4)
    images = [np.random.default_rng(i).integers(0, 256, (7, 9, 3), dtype=np.uint8) for i in range(3)]
    batch = preprocess(images, runner.meta)
    out = runner.run(batch)
    assert list(out) == ["y", "z"]
    np.testing.assert_allclose(out["y"], 2 * batch + 1, rtol=1e-6)
    np.testing.assert_allclose(out["z"], np.maximum(batch, 0))
    assert all(v.dtype == np.float32 for v in out.values())


def test_onnx_fixed_batch_one_runs_larger_batches_sample_by_sample(tmp_path):
    path = write_onnx(tmp_path / "b1.onnx", batch=1)
    save_meta(make_meta(output_names=("z",)), meta_path_for(path))
    runner = load_model(path)
    assert runner.input_shape == (1, 3, 3, 4)
    batch = np.linspace(-1, 1, 3 * 3 * 3 * 4, dtype=np.float32).reshape(3, 3, 3, 4)
    np.testing.assert_allclose(runner.run(batch)["z"], np.maximum(batch, 0))


def test_run_rejects_wrong_batch(tiny_onnx):
    runner = load_model(tiny_onnx)
    with pytest.raises(ValueError, match=r"\(N, 3, 3, 4\)"):
        runner.run(np.zeros((1, 3, 4, 3), np.float32))
    with pytest.raises(TypeError, match="float32"):
        runner.run(np.zeros((1, 3, 3, 4), np.float64))


def test_sha256_mismatch_is_detected(tiny_onnx):
    meta = load_meta(meta_path_for(tiny_onnx))
    save_meta(replace(meta, sha256="0" * 64), meta_path_for(tiny_onnx))
    with pytest.raises(ModelHashError, match="sha256"):
        load_model(tiny_onnx)
    load_model(tiny_onnx, verify_hash=False)  # the escape hatch still loads it


def test_meta_naming_a_missing_output_fails_at_load(tmp_path):
    path = write_onnx(tmp_path / "m.onnx")
    save_meta(make_meta(output_names=("y", "logits")), meta_path_for(path))
    with pytest.raises(ModelFileError, match=r"\['logits'\] are not model outputs"):
        load_model(path)


def test_meta_input_size_disagreeing_with_model_fails_at_load(tmp_path):
    path = write_onnx(tmp_path / "m.onnx")
    save_meta(make_meta(input_size=(8, 8)), meta_path_for(path))
    with pytest.raises(ModelFileError, match="disagrees with the metadata"):
        load_model(path)


def test_meta_format_must_match_suffix(tmp_path):
    path = write_onnx(tmp_path / "m.onnx")
    save_meta(make_meta(format="tflite"), meta_path_for(path))
    with pytest.raises(ModelFileError, match="format 'tflite'"):
        load_model(path)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
@pytest.mark.parametrize("suffix", [".onnx", ".tflite"])
def test_corrupt_or_truncated_model_gives_one_clear_error(tmp_path, damage, suffix):
    good = (
        write_onnx(tmp_path / "good.onnx") if suffix == ".onnx" else DETECTOR_DIR / "face_detection_short_range.tflite"
    )
    data = good.read_bytes()
    damaged = {"garbage": b"\x00\x01not a model" * 50, "truncated": data[: len(data) // 2], "empty": b""}[damage]
    path = tmp_path / f"broken{suffix}"
    path.write_bytes(damaged)
    meta = make_meta() if suffix == ".onnx" else load_meta(meta_path_for(good))
    save_meta(replace(meta, sha256=None), meta_path_for(path))
    with pytest.raises(ModelFileError) as err:
        load_model(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_missing_model_and_missing_meta(tmp_path):
    with pytest.raises(ModelFileError, match="model file not found"):
        load_model(tmp_path / "absent.onnx")
    path = write_onnx(tmp_path / "nometa.onnx")
    with pytest.raises(MetaError, match="nometa.json: metadata file not found"):
        load_model(path)
    with pytest.raises(ModelFileError, match="unknown model suffix"):
        load_model(tmp_path / "model.pt")


# ----------------------------------------------------------------------------- TFLite


@pytest.mark.parametrize("model_range, side, anchors", [("short", 128, 896), ("full", 192, 2304)])
def test_vendored_blazeface_shapes_match_meta(model_range, side, anchors):
    path = DETECTOR_DIR / f"face_detection_{model_range}_range.tflite"
    runner = load_model(path)
    meta = runner.meta
    assert meta.format == "tflite" and meta.sha256 == file_sha256(path)
    assert meta.input_size == (side, side) and meta.input_layout == "NHWC"
    assert runner.input_shape == (1, side, side, 3)
    regressors, logits = meta.output_names
    assert runner.output_shapes == {regressors: (1, anchors, 16), logits: (1, anchors, 1)}
    image = cv2.cvtColor(np.full((50, 80), 90, np.uint8), cv2.COLOR_GRAY2BGR)
    out = runner.run(preprocess([image, image], meta))
    assert out[regressors].shape == (2, anchors, 16) and out[logits].shape == (2, anchors, 1)
    np.testing.assert_array_equal(out[regressors][0], out[regressors][1])


def test_tflite_outputs_matched_by_position_when_names_differ(tmp_path):
    source = DETECTOR_DIR / "face_detection_short_range.tflite"
    path = tmp_path / "bf.tflite"
    shutil.copy(source, path)
    meta = replace(load_meta(meta_path_for(source)), output_names=("boxes", "scores"))
    save_meta(meta, meta_path_for(path))
    runner = load_model(path)
    assert runner.output_shapes == {"boxes": (1, 896, 16), "scores": (1, 896, 1)}
    save_meta(replace(meta, output_names=("regressors", "scores")), meta_path_for(path))
    with pytest.raises(ModelFileError, match=r"\['scores'\] are not model outputs"):
        load_model(path)


def test_quantize_dequantize_known_values():
    values = np.array([-1.0, -0.125, 0.0, 0.125, 0.625, 100.0])
    q = quantize(values, scale=0.25, zero_point=-3, dtype=np.int8)
    # Halves (0.5, 2.5 steps) round away from zero as TFLite does, not to even; 100 clips to 127.
    np.testing.assert_array_equal(q, [-7, -4, -3, -2, 0, 127])
    assert q.dtype == np.int8
    np.testing.assert_allclose(dequantize(q, 0.25, -3), [-1.0, -0.25, 0.0, 0.25, 0.75, 32.5])
    u = quantize(np.array([-1.0, 0.0, 1.0]), scale=1 / 128, zero_point=128, dtype=np.uint8)
    np.testing.assert_array_equal(u, [0, 128, 255])
    per_channel = dequantize(np.array([[2, 2], [2, 2]], np.int8), [0.5, 2.0], [0, 1], axis=1)
    np.testing.assert_allclose(per_channel, [[1.0, 2.0], [1.0, 2.0]])
    with pytest.raises(ValueError, match="scale must be positive"):
        quantize(values, 0.0, 0, np.int8)


# A TFLite flatbuffer written by hand (no TensorFlow): one QUANTIZE op requantising an int8
# input into a uint8 output, each with its own scale and zero point.
_TFLITE_TYPES = {np.int8: 9, np.uint8: 3}


def _build_requantize_tflite(in_q: tuple[float, int], out_q: tuple[float, int], shape=(1, 2, 3, 1)) -> bytes:
    flatbuffers = pytest.importorskip("flatbuffers")
    b = flatbuffers.Builder(1024)

    def vector_of_tables(offsets):
        b.StartVector(4, len(offsets), 4)
        for offset in reversed(offsets):
            b.PrependUOffsetTRelative(offset)
        return b.EndVector()

    def ints(values):
        return b.CreateNumpyVector(np.asarray(values, np.int32))

    def tensor(name, dtype, buffer, scale, zero_point):
        name_off = b.CreateString(name)
        shape_off = ints(shape)
        scale_off = b.CreateNumpyVector(np.asarray([scale], np.float32))
        zero_off = b.CreateNumpyVector(np.asarray([zero_point], np.int64))
        b.StartObject(7)  # QuantizationParameters: min, max, scale, zero_point, ...
        b.PrependUOffsetTRelativeSlot(2, scale_off, 0)
        b.PrependUOffsetTRelativeSlot(3, zero_off, 0)
        quant = b.EndObject()
        b.StartObject(5)  # Tensor: shape, type, buffer, name, quantization
        b.PrependUOffsetTRelativeSlot(0, shape_off, 0)
        b.PrependInt8Slot(1, _TFLITE_TYPES[dtype], 0)
        b.PrependUint32Slot(2, buffer, 0)
        b.PrependUOffsetTRelativeSlot(3, name_off, 0)
        b.PrependUOffsetTRelativeSlot(4, quant, 0)
        return b.EndObject()

    tensors = vector_of_tables([tensor("x", np.int8, 1, *in_q), tensor("y", np.uint8, 2, *out_q)])
    inputs, outputs, op_inputs, op_outputs = ints([0]), ints([1]), ints([0]), ints([1])
    b.StartObject(6)  # Operator: opcode_index, inputs, outputs, ...
    b.PrependUOffsetTRelativeSlot(1, op_inputs, 0)
    b.PrependUOffsetTRelativeSlot(2, op_outputs, 0)
    operators = vector_of_tables([b.EndObject()])
    b.StartObject(5)  # SubGraph: tensors, inputs, outputs, operators, name
    b.PrependUOffsetTRelativeSlot(0, tensors, 0)
    b.PrependUOffsetTRelativeSlot(1, inputs, 0)
    b.PrependUOffsetTRelativeSlot(2, outputs, 0)
    b.PrependUOffsetTRelativeSlot(3, operators, 0)
    subgraphs = vector_of_tables([b.EndObject()])
    quantize_op = 114
    b.StartObject(4)  # OperatorCode: deprecated_builtin_code, custom_code, version, builtin_code
    b.PrependInt8Slot(0, quantize_op, 0)
    b.PrependInt32Slot(3, quantize_op, 0)
    opcodes = vector_of_tables([b.EndObject()])
    empty_buffers = []
    for _ in range(3):
        b.StartObject(1)
        empty_buffers.append(b.EndObject())
    buffers = vector_of_tables(empty_buffers)
    b.StartObject(5)  # Model: version, operator_codes, subgraphs, description, buffers
    b.PrependUint32Slot(0, 3, 0)
    b.PrependUOffsetTRelativeSlot(1, opcodes, 0)
    b.PrependUOffsetTRelativeSlot(2, subgraphs, 0)
    b.PrependUOffsetTRelativeSlot(4, buffers, 0)
    b.Finish(b.EndObject(), file_identifier=b"TFL3")
    return bytes(b.Output())


def test_int8_tflite_quantises_input_and_dequantises_output_with_model_params(tmp_path):
    in_scale, in_zero, out_scale, out_zero = 0.05, -3, 0.1, 130
    path = tmp_path / "requant.tflite"
    path.write_bytes(_build_requantize_tflite((in_scale, in_zero), (out_scale, out_zero)))
    meta = make_meta(
        name="requant",
        task="test",
        format="tflite",
        precision="int8",
        input_size=(3, 2),
        input_layout="NHWC",
        color_order="GRAY",
        normalisation=Normalisation(mean=(0.0,), std=(1.0,)),
        output_names=("y",),
        sha256=file_sha256(path),
    )
    save_meta(meta, meta_path_for(path))
    runner = load_model(path)
    batch = np.array([-7.0, -1.0, -0.04, 0.0, 0.33, 9.0], np.float32).reshape(1, 2, 3, 1)
    out = runner.run(batch)["y"]
    assert out.dtype == np.float32 and out.shape == batch.shape

    q_in = quantize(batch, in_scale, in_zero, np.int8)
    real_in = dequantize(q_in, in_scale, in_zero)
    expected = dequantize(quantize(real_in, out_scale, out_zero, np.uint8), out_scale, out_zero)
    # The kernel requantises in fixed point; allow one output step of rounding difference.
    np.testing.assert_allclose(out, expected, atol=out_scale + 1e-6)
    # Input clipped at the int8 range: (-128 + 3) * 0.05 = -6.25 and (127 + 3) * 0.05 = 6.5.
    np.testing.assert_allclose(out.ravel()[[0, -1]], [-6.3, 6.5], atol=out_scale + 1e-6)
    # Were the scales ignored, 0.33 would come back as an integer code, not ~0.3.
    assert abs(out.ravel()[4] - 0.33) <= in_scale / 2 + out_scale / 2 + 1e-6


def test_missing_tflite_runtime_is_one_clear_error(monkeypatch):
    from edge.runtime import RuntimeMissingError
    from edge.runtime.runner import _tflite_interpreter_class

    for name in ("ai_edge_litert", "ai_edge_litert.interpreter", "tflite_runtime", "tflite_runtime.interpreter"):
        monkeypatch.setitem(sys.modules, name, None)  # makes the import fail as if not installed
    with pytest.raises(RuntimeMissingError, match="pip install ai-edge-litert"):
        _tflite_interpreter_class()


def test_threads_must_be_positive(tiny_onnx):
    with pytest.raises(ValueError, match="threads"):
        load_model(tiny_onnx, threads=0)
    assert load_model(tiny_onnx, threads=2).run(np.zeros((1, 3, 3, 4), np.float32))["y"].max() == 1.0
