"""OpenCV Haar cascades: the detector that needs no model file.

The frontal cascade runs on the frame; the profile cascade, which only knows faces turned one
way, runs on the frame and on its mirror image. Overlapping boxes from the three passes are
merged. Haar is far weaker than BlazeFace on profiles and gives no keypoints; it is the
fallback for a device where no BlazeFace model can run.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from edge.detect.base import Detection
from edge.detect.nms import weighted_nms

FRONTAL_CASCADE = "haarcascade_frontalface_default.xml"
PROFILE_CASCADE = "haarcascade_profileface.xml"


def _load_cascade(name: str):
    if not hasattr(cv2, "CascadeClassifier"):
        raise RuntimeError(
            f"haar: this OpenCV ({cv2.__version__}) has no CascadeClassifier (OpenCV 5 moved Haar "
            "cascades out of the main package); install opencv-python-headless<5 or use "
            '{"type": "blazeface"}'
        )
    folder = Path(getattr(getattr(cv2, "data", None), "haarcascades", "") or ".")
    path = folder / name
    if not path.is_file():
        raise RuntimeError(f"haar: cascade file {path} not found (expected OpenCV's bundled {name})")
    cascade = cv2.CascadeClassifier(str(path))
    if cascade.empty():
        raise RuntimeError(f"haar: cascade file {path} could not be loaded")
    return cascade


class HaarDetector:
    """Frontal + (mirrored) profile Haar cascades; ``detect(image_bgr)`` best first.

    As with BlazeFace, a frame in which nothing is found is searched once more with a black
    border of ``retry_margin`` x its longer side: the cascades miss most faces that fill the
    whole frame (CFP frontal crops: 58% found without the border, 96% with it).

    Frames are shrunk so the longer side is at most ``max_side`` pixels (cascades are slow and
    gain nothing from resolution beyond that). The score is ``n / (n + 5)`` for a box backed
    by ``n`` neighbouring raw detections: a ranking, not a probability.
    """

    def __init__(
        self,
        scale_factor: float = 1.1,
        min_neighbors: int = 4,
        min_face_fraction: float = 0.05,
        profile: bool = True,
        max_side: int = 640,
        nms_iou: float = 0.3,
        retry_margin: float = 0.25,
    ):
        if not scale_factor > 1:
            raise ValueError(f"haar: scale_factor must be > 1, got {scale_factor}")
        if not (isinstance(min_neighbors, int) and min_neighbors >= 0):
            raise ValueError(f"haar: min_neighbors must be a non-negative integer, got {min_neighbors}")
        if not 0 < min_face_fraction < 1:
            raise ValueError(f"haar: min_face_fraction must be in (0, 1), got {min_face_fraction}")
        if not 0 <= retry_margin <= 2:
            raise ValueError(f"haar: retry_margin must be in [0, 2], got {retry_margin}")
        if not (isinstance(max_side, int) and max_side >= 64):
            raise ValueError(f"haar: max_side must be an integer >= 64, got {max_side}")
        self.frontal = _load_cascade(FRONTAL_CASCADE)
        self.profile = _load_cascade(PROFILE_CASCADE) if profile else None
        self.scale_factor = float(scale_factor)
        self.min_neighbors = int(min_neighbors)
        self.min_face_fraction = float(min_face_fraction)
        self.max_side = max_side
        self.nms_iou = float(nms_iou)
        self.retry_margin = float(retry_margin)

    def _run(self, cascade, gray: np.ndarray, min_size: int) -> tuple[np.ndarray, np.ndarray]:
        boxes, neighbours = cascade.detectMultiScale2(
            gray,
            scaleFactor=self.scale_factor,
            minNeighbors=self.min_neighbors,
            minSize=(min_size, min_size),
        )
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        neighbours = np.asarray(neighbours, dtype=np.float32).reshape(-1)
        return boxes, neighbours

    def detect(self, image_bgr: np.ndarray) -> list[Detection]:
        if not isinstance(image_bgr, np.ndarray) or image_bgr.dtype != np.uint8:
            raise TypeError("haar: detect() expected a uint8 numpy image")
        gray = image_bgr if image_bgr.ndim == 2 else cv2.cvtColor(image_bgr, cv2.COLOR_BGR2GRAY)
        height, width = gray.shape[:2]
        scale = min(1.0, self.max_side / max(height, width))
        if scale < 1.0:
            gray = cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        gray = cv2.equalizeHist(gray)
        detections = self._detect_once(gray, scale, border=0)
        if not detections and self.retry_margin > 0:
            border = int(round(self.retry_margin * max(gray.shape[:2])))
            detections = self._detect_once(gray, scale, border)
        return detections

    def _detect_once(self, gray: np.ndarray, scale: float, border: int) -> list[Detection]:
        if border:
            gray = cv2.copyMakeBorder(gray, border, border, border, border, cv2.BORDER_CONSTANT)
        min_size = max(20, int(self.min_face_fraction * min(gray.shape[:2])))
        found = [self._run(self.frontal, gray, min_size)]
        if self.profile is not None:
            found.append(self._run(self.profile, gray, min_size))
            mirrored, counts = self._run(self.profile, cv2.flip(gray, 1), min_size)
            mirrored[:, 0] = gray.shape[1] - mirrored[:, 0] - mirrored[:, 2]
            found.append((mirrored, counts))
        xywh = np.concatenate([boxes for boxes, _ in found])
        counts = np.concatenate([n for _, n in found])
        if len(xywh) == 0:
            return []
        corners = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        corners = (corners - border) / scale
        scores = counts / (counts + 5.0)
        boxes, scores, _ = weighted_nms(corners, scores, np.zeros((len(corners), 0, 2), np.float32), self.nms_iou)
        empty = np.zeros((0, 2), np.float32)
        return [Detection(box=b, score=float(s), keypoints=empty) for b, s in zip(boxes, scores)]
