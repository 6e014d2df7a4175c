"""Pose check on real CFP photos: does yaw from our landmarks separate frontal from profile?

The device chain exactly: BlazeFace (short range), its largest face -> detector crop policy ->
PIPNet (re-cropped ``refine`` times from its own points, as the device does) -> numpy decoder ->
shared head pose. Reports the share of frontal photos with |yaw| <= 20
degrees and of profile photos with |yaw| >= 45 degrees, the |yaw| distribution of each, and
the photos with no face found (counted as failures of the check).
"""

from __future__ import annotations

import numpy as np
from tqdm import tqdm

from edge.core.faces import largest_face_landmarks
from edge.datasets.cfp import cfp_photos, fold_identities, read_fiducials
from edge.datasets.cfp_fiducials import fiducials_to_ibug68
from edge.detect.registry import build_detector
from edge.geometry.headpose import head_pose, head_pose_of_known_points
from edge.imageio import read_image_bgr
from edge.landmarks.crop import BLAZEFACE_SHORT_CROP
from edge.landmarks.landmarker import Landmarker

FRONTAL_MAX_YAW = 20.0
PROFILE_MIN_YAW = 45.0


def photo_points(
    landmarker: Landmarker, photos, detector=None, progress: bool = True, refine: int | None = None
) -> list[tuple[np.ndarray, tuple[int, int]] | None]:
    """(68, 2) points and the image's (width, height) per photo from the device chain (its
    largest face, ``refine`` re-crops); None where no face was found."""
    detector = detector or build_detector({"type": "blazeface", "range": "short"})
    out: list[tuple[np.ndarray, tuple[int, int]] | None] = []
    for photo in tqdm(photos, disable=not progress, desc="pose check", mininterval=5):
        image = read_image_bgr(photo.image_path)
        pts = largest_face_landmarks(image, detector, BLAZEFACE_SHORT_CROP, landmarker, refine)
        out.append(None if pts is None else (pts, (image.shape[1], image.shape[0])))
    return out


def fiducial_points(photos, progress: bool = True) -> list[tuple[np.ndarray, tuple[int, int]]]:
    """Each photo's hand-marked CFP fiducials mapped to the 68 scheme (NaN where none maps), and
    the image's (width, height)."""
    out = []
    for photo in tqdm(photos, disable=not progress, desc="pose check (fiducials)", mininterval=5):
        points, _ = fiducials_to_ibug68(read_fiducials(photo.fiducials_path), photo.view)
        height, width = read_image_bgr(photo.image_path).shape[:2]
        out.append((points, (width, height)))
    return out


def photo_yaws(
    landmarker: Landmarker, photos, detector=None, progress: bool = True, refine: int | None = None
) -> list[float | None]:
    """|yaw| in degrees per photo from the device chain (its largest face, ``refine`` re-crops);
    None where no face was found."""
    return [
        None if item is None else abs(head_pose(*item).yaw)
        for item in photo_points(landmarker, photos, detector, progress, refine)
    ]


def fiducial_yaws(photos, progress: bool = True) -> list[float]:
    """|yaw| in degrees per photo from its hand-marked CFP fiducials (mapped to the 68 scheme,
    the pose points CFP marks), through the same head-pose fit as the device's landmarks."""
    return [abs(head_pose_of_known_points(*item).yaw) for item in fiducial_points(photos, progress)]


def pose_check(
    landmarker: Landmarker | None, cfp_root, folds, progress: bool = True, refine: int | None = None
) -> dict:
    """The pose check through the device chain, or with ``landmarker=None`` on the photos'
    hand-marked fiducials (what the head-pose fit reads from true points)."""
    ids = [i for f in folds for i in fold_identities(f)]
    report: dict = {"folds": list(folds)}
    for view in ("frontal", "profile"):
        photos = cfp_photos(cfp_root, identities=ids, views=(view,))
        if landmarker is None:
            yaws = fiducial_yaws(photos, progress=progress)
        else:
            yaws = photo_yaws(landmarker, photos, progress=progress, refine=refine)
        found = np.array([y for y in yaws if y is not None])
        ok = (found <= FRONTAL_MAX_YAW) if view == "frontal" else (found >= PROFILE_MIN_YAW)
        key = f"share_abs_yaw_le_{FRONTAL_MAX_YAW:g}" if view == "frontal" else f"share_abs_yaw_ge_{PROFILE_MIN_YAW:g}"
        report[view] = {
            "photos": len(photos),
            "no_face": int(sum(y is None for y in yaws)),
            key: float(ok.sum() / len(photos)) if photos else float("nan"),
            "abs_yaw_percentiles_10_50_90": [round(float(v), 1) for v in np.percentile(found, [10, 50, 90])]
            if len(found)
            else [],
        }
    return report
