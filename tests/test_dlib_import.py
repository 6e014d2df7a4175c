"""dlib's face-recognition ResNet imported by our own reader into plain torch: it must reproduce
dlib's descriptors on real faces, and a wrong file must fail with one line naming it."""

from __future__ import annotations

import numpy as np
import pytest

from edge.geometry.align import ARCFACE_112, DLIB_150, AlignmentSpec, align_to_spec, alignment_from_meta
from edge.runtime.meta import ModelMeta

torch = pytest.importorskip("torch")


def _dlib_file():
    from training.nn.dlib_resnet import dlib_model_file

    try:
        return dlib_model_file()
    except FileNotFoundError as err:
        pytest.skip(f"the baseline extra is absent ({err}); CI has it")


@pytest.fixture(scope="module")
def imported():
    from training.nn.dlib_resnet import load_dlib_resnet

    model, parsed = load_dlib_resnet(_dlib_file())
    return model.eval(), parsed


def test_reader_finds_dlib_layout_and_means(imported):
    from training.nn.dlib_resnet import INPUT_MEAN_RGB

    model, parsed = imported
    assert parsed.input_size == (150, 150)
    assert np.allclose(parsed.input_mean_rgb, INPUT_MEAN_RGB, atol=1e-3)
    assert parsed.loss.version == "loss_metric_2"
    convs = [r for r in parsed.layers if r.kind == "con"]
    assert len(convs) == 29  # dlib's ResNet-29
    assert len(parsed.sha256) == 64
    # dlib's file stores every weight; none left at its initial value
    assert sum(p.numel() for p in model.parameters()) > 5_000_000


def _cfp_chips(real_data, count: int):
    """``count`` real CFP faces of folds 1-8 (frontal and profile), each as dlib's own 150x150
    chip (dlib's 68-point predictor on the fiducial box, ``dlib.get_face_chip``), with the
    68 points it used, and the RGB photo."""
    dlib = pytest.importorskip("dlib")
    from edge.datasets.cfp import cfp_photos, fiducial_box, read_fiducials
    from edge.imageio import read_image_bgr
    from training.landmarks.baseline_dlib import model_path

    predictor = dlib.shape_predictor(str(model_path()))
    photos = [p for p in cfp_photos(real_data / "cfp") if p.identity <= 400]
    rng = np.random.default_rng(0)
    out = []
    for i in rng.permutation(len(photos)):
        photo = photos[i]
        image = read_image_bgr(photo.image_path)
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        rgb = np.ascontiguousarray(image[:, :, ::-1])
        x1, y1, x2, y2 = (int(v) for v in fiducial_box(read_fiducials(photo.fiducials_path)))
        shape = predictor(rgb, dlib.rectangle(x1, y1, x2, y2))
        points = np.array([[shape.part(k).x, shape.part(k).y] for k in range(68)], dtype=np.float64)
        out.append((dlib.get_face_chip(rgb, shape, 150, 0.25), points, rgb))
        if len(out) == count:
            break
    return out


def _embed(model, chips) -> np.ndarray:
    from training.nn.dlib_resnet import INPUT_MEAN_RGB

    x = torch.from_numpy(np.stack(chips).astype(np.float32)).permute(0, 3, 1, 2)
    x = (x - torch.tensor(INPUT_MEAN_RGB).view(1, 3, 1, 1)) / 256.0
    with torch.no_grad():
        return model(x).numpy().astype(np.float64)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.mark.real_data
def test_torch_copy_reproduces_dlib_on_real_cfp_faces(real_data, imported):
    dlib = pytest.importorskip("dlib")
    model, parsed = imported
    faces = _cfp_chips(real_data, 60)
    recognizer = dlib.face_recognition_model_v1(str(parsed.path))
    want = np.array([np.asarray(recognizer.compute_face_descriptor(chip)) for chip, _, _ in faces])
    got = _embed(model, [chip for chip, _, _ in faces])
    cos = _cosines(got, want)
    assert len(cos) >= 50
    assert cos.min() >= 0.9999, f"worst cosine {cos.min():.6f}"
    assert np.abs(got - want).max() < 1e-3


@pytest.mark.real_data
def test_our_dlib_chip_matches_dlibs_own(real_data, imported):
    """Our ``dlib_68`` crop from the same 68 points cuts the chip dlib cuts (to interpolation)."""
    model, _ = imported
    faces = _cfp_chips(real_data, 20)
    ours = [align_to_spec(rgb, points, DLIB_150)[0] for _, points, rgb in faces]
    theirs = [chip for chip, _, _ in faces]
    diff = np.abs(np.stack(ours).astype(np.float64) - np.stack(theirs).astype(np.float64)).mean()
    assert diff < 3.0, f"mean pixel difference {diff:.2f}"
    assert _cosines(_embed(model, ours), _embed(model, theirs)).min() > 0.995


