"""Real calibration faces for int8, prepared by the device's own code path.

- Landmarks: 300-W *training* split faces (never the validation split the report scores on),
  cropped by the test crop policy (``edge.landmarks.crop``) at the model's input size.
- Identity: CFP folds 1-8 photos (never fold 9, which the report scores on), frontal and
  profile in CFP's own 10:4 ratio, through the device chain: the fiducials' crop box, our PIPNet
  landmarks, the crop the identity model's metadata names (ArcFace 5-point 112x112 or dlib's
  68-point 150x150 chip; ``edge.core.faces.alignment_for``).

Both return uint8 BGR images; :func:`calibration_batch` turns them into the model's float
input with ``edge.runtime.preprocess``, so calibration sees exactly what the device feeds.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from edge.imageio import read_image_bgr
from edge.landmarks.crop import crop_face, landmark_crop_box
from edge.runtime.preprocess import preprocess

IDENTITY_CALIB_FOLDS = (1, 2, 3, 4, 5, 6, 7, 8)


def landmark_faces(
    count: int, size: int, seed: int = 0, root=None, skip: int = 0
) -> tuple[list[np.ndarray], np.ndarray]:
    """``count`` crops (``size`` x ``size`` BGR) from the 300-W training split and their 68
    ground-truth points in crop pixels. The faces are a seeded permutation; ``skip`` passes over
    its first faces, so calibration (skip 0) and method selection (skip = calibration count)
    never share a face."""
    from edge.landmarks.crop import apply_affine
    from training.landmarks.evalcli import split_faces

    faces = split_faces("train", root)
    pick = np.random.default_rng(seed).permutation(len(faces))[skip : skip + count]
    crops, points = [], []
    for i in pick:
        crop, m = crop_face(read_image_bgr(faces[i][0]), landmark_crop_box(faces[i][1]), size)
        crops.append(crop)
        points.append(apply_affine(faces[i][1], m))
    return crops, np.asarray(points)


def identity_faces(
    count: int,
    seed: int = 0,
    root=None,
    folds: Sequence[int] = IDENTITY_CALIB_FOLDS,
    landmarker=None,
    skip: int = 0,
    spec=None,
) -> tuple[list[np.ndarray], np.ndarray]:
    """``count`` faces from CFP ``folds``, aligned as the identity model expects (``spec``, an
    :class:`edge.geometry.align.AlignmentSpec` from its metadata; default ArcFace 112), and their
    yaw in degrees (a seeded permutation of the photos; ``skip`` passes over its first usable
    faces, as for landmarks)."""
    from edge.app.enroll import LANDMARK_MODEL
    from edge.datasets.cfp import cfp_photos, cfp_root, fold_identities
    from edge.geometry.align import ARCFACE_112
    from edge.landmarks.landmarker import Landmarker
    from edge.runtime import load_model
    from training.identity.prepare import cfp_fiducial_face

    if any(f == 9 for f in folds):
        raise ValueError("identity calibration folds: fold 9 is the test fold and must not calibrate")
    root = cfp_root(root)
    ids = [i for f in folds for i in fold_identities(f)]
    photos = cfp_photos(root, identities=ids)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(photos))
    landmarker = landmarker or Landmarker(load_model(LANDMARK_MODEL))
    faces, yaws = [], []
    for i in order:
        photo = photos[i]
        face = cfp_fiducial_face(photo, landmarker, spec or ARCFACE_112)
        if face is None:
            continue
        if skip:
            skip -= 1
            continue
        faces.append(face.aligned)
        yaws.append(face.yaw)
        if len(faces) == count:
            break
    return faces, np.asarray(yaws, dtype=np.float64)


def calibration_batch(images: Sequence[np.ndarray], meta) -> np.ndarray:
    """The model's float32 input batch (its layout, colour order, normalisation)."""
    return preprocess(list(images), meta)
