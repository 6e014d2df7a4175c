"""Shared geometry: mirror table, 5 points, alignment, head pose (synthetic and real 300-W)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edge.geometry import landmarks68 as lm
from edge.geometry.align import (
    ARCFACE_TEMPLATE_112,
    align_face,
    alignment_matrix,
    estimate_similarity,
    transform_points,
)
from edge.geometry.headpose import (
    POSE_POINTS,
    angles_from_rotation,
    camera_matrix,
    head_pose,
    head_pose_of_known_points,
    mean_face_3d,
)
from tests.conftest import real_subset


def test_mirror_table_is_an_involution_with_the_known_pairs():
    t = lm.MIRROR_68
    assert sorted(t.tolist()) == list(range(68))
    np.testing.assert_array_equal(t[t], np.arange(68))
    assert t[36] == 45 and t[39] == 42 and t[48] == 54 and t[0] == 16 and t[17] == 26
    fixed = {i for i in range(68) if t[i] == i}
    assert fixed == {8, 27, 28, 29, 30, 33, 51, 57, 62, 66}


def test_mirroring_twice_is_identity_and_keeps_left_on_the_left():
    rng = np.random.default_rng(0)
    pts = rng.uniform(0, 99, (68, 2))
    pts[36, 0], pts[45, 0] = 10, 80
    once = lm.mirror_landmarks(pts, 100)
    np.testing.assert_allclose(lm.mirror_landmarks(once, 100), pts)
    assert once[36, 0] < once[45, 0]
    assert once[36, 0] == pytest.approx(99 - 80)


def test_mirroring_matches_cv2_flip_pixelwise():
    img = np.zeros((40, 50), np.uint8)
    pts = np.zeros((68, 2))
    pts[36] = [7, 11]
    img[11, 7] = 255
    flipped = cv2.flip(img, 1)
    y, x = np.argwhere(flipped == 255)[0]
    assert lm.mirror_landmarks(pts, 50)[45].tolist() == [x, y]


def test_five_points_order():
    pts = np.zeros((68, 2))
    pts[36:42] = [10, 20]
    pts[42:48] = [30, 20]
    pts[30] = [20, 30]
    pts[48], pts[54] = [12, 40], [28, 40]
    np.testing.assert_allclose(lm.five_points(pts), [[10, 20], [30, 20], [20, 30], [12, 40], [28, 40]])


def test_similarity_recovers_a_known_transform_and_never_reflects():
    rng = np.random.default_rng(1)
    src = rng.uniform(0, 100, (5, 2))
    a, s, t = np.radians(25), 1.7, np.array([3.0, -9.0])
    rot = s * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    m = estimate_similarity(src, src @ rot.T + t)
    np.testing.assert_allclose(m[:, :2], rot, atol=1e-9)
    np.testing.assert_allclose(m[:, 2], t, atol=1e-9)
    mirrored = src * [-1, 1]
    assert np.linalg.det(estimate_similarity(src, mirrored)[:, :2]) > 0


def test_alignment_puts_template_points_on_the_template():
    m = alignment_matrix(ARCFACE_TEMPLATE_112 * 2 + 40)
    np.testing.assert_allclose(transform_points(ARCFACE_TEMPLATE_112 * 2 + 40, m), ARCFACE_TEMPLATE_112, atol=1e-9)
    img = np.zeros((400, 400, 3), np.uint8)
    out = align_face(img, ARCFACE_TEMPLATE_112 * 2 + 40)
    assert out.shape == (112, 112, 3)


def _project(yaw_deg: float, pitch_deg: float, roll_deg: float, size=(640, 480)) -> np.ndarray:
    """Landmarks of the mean face turned by the given angles (this module's convention)."""
    y, p, r = np.radians([yaw_deg, pitch_deg, roll_deg])
    # nose axis (0, 0, -1) must end up pointing to +x for yaw > 0 and -y for pitch > 0
    ry = np.array([[np.cos(y), 0, -np.sin(y)], [0, 1, 0], [np.sin(y), 0, np.cos(y)]])
    rx = np.array([[1, 0, 0], [0, np.cos(p), np.sin(p)], [0, -np.sin(p), np.cos(p)]])
    rz = np.array([[np.cos(r), -np.sin(r), 0], [np.sin(r), np.cos(r), 0], [0, 0, 1]])
    rot = ry @ rx @ rz
    rvec, _ = cv2.Rodrigues(rot)
    pts, _ = cv2.projectPoints(mean_face_3d(), rvec, np.array([0.0, 0.0, 600.0]), camera_matrix(size), np.zeros(4))
    return pts.reshape(68, 2)


@pytest.mark.parametrize(
    "yaw,pitch,roll", [(0, 0, 0), (30, 0, 0), (-55, 0, 0), (10, 15, 0), (-20, -10, 12), (0, 0, -25)]
)
def test_head_pose_recovers_synthetic_angles(yaw, pitch, roll):
    pose = head_pose(_project(yaw, pitch, roll), (640, 480))
    assert pose.yaw == pytest.approx(yaw, abs=0.5)
    assert pose.pitch == pytest.approx(pitch, abs=0.5)
    if yaw == 0 and pitch == 0:
        assert pose.roll == pytest.approx(roll, abs=0.5)
    assert pose.reprojection_error < 0.1


def test_angles_of_identity_rotation_are_zero():
    assert angles_from_rotation(np.eye(3)) == (0.0, 0.0, 0.0)


def test_head_pose_rejects_bad_landmarks():
    with pytest.raises(ValueError, match="68, 2"):
        head_pose(np.zeros((5, 2)), (100, 100))
    bad = _project(0, 0, 0)
    bad[3, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        head_pose(bad, (640, 480))


def test_head_pose_of_known_points_fits_what_is_known():
    """NaN points are left out of the fit: the visible half of a turned face still gives its yaw;
    on a full set it is head_pose; too few known pose points is a one-line error."""
    full = _project(40, 5, 0)
    assert head_pose_of_known_points(full, (640, 480)).yaw == pytest.approx(head_pose(full, (640, 480)).yaw)
    half = full.copy()
    half[list(lm.EYE_IMAGE_RIGHT) + list(range(22, 27)) + [54]] = np.nan  # the face's far side unknown
    assert head_pose_of_known_points(half, (640, 480)).yaw == pytest.approx(40, abs=0.5)
    few = np.full((68, 2), np.nan)
    few[list(POSE_POINTS)[:5]] = full[list(POSE_POINTS)[:5]]
    with pytest.raises(ValueError, match="5 of the pose points are known, expected at least 6"):
        head_pose_of_known_points(few, (640, 480))


@pytest.fixture(scope="module")
def w300_faces(real_data):
    from edge.datasets.pts import read_pts

    root = real_subset(real_data, "300w/train")
    faces = []
    for pts_path in sorted(root.rglob("*.pts")):
        image = cv2.imread(str(pts_path.with_suffix(".jpg")), cv2.IMREAD_UNCHANGED)
        assert image is not None, pts_path
        faces.append((pts_path, read_pts(pts_path), (image.shape[1], image.shape[0])))
    assert len(faces) == 1207
    return faces


def test_mirroring_a_real_face_flips_yaw(w300_faces):
    diffs = []
    for _, pts, (w, h) in w300_faces:
        a = head_pose(pts, (w, h))
        b = head_pose(lm.mirror_landmarks(pts, w), (w, h))
        diffs.append((a.yaw + b.yaw, abs(a.yaw) - abs(b.yaw), a.pitch - b.pitch, a.roll + b.roll))
    diffs = np.abs(np.array(diffs))
    assert diffs.max(axis=0)[0] < 2.0  # yaw changes sign
    assert diffs.max(axis=0)[1] < 2.0  # |yaw| kept within a few degrees
    assert diffs.max(axis=0)[2] < 2.0 and diffs.max(axis=0)[3] < 2.0


def test_real_frontal_and_turned_faces_are_told_apart(w300_faces):
    # An independent 2D cue: where the nose tip sits between the outer eye corners
    # (0.5 frontal; near 0 or 1 when the head is turned far).
    frontal, left, right = [], [], []
    for _, pts, size in w300_faces:
        r = (pts[30, 0] - pts[36, 0]) / (pts[45, 0] - pts[36, 0])
        yaw = head_pose(pts, size).yaw
        if 0.45 <= r <= 0.55:
            frontal.append(yaw)
        elif r < 0.2:
            left.append(yaw)
        elif r > 0.8:
            right.append(yaw)
    assert len(frontal) > 200 and len(left) > 10 and len(right) > 10
    frontal, left, right = np.abs(frontal), np.array(left), np.array(right)
    assert np.mean(frontal < 15) > 0.9
    assert np.all(left < 0) and np.all(right > 0)  # nose towards the image left: negative yaw
    assert np.mean(left < -20) > 0.9 and np.mean(right > 20) > 0.9
    assert min(np.median(-left), np.median(right)) > np.percentile(frontal, 95)


def test_real_faces_align_onto_the_template(w300_faces):
    residuals = []
    for pts_path, pts, _ in w300_faces[::10]:
        five = lm.five_points(pts)
        if abs(head_pose(pts, (400, 400)).yaw) > 15:
            continue
        m = alignment_matrix(five)
        residuals.append(np.linalg.norm(transform_points(five, m) - ARCFACE_TEMPLATE_112, axis=1).mean())
        image = cv2.imread(str(pts_path.with_suffix(".jpg")))
        assert align_face(image, five).shape == (112, 112, 3)
    assert len(residuals) > 40
    assert np.median(residuals) < 3.0  # pixels in the 112 x 112 crop
