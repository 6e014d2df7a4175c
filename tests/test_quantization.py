"""Quantization (issue 7): int8 ONNX builder, TFLite conversion, shipped variants, the report."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest

from edge.runtime import load_model
from edge.runtime.meta import file_sha256, load_meta, save_meta
from edge.runtime.runner import ModelFileError

torch = pytest.importorskip("torch")

from quantization.build import SPECS, variant_path  # noqa: E402
from quantization.onnx_int8 import CALIBRATION_METHODS, OnnxInt8Builder, quantisable_nodes  # noqa: E402
from quantization.report import VARIANTS, variant_files  # noqa: E402

# Agreement with fp32 on real faces, per variant (checked on faces the calibration never saw).
# Landmarks: mean point displacement between the variant and fp32, in inter-ocular units;
# identity: mean cosine between the variant's and fp32's embedding of the same face.
LANDMARK_TOLERANCE = {"fp32": 1e-4, "fp16": 2e-3, "int8": 0.02}
IDENTITY_MIN_COSINE = {"fp32": 0.99999, "fp16": 0.9999, "int8": 0.99}


class _Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1),
            torch.nn.BatchNorm2d(8),
            torch.nn.ReLU(),
            torch.nn.Conv2d(8, 8, 3, padding=1, groups=8),
            torch.nn.ReLU(),
            torch.nn.Conv2d(8, 4, 1),
        )

    def forward(self, x):
        return self.body(x).mean(dim=(2, 3))


def _tiny_onnx(path):
    torch.manual_seed(0)
    net = _Tiny().eval()
    torch.onnx.export(
        net,
        (torch.zeros(1, 3, 16, 16),),
        str(path),
        input_names=["image"],
        output_names=["out"],
        dynamic_axes={"image": {0: "b"}, "out": {0: "b"}},
        opset_version=17,
        dynamo=False,
    )
    return net


def _run_onnx(path, x):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]


def test_int8_builder_writes_qdq_model_close_to_fp32(tmp_path):
    import onnx

    net = _tiny_onnx(tmp_path / "tiny.onnx")
    rng = np.random.default_rng(0)
    calib = rng.normal(0, 1, (32, 3, 16, 16)).astype(np.float32)
    builder = OnnxInt8Builder(tmp_path / "tiny.onnx", calib, "image", tmp_path / "work")
    test = rng.normal(0, 1, (8, 3, 16, 16)).astype(np.float32)
    with torch.no_grad():
        ref = net(torch.from_numpy(test)).numpy()
    for method in CALIBRATION_METHODS:
        out = builder.write(tmp_path / f"int8_{method}.onnx", method)
        ops = {n.op_type for n in onnx.load(str(out)).graph.node}
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops
        got = _run_onnx(out, test)
        assert np.abs(got - ref).max() < 0.1 * np.abs(ref).max() + 1e-3, method
    # Mixed precision: an excluded layer keeps float weights (no DequantizeLinear feeds it).
    first = quantisable_nodes(builder.prepared)[0]
    mixed = onnx.load(str(builder.write(tmp_path / "mixed.onnx", "minmax", exclude_nodes=[first])))
    node = next(n for n in mixed.graph.node if n.name == first)
    producers = {o: n.op_type for n in mixed.graph.node for o in n.output}
    assert producers.get(node.input[1]) != "DequantizeLinear"


def test_entropy_calibration_is_not_min_max(tmp_path):
    """quantize_static's own entropy calibrator (128 bins for 128 levels) has one candidate, the
    min-max range; ours measures a real histogram, so an outlier no longer sets the range."""
    _tiny_onnx(tmp_path / "tiny.onnx")
    rng = np.random.default_rng(1)
    calib = rng.normal(0, 1, (64, 3, 16, 16)).astype(np.float32)
    calib[0, :, 0, 0] = 60.0  # one outlier pixel
    builder = OnnxInt8Builder(tmp_path / "tiny.onnx", calib, "image", tmp_path / "work")
    from onnxruntime.quantization.calibrate import load_tensors_data

    def image_high(method):
        return float(np.asarray(load_tensors_data(builder.ranges(method))["image"].range_value).max())

    assert image_high("minmax") == pytest.approx(60.0)
    assert image_high("entropy") < 0.5 * image_high("minmax")  # the outlier no longer sets the range


def test_int8_builder_rejects_bad_calibration(tmp_path):
    _tiny_onnx(tmp_path / "tiny.onnx")
    with pytest.raises(ValueError, match="calibration inputs"):
        OnnxInt8Builder(tmp_path / "tiny.onnx", np.zeros((0, 3, 16, 16), np.float32), "image", tmp_path)
    with pytest.raises(ValueError, match="calibration method"):
        OnnxInt8Builder(tmp_path / "tiny.onnx", np.zeros((4, 3, 16, 16), np.float32), "image", tmp_path / "w").ranges(
            "kl"
        )


def test_variant_names_are_stable():
    for task, stem in (("identity", "poseface_r29"), ("identity_mfn", "poseface_mfn")):
        spec = SPECS[task]
        assert variant_path(spec, "onnx", "int8").name == f"{stem}_int8.onnx"
        assert variant_path(spec, "tflite", "fp32").name == f"{stem}_tfl_fp32.tflite"
        assert variant_path(spec, "tflite", "int8").name == f"{stem}_tfl_int8.tflite"
    # every variant has its own metadata file
    names = {variant_path(spec, f, p).with_suffix(".json").name for f, p in VARIANTS}
    assert len(names) == len(VARIANTS)


def test_calibration_faces_never_come_from_the_test_fold():
    from quantization.calibration import identity_faces

    with pytest.raises(ValueError, match="fold 9"):
        identity_faces(4, folds=(8, 9))


# ------------------------------------------------------------------ shipped variants, real faces


def _shipped(task):
    files = variant_files(SPECS[task].fp32.parents[1], task)
    missing = [f"{fmt}/{p}" for fmt, p in VARIANTS if f"{fmt}/{p}" not in files]
    assert not missing, f"shipped {task} variants missing: {missing} (python -m quantization build)"
    return files


@pytest.mark.parametrize("task", ["landmarks", "identity"])
def test_every_shipped_variant_has_metadata_and_checksum(task):
    for name, path in _shipped(task).items():
        meta = load_meta(path.with_suffix(".json"))
        fmt, precision = name.split("/")
        assert (meta.format, meta.precision) == (fmt, precision)
        assert meta.sha256 == file_sha256(path)
        if precision != "fp32":
            assert meta.extra["quantization"]["calibration_data" if precision == "int8" else "method"]


def test_shipped_landmark_variants_agree_with_fp32_on_real_faces(real_data):
    from edge.landmarks.landmarker import Landmarker
    from quantization.calibration import landmark_faces

    files = _shipped("landmarks")
    # seed 0 as the build: past its 256 calibration and 200 selection faces, so never seen by either
    crops, gt = landmark_faces(24, load_meta(files["onnx/fp32"].with_suffix(".json")).width, seed=0, skip=456)
    ref = Landmarker(load_model(files["onnx/fp32"])).predict_crops(crops)
    iod = np.linalg.norm(gt[:, 36] - gt[:, 45], axis=1)
    for name, path in files.items():
        got = Landmarker(load_model(path)).predict_crops(crops)
        shift = float((np.linalg.norm(got - ref, axis=2).mean(axis=1) / iod).mean())
        assert shift <= LANDMARK_TOLERANCE[name.split("/")[1]], (name, shift)


def test_shipped_identity_variants_agree_with_fp32_on_real_faces(real_data):
    from edge.core.faces import embed_batch
    from quantization.calibration import identity_faces

    files = _shipped("identity")
    faces, yaws = identity_faces(24, seed=0, skip=456)  # past the build's calibration and selection faces
    # profiles among them: the head-pose fit reads CFP profiles at about 20-40 degrees and frontal
    # photos within 17 (the landmark card's pose check)
    assert (np.abs(yaws) > 20).any(), "expected profile faces among the test faces"
    ref = embed_batch(load_model(files["onnx/fp32"]), faces)
    for name, path in files.items():
        cos = np.sum(embed_batch(load_model(path), faces) * ref, axis=1)
        assert cos.mean() >= IDENTITY_MIN_COSINE[name.split("/")[1]], (name, float(cos.mean()))


@pytest.mark.parametrize("damage", ["truncated", "empty"])
@pytest.mark.parametrize("variant", ["onnx/int8", "tflite/int8"])
def test_damaged_quantised_model_gives_one_clear_error(tmp_path, damage, variant):
    src = _shipped("identity")[variant]
    dst = tmp_path / src.name
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"")
    meta = load_meta(src.with_suffix(".json"))
    save_meta(dataclasses.replace(meta, sha256=None), dst.with_suffix(".json"))
    with pytest.raises(ModelFileError) as err:
        load_model(dst)
    message = str(err.value)
    assert str(dst) in message and "\n" not in message


def test_quantised_model_with_stale_checksum_is_refused(tmp_path):
    src = _shipped("identity")["onnx/int8"]
    shutil.copy(src, tmp_path / src.name)
    meta = load_meta(src.with_suffix(".json"))
    save_meta(dataclasses.replace(meta, sha256="0" * 64), (tmp_path / src.name).with_suffix(".json"))
    with pytest.raises(ValueError, match="sha256"):
        load_model(tmp_path / src.name)


def test_report_runs_end_to_end_on_a_small_real_subset(real_data, tmp_path):
    from quantization.report import run

    report = run(SPECS["identity"].fp32.parents[1], tmp_path, quick=True, runs=5)
    for task in ("landmarks", "identity"):
        assert set(report[task]) == {f"{fmt}/{p}" for fmt, p in VARIANTS}
        for row in report[task].values():
            assert row["verdict"].split(";")[0] in ("REFERENCE", "PASS", "MISSES SPEED/SIZE TARGET", "FAILS ACCURACY")
            assert row["speed"]["threads_1"]["p50_ms"] > 0
        # one file to deploy per runtime
        deploy = [n for n, row in report[task].items() if "DEPLOY THIS" in row["verdict"]]
        assert sorted(n.split("/")[0] for n in deploy) == ["onnx", "tflite"], deploy
    # fp32 TFLite is the same network as fp32 ONNX: same accuracy to the last digit that matters.
    lm = report["landmarks"]
    assert abs(lm["tflite/fp32"]["validation"]["nme"] - lm["onnx/fp32"]["validation"]["nme"]) < 1e-4
    assert report["identity"]["tflite/fp32"]["drift_vs_fp32"]["mean"] > 0.99999
    for name in ("summary.md", "report.json", "landmarks_ced.png", "identity_roc_fp.png", "identity_drift.png"):
        assert (tmp_path / name).stat().st_size > 0, name


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_tflite_conversion_runs_in_the_edge_runner(tmp_path, precision):
    """litert-torch -> .tflite -> edge runner (NHWC input, int8 I/O quantised by the runner)."""
    pytest.importorskip("litert_torch")
    from edge.runtime.meta import ModelMeta
    from quantization.tflite import convert_tflite, tflite_meta

    torch.manual_seed(0)
    net = _Tiny().eval()
    rng = np.random.default_rng(0)
    calib = rng.normal(0, 1, (16, 16, 16, 3)).astype(np.float32)
    out = convert_tflite(net, 16, tmp_path / f"tiny_{precision}.tflite", precision, calib)
    base = ModelMeta(
        name="tiny",
        version="0",
        task="identity",
        format="onnx",
        precision="fp32",
        input_size=(16, 16),
        input_layout="NCHW",
        color_order="RGB",
        normalisation={"mean": [0, 0, 0], "std": [1, 1, 1]},
        input_name="image",
        output_names=("out",),
    )
    save_meta(tflite_meta(base, out, precision, {}), out.with_suffix(".json"))
    runner = load_model(out)
    assert runner.meta.input_layout == "NHWC"
    x = rng.normal(0, 1, (4, 16, 16, 3)).astype(np.float32)
    with torch.no_grad():
        ref = net(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    got = runner.run(x)["out"]
    tolerance = {"fp32": 1e-5, "fp16": 1e-2, "int8": 0.1}[precision] * max(1.0, float(np.abs(ref).max()))
    assert np.abs(got - ref).max() < tolerance


def test_int8_tflite_needs_calibration(tmp_path):
    pytest.importorskip("litert_torch")
    from quantization.tflite import convert_tflite

    with pytest.raises(ValueError, match="calibration"):
        convert_tflite(_Tiny().eval(), 16, tmp_path / "x.tflite", "int8", None)
