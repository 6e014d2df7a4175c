"""What every face detector returns, and the interface it implements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

# BlazeFace's six keypoints, in model output order. "Right"/"left" are the subject's own
# (so the right eye appears on the left of an unmirrored photo).
BLAZEFACE_KEYPOINTS = (
    "right_eye",
    "left_eye",
    "nose_tip",
    "mouth_centre",
    "right_ear_tragion",
    "left_ear_tragion",
)


@dataclass(frozen=True, eq=False)
class Detection:
    """One face in the input image's pixel coordinates.

    box: (4,) float32 [x1, y1, x2, y2]; score: 0..1; keypoints: (K, 2) float32 [x, y] —
    BlazeFace gives K=6 in :data:`BLAZEFACE_KEYPOINTS` order, Haar gives K=0.
    """

    box: np.ndarray
    score: float
    keypoints: np.ndarray

    def __post_init__(self) -> None:
        box = np.asarray(self.box, dtype=np.float32).reshape(-1)
        if box.shape != (4,):
            raise ValueError(f"Detection.box: expected 4 values [x1, y1, x2, y2], got {box.shape}")
        keypoints = np.asarray(self.keypoints, dtype=np.float32).reshape(-1, 2)
        object.__setattr__(self, "box", box)
        object.__setattr__(self, "score", float(self.score))
        object.__setattr__(self, "keypoints", keypoints)

    @property
    def width(self) -> float:
        return float(self.box[2] - self.box[0])

    @property
    def height(self) -> float:
        return float(self.box[3] - self.box[1])

    def to_dict(self) -> dict:
        """JSON-ready: {"box": [x1, y1, x2, y2], "score": s, "keypoints": [[x, y], ...]}."""
        return {
            "box": [round(float(v), 2) for v in self.box],
            "score": round(self.score, 5),
            "keypoints": [[round(float(x), 2), round(float(y), 2)] for x, y in self.keypoints],
        }


@runtime_checkable
class FaceDetector(Protocol):
    """Anything with ``detect(image_bgr) -> list[Detection]``, sorted by score, highest first.

    ``image_bgr`` is a uint8 (H, W, 3) BGR frame (or (H, W) gray); boxes come back in its pixels.
    """

    def detect(self, image_bgr: np.ndarray) -> list[Detection]: ...


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one [x1, y1, x2, y2] box against an (N, 4) array of them; (N,) float32."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[2], boxes[:, 2])
    y2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = max(float(box[2] - box[0]), 0.0) * max(float(box[3] - box[1]), 0.0)
    areas = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    union = area + areas - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0).astype(np.float32)
