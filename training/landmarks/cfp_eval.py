"""Landmark error on CFP photos, over the points CFP's fiducials mark (frontal and profile).

CFP marks 30 points on the visible half of every face; :mod:`edge.datasets.cfp_fiducials` places
them in the iBUG 68 scheme (all 30 on a frontal photo, 21 on a profile). Each photo goes through
the device chain: BlazeFace (short range), its largest face -> the measured crop policy -> PIPNet, re-cropped
``refine`` times from its own points. The error of a photo is the mean distance between the
mapped fiducials and the predicted twins, divided by the diagonal of the box around all 30 of
the photo's fiducials (the marked half of the face: on a frontal photo that box is about half a
face wide, so frontal and profile figures are each comparable with themselves, not with 300-W's
inter-ocular NME). Photos where BlazeFace finds no face are counted and left out of the NME.
"""

from __future__ import annotations

import numpy as np
from tqdm import tqdm

from edge.core.faces import device_refine, largest_face_landmarks
from edge.datasets.cfp import cfp_photos, fold_identities, read_fiducials
from edge.datasets.cfp_fiducials import fiducials_to_ibug68
from edge.imageio import read_image_bgr
from edge.landmarks.crop import BLAZEFACE_SHORT_CROP

# Point groups of the 68 scheme (for the per-group breakdown).
GROUPS = {
    "jaw": range(0, 17),
    "brows": range(17, 27),
    "nose": range(27, 36),
    "eyes": range(36, 48),
    "mouth": range(48, 68),
}


def fiducial_diagonal(points30: np.ndarray) -> float:
    """The diagonal of the box around a photo's 30 fiducials (the face size CFP errors divide by)."""
    p = np.asarray(points30, dtype=np.float64)
    return float(np.linalg.norm(p.max(axis=0) - p.min(axis=0)))


def photo_errors(pred68: np.ndarray, points30: np.ndarray, view: str) -> np.ndarray:
    """(68,) distance / fiducial diagonal at every mapped point, NaN where nothing maps."""
    target, mask = fiducials_to_ibug68(points30, view)
    err = np.full(68, np.nan)
    err[mask] = np.linalg.norm(np.asarray(pred68, dtype=np.float64)[mask] - target[mask], axis=1)
    return err / fiducial_diagonal(points30)


def _summary(per_photo: np.ndarray, per_point: np.ndarray, photos: int, no_face: int) -> dict:
    if not len(per_photo):
        return {"photos": photos, "no_face": no_face, "scored": 0}
    groups = {}
    for name, idx in GROUPS.items():
        vals = per_point[:, list(idx)]
        vals = vals[np.isfinite(vals)]
        if len(vals):
            groups[name] = round(float(vals.mean()), 5)
    return {
        "photos": photos,
        "no_face": no_face,
        "scored": int(len(per_photo)),
        "nme": round(float(per_photo.mean()), 5),
        "nme_median": round(float(np.median(per_photo)), 5),
        "nme_p90": round(float(np.percentile(per_photo, 90)), 5),
        "share_over_0.1": round(float((per_photo > 0.1).mean()), 4),
        "nme_by_group": groups,
    }


def cfp_landmark_errors(
    landmarker, cfp_root, folds, refine: int | None = None, detector=None, progress: bool = True
) -> dict:
    """The report of ``python -m training.landmarks eval --cfp-root DIR --folds LIST``."""
    from edge.detect import build_detector

    detector = detector or build_detector({"type": "blazeface", "range": "short"})
    refine = device_refine(landmarker) if refine is None else refine
    ids = [i for f in folds for i in fold_identities(f)]
    report: dict = {
        "folds": list(folds),
        "refine": refine,
        "normaliser": "diagonal of the box around the photo's 30 CFP fiducials",
        "points": "CFP fiducials with an iBUG-68 twin (edge.datasets.cfp_fiducials): 30 frontal, 21 profile",
    }
    for view in ("frontal", "profile"):
        photos = cfp_photos(cfp_root, identities=ids, views=(view,))
        per_photo, per_point, no_face = [], [], 0
        for photo in tqdm(photos, disable=not progress, desc=f"CFP {view}", mininterval=5):
            image = read_image_bgr(photo.image_path)
            pred = largest_face_landmarks(image, detector, BLAZEFACE_SHORT_CROP, landmarker, refine)
            if pred is None:
                no_face += 1
                continue
            err = photo_errors(pred, read_fiducials(photo.fiducials_path), view)
            per_point.append(err)
            per_photo.append(float(np.nanmean(err)))
        report[view] = _summary(np.asarray(per_photo), np.asarray(per_point).reshape(-1, 68), len(photos), no_face)
    return report
