"""Face detectors behind one interface: ``detect(image_bgr) -> list[Detection]``.

BlazeFace (short/full range, on the shared model runner) is the default; OpenCV's Haar
cascades are the no-model fallback. Build one from a config with :func:`build_detector`.
"""

from edge.detect.base import BLAZEFACE_KEYPOINTS, Detection, FaceDetector, box_iou
from edge.detect.blazeface import (
    SHORT_RANGE_MIN_FACE_FRACTION,
    BlazeFaceDetector,
    choose_range,
)
from edge.detect.haar import HaarDetector
from edge.detect.nms import weighted_nms
from edge.detect.registry import DETECTORS, build_detector

__all__ = [
    "BLAZEFACE_KEYPOINTS",
    "DETECTORS",
    "SHORT_RANGE_MIN_FACE_FRACTION",
    "BlazeFaceDetector",
    "Detection",
    "FaceDetector",
    "HaarDetector",
    "box_iou",
    "build_detector",
    "choose_range",
    "weighted_nms",
]
