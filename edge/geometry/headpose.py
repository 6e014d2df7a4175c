"""Head pose (yaw, pitch, roll in degrees) from 68 landmarks, by solvePnP on a 3D mean face.

Sign convention (angles of the face as the camera sees it, image x right, y down):
- yaw   > 0: the face turns towards the image's right (its nose points to +x). A face
  that shows the camera its left cheek has positive yaw. Mirroring the image negates yaw.
- pitch > 0: the face tilts up (the nose points towards the top of the image).
- roll  > 0: the face rotates clockwise in the image (the line from the image-left eye to
  the image-right eye goes down to the right). Mirroring the image negates roll.
yaw and pitch are the direction of the nose axis; roll is the in-image angle of the face's
x axis. All three are 0 for a face looking straight into the camera.

The 3D mean face (``mean_face3d_ibug68.json``) was fitted to real 300-W landmarks by
``python -m training.geometry.fit_mean_face3d``. The camera is a pinhole with focal length
equal to the larger image side and the principal point at the image centre, which is close
enough for phone and board cameras and makes the answer independent of the image's scale.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from edge.geometry import landmarks68 as lm

MEAN_FACE_PATH = Path(__file__).with_name("mean_face3d_ibug68.json")

# Points whose 3D position is stable: brows, nose, eyes, mouth corners and the chin. The
# jaw contour slides along the face as it turns (annotators follow the visible outline), and
# the inner lips move with expression, so they would bias the fit.
POSE_POINTS: tuple[int, ...] = lm.BROWS + lm.NOSE + lm.EYE_IMAGE_LEFT + lm.EYE_IMAGE_RIGHT + (48, 54, 8)


@dataclass(frozen=True)
class HeadPose:
    """Degrees, with the sign convention of this module's docstring."""

    yaw: float
    pitch: float
    roll: float
    reprojection_error: float  # mean pixel distance of the POSE_POINTS after the fit

    def as_array(self) -> np.ndarray:
        return np.array([self.yaw, self.pitch, self.roll])


@lru_cache(maxsize=1)
def mean_face_3d() -> np.ndarray:
    """The (68, 3) mean face in mm: x to the image-right eye, y down, z away from the camera."""
    with open(MEAN_FACE_PATH) as fh:
        points = np.asarray(json.load(fh)["points"], dtype=np.float64)
    if points.shape != (lm.NUM_POINTS, 3):
        raise ValueError(f"{MEAN_FACE_PATH}: points: expected shape (68, 3), got {points.shape}")
    points.setflags(write=False)
    return points


def camera_matrix(image_size: tuple[int, int], focal_scale: float = 1.0) -> np.ndarray:
    """Pinhole intrinsics for an image of (width, height) pixels; the focal length is
    ``focal_scale`` x the larger side (1: the device's assumption)."""
    width, height = image_size
    focal = focal_scale * float(max(width, height))
    return np.array([[focal, 0.0, (width - 1) / 2.0], [0.0, focal, (height - 1) / 2.0], [0.0, 0.0, 1.0]])


def angles_from_rotation(rotation: np.ndarray) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in degrees of a model-to-camera rotation matrix."""
    nose_axis = rotation @ np.array([0.0, 0.0, -1.0])  # the face's forward direction
    x_axis = rotation @ np.array([1.0, 0.0, 0.0])
    yaw = np.degrees(np.arctan2(nose_axis[0], -nose_axis[2]))
    pitch = np.degrees(np.arctan2(-nose_axis[1], np.hypot(nose_axis[0], nose_axis[2])))
    roll = np.degrees(np.arctan2(x_axis[1], x_axis[0]))
    return float(yaw), float(pitch), float(roll)


def head_pose(points68: np.ndarray, image_size: tuple[int, int]) -> HeadPose:
    """Head pose of one face from its (68, 2) landmarks in an image of (width, height) pixels."""
    points = _points68(points68)
    if not np.isfinite(points).all():
        raise ValueError("head_pose: landmarks contain NaN or infinity")
    return _fit(points, list(POSE_POINTS), image_size)


def head_pose_of_known_points(
    points68: np.ndarray, image_size: tuple[int, int], min_points: int = 6, focal_scale: float = 1.0
) -> HeadPose:
    """Head pose from a partial (68, 2) set, NaN where a point is unknown (hand-marked points
    mapped to the 68 scheme, e.g. CFP's fiducials): the fit uses the POSE_POINTS that are known.
    ``focal_scale``: the camera's focal length in larger image sides (see :func:`camera_matrix`)."""
    points = _points68(points68)
    idx = [i for i in POSE_POINTS if np.isfinite(points[i]).all()]
    if len(idx) < min_points:
        raise ValueError(f"head_pose: {len(idx)} of the pose points are known, expected at least {min_points}")
    return _fit(points, idx, image_size, focal_scale)


def _points68(points68) -> np.ndarray:
    points = np.asarray(points68, dtype=np.float64)
    if points.shape != (lm.NUM_POINTS, 2):
        raise ValueError(f"head_pose: landmarks: expected shape (68, 2), got {points.shape}")
    return points


def _fit(points: np.ndarray, idx: list[int], image_size: tuple[int, int], focal_scale: float = 1.0) -> HeadPose:
    object_points = mean_face_3d()[idx]
    image_points = points[idx]
    cam = camera_matrix(image_size, focal_scale)
    dist = np.zeros(4)
    ok, rvec, tvec = cv2.solvePnP(object_points, image_points, cam, dist, flags=cv2.SOLVEPNP_SQPNP)
    if not ok:
        raise ValueError("head_pose: solvePnP found no pose for these landmarks")
    rvec, tvec = cv2.solvePnPRefineLM(object_points, image_points, cam, dist, rvec, tvec)
    projected, _ = cv2.projectPoints(object_points, rvec, tvec, cam, dist)
    error = float(np.linalg.norm(projected.reshape(-1, 2) - image_points, axis=1).mean())
    rotation, _ = cv2.Rodrigues(rvec)
    yaw, pitch, roll = angles_from_rotation(rotation)
    return HeadPose(yaw=yaw, pitch=pitch, roll=roll, reprojection_error=error)
