"""The dlib 68-point baseline on real 300-W validation faces (needs the `baseline` extra)."""

from __future__ import annotations

import numpy as np
import pytest

dlib = pytest.importorskip("dlib", reason="dlib is not installed (pip install -e '.[baseline]')")

from edge.geometry.landmarks68 import EYE_IMAGE_LEFT, EYE_IMAGE_RIGHT  # noqa: E402
from edge.imageio import read_image_bgr  # noqa: E402
from edge.landmarks.crop import landmark_crop_box  # noqa: E402
from edge.metrics.landmarks import nme  # noqa: E402
from training.landmarks import baseline_dlib  # noqa: E402

N_FACES = 20


@pytest.fixture(scope="module")
def val_faces(real_data):
    if not (real_data / "300w" / "train").is_dir():
        pytest.skip(f"{real_data / '300w' / 'train'} is absent")
    return baseline_dlib.split_faces("val", real_data / "300w")[:N_FACES]


@pytest.fixture(scope="module")
def model():
    try:
        return baseline_dlib.model_path()
    except FileNotFoundError as err:
        pytest.skip(str(err))


def _predict(landmarker, faces) -> np.ndarray:
    preds = [landmarker.predict(read_image_bgr(path), [landmark_crop_box(gt)]) for path, gt in faces]
    for pred in preds:
        assert pred.shape == (1, 68, 2)
    return np.concatenate(preds)


def _assert_eyes_in_image_order(preds: np.ndarray) -> None:
    left_x = preds[:, list(EYE_IMAGE_LEFT), 0].mean(axis=1)
    right_x = preds[:, list(EYE_IMAGE_RIGHT), 0].mean(axis=1)
    assert np.all(left_x < right_x), "points 36-41 must lie left of points 42-47 in the image"


@pytest.mark.real_data
def test_dlib_from_its_own_detection_is_accurate(val_faces, model):
    landmarker = baseline_dlib.DlibLandmarker(model, boxes="detector", point_offset=baseline_dlib.DLIB_POINT_OFFSET)
    preds = _predict(landmarker, val_faces)
    gt = np.stack([g for _, g in val_faces])
    assert preds.shape == (len(val_faces), 68, 2)
    assert float(nme(preds, gt).mean()) < 0.08
    _assert_eyes_in_image_order(preds)


@pytest.mark.real_data
def test_dlib_from_mapped_crop_box(val_faces, model):
    # The median linear box map leaves dlib's cascade failing on some yawed faces (see the
    # module docstring), so the mean is not held to 0.08 here; the typical face is.
    preds = _predict(baseline_dlib.DlibLandmarker(model), val_faces)
    gt = np.stack([g for _, g in val_faces])
    assert preds.shape == (len(val_faces), 68, 2)
    assert np.all(np.isfinite(preds))
    assert float(np.median(nme(preds, gt))) < 0.08
    _assert_eyes_in_image_order(preds)


def test_predict_no_boxes_and_grayscale(model):
    landmarker = baseline_dlib.DlibLandmarker(model)
    image = np.zeros((64, 64, 3), dtype=np.uint8)
    assert landmarker.predict(image, []).shape == (0, 68, 2)
    box = np.array([8.0, 8.0, 56.0, 56.0])
    assert landmarker.predict(image[:, :, 0], [box, box]).shape == (2, 68, 2)


def test_box_map_matches_constants():
    m = baseline_dlib.default_box_map()
    crop = np.array([100.0, 100.0, 200.0, 200.0])
    left, top, right, bottom = m.crop_box(crop)
    assert (right - left) == pytest.approx(100 * baseline_dlib.DLIB_SCALE)
    assert ((left + right) / 2, (top + bottom) / 2) == pytest.approx(
        (150 + 100 * baseline_dlib.DLIB_SHIFT_X, 150 + 100 * baseline_dlib.DLIB_SHIFT_Y)
    )