def test_truncated_file_is_one_line_naming_it(tmp_path):
    from training.nn.dlib_format import DlibFormatError, read_dlib_net

    data = _dlib_file().read_bytes()
    bad = tmp_path / "half.dat"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(DlibFormatError) as err:
        read_dlib_net(bad)
    msg = str(err.value)
    assert str(bad) in msg and "truncated" in msg and "\n" not in msg


def test_other_dlib_model_and_garbage_are_refused(tmp_path):
    from training.landmarks.baseline_dlib import model_path
    from training.nn.dlib_format import DlibFormatError, read_dlib_net

    _dlib_file()
    shape_predictor = model_path()
    with pytest.raises(DlibFormatError) as err:
        read_dlib_net(shape_predictor)
    assert str(shape_predictor) in str(err.value) and "not a dlib DNN file" in str(err.value)
    junk = tmp_path / "junk.dat"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(DlibFormatError) as err:
        read_dlib_net(junk)
    assert str(junk) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(DlibFormatError, match="cannot read"):
        read_dlib_net(tmp_path / "absent.dat")


def test_a_flipped_byte_in_a_layer_record_is_caught(tmp_path):
    from training.nn.dlib_format import DlibFormatError
    from training.nn.dlib_resnet import load_dlib_resnet

    data = bytearray(_dlib_file().read_bytes())
    at = data.index(b"max_pool_2")
    data[at : at + 10] = b"min_pool_2"
    bad = tmp_path / "edited.dat"
    bad.write_bytes(bytes(data))
    with pytest.raises(DlibFormatError, match="unknown layer record 'min_pool_2'"):
        load_dlib_resnet(bad)


def _meta(extra: dict, size: int = 112) -> ModelMeta:
    return ModelMeta(
        name="m",
        version="1",
        task="identity",
        format="onnx",
        precision="fp32",
        input_size=(size, size),
        input_layout="NCHW",
        color_order="RGB",
        normalisation={"mean": [0, 0, 0], "std": [1, 1, 1]},
        input_name="image",
        output_names=("embedding",),
        extra=extra,
    )


def test_alignment_comes_from_the_identity_models_metadata():
    # metadata written before the field: ArcFace at the model's input size
    assert alignment_from_meta(_meta({"alignment": "arcface 5-point similarity, 112x112"})) == ARCFACE_112
    assert alignment_from_meta(_meta({}, 96)) == AlignmentSpec("arcface_5", 96)
    spec = alignment_from_meta(_meta({"alignment": DLIB_150.to_dict()}, 150))
    assert spec == DLIB_150
    with pytest.raises(ValueError, match="differs from the model's input_size"):
        alignment_from_meta(_meta({"alignment": DLIB_150.to_dict()}, 112))
    with pytest.raises(ValueError, match="unknown key 'scale'"):
        alignment_from_meta(_meta({"alignment": {"template": "dlib_68", "scale": 2}}, 150))
    with pytest.raises(ValueError, match="expected one of"):
        alignment_from_meta(_meta({"alignment": {"template": "mtcnn"}}, 112))


def test_dlib_chip_geometry_on_synthetic_points():
    """A face drawn at dlib's mean shape lands where dlib's template puts it, and the crop's side
    follows the spec (no hard-coded 112)."""
    from edge.geometry.align import _DLIB_MEAN_X, _DLIB_MEAN_Y, DLIB_68_POINTS, spec_matrix, transform_points

    mean = np.zeros((68, 2))
    mean[17:, 0], mean[17:, 1] = _DLIB_MEAN_X, _DLIB_MEAN_Y
    mean[:17] = mean[17:34]  # jaw points unused by the template
    points = mean * 200 + np.array([300.0, 120.0])  # a 200-px face somewhere in a photo
    m = spec_matrix(points, DLIB_150)
    got = transform_points(points[list(DLIB_68_POINTS)], m)
    want = (0.25 + mean[list(DLIB_68_POINTS)]) / 1.5 * 150
    # dlib maps chip pixels 0..149 onto its rectangle (pixel centres), which moves points by up to ~0.6 px
    assert np.abs(got - want).max() < 0.8
    crop, _ = align_to_spec(np.zeros((600, 800, 3), np.uint8), points, DLIB_150)
    assert crop.shape == (150, 150, 3)
    crop, _ = align_to_spec(np.zeros((600, 800, 3), np.uint8), points, AlignmentSpec("dlib_68", 200, 0.25))
    assert crop.shape == (200, 200, 3)
