"""MediaPipe BlazeFace (short and full range) on the shared model runner.

The frame is letterboxed into the model's square input (aspect ratio kept, black borders, and
a wider border on a second try when the first finds nothing), converted to RGB in [-1, 1] by
:func:`edge.runtime.preprocess`, run, and decoded against SSD anchors: box centre/size and
six keypoints are offsets from the anchor centre in input pixels, scores are clipped logits
through a sigmoid. Overlapping detections are merged by weighted NMS and mapped back to the
frame's pixels.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from edge.detect.anchors import AnchorOptions, generate_anchors
from edge.detect.base import Detection
from edge.detect.nms import weighted_nms
from edge.runtime import ModelMeta, load_model, meta_path_for, preprocess
from edge.runtime.preprocess import resize_to

MODEL_DIR = Path(__file__).resolve().parents[1] / "models" / "detector"
MODEL_FILES = {
    "short": "face_detection_short_range.tflite",
    "full": "face_detection_full_range.tflite",
}

# Padding policy (measured on CFP and on CFP photos shrunk into 640x480 frames; see the
# detector README). BlazeFace misses some faces that fill the whole frame (tight crops such as
# CFP's), and a border around the frame recovers them, but a fixed border shrinks every face
# and costs short range most of its faces under ~25% of the frame width. So the first pass
# runs on the frame as it is, and only when it finds nothing is the frame run again with
# ``retry_margin`` of its longer side added as black border on every side.
DEFAULT_RETRY_MARGIN = {"short": 0.25, "full": 1.0}

# Face width / frame's longer side above which short range beats full range. Measured with CFP
# photos shrunk into a 640x480 frame: at ~0.16 short range finds 96% of frontal and 90% of
# profile faces (full range 94% / 76%); at ~0.13 short range drops to 65% / 68% while full
# range keeps 94% / 66%. MediaPipe's own guidance: short range within ~2 m of the camera, full
# range up to ~5 m.
SHORT_RANGE_MIN_FACE_FRACTION = 0.16


def choose_range(expected_face_fraction: float) -> str:
    """The BlazeFace range for faces of a given size: short from 16% of the frame up, else full.

    ``expected_face_fraction`` is the typical face width divided by the frame's longer side,
    in (0, 1]: a door camera a metre away sees faces of 0.2-0.5; a room camera 3-5 m away,
    0.04-0.12 (720p, ~60 degree lens).
    """
    if not 0 < expected_face_fraction <= 1:
        raise ValueError(f"choose_range: expected_face_fraction must be in (0, 1], got {expected_face_fraction}")
    return "short" if expected_face_fraction >= SHORT_RANGE_MIN_FACE_FRACTION else "full"


def _require(mapping: dict, key: str, source: Path, what: str):
    if not isinstance(mapping, dict) or key not in mapping:
        raise ValueError(f"{source}: field 'extra.{what}{key}' is missing (BlazeFace settings)")
    return mapping[key]


class _Letterbox:
    """Where the frame landed inside the model input, to map detections back to the frame."""

    def __init__(self, frame_w: int, frame_h: int, input_w: int, input_h: int, margin: float):
        pad = margin * max(frame_w, frame_h)
        scale = min(input_w / (frame_w + 2 * pad), input_h / (frame_h + 2 * pad))
        self.new_w = max(1, int(round(frame_w * scale)))
        self.new_h = max(1, int(round(frame_h * scale)))
        self.off_x = (input_w - self.new_w) // 2
        self.off_y = (input_h - self.new_h) // 2
        # Per-axis factors from the rounded size, so the mapping back is exact at the borders.
        self.scale_x = self.new_w / frame_w
        self.scale_y = self.new_h / frame_h

    def to_frame(self, xy: np.ndarray) -> np.ndarray:
        """Input-tensor pixels (..., 2) -> frame pixels."""
        out = np.empty_like(xy, dtype=np.float32)
        out[..., 0] = (xy[..., 0] - self.off_x) / self.scale_x
        out[..., 1] = (xy[..., 1] - self.off_y) / self.scale_y
        return out


class BlazeFaceDetector:
    """BlazeFace face detector; ``detect(image_bgr)`` returns detections best first.

    ``model_range`` picks the vendored model ("short": 128x128, faces near the camera;
    "full": 192x192, small faces); ``model_path`` overrides it with any BlazeFace-style model
    whose metadata holds ``extra.anchors`` and ``extra.decoder``. ``score_threshold`` defaults
    to the model's own (``extra.decoder.min_score_thresh``: 0.5 short, 0.6 full); ``nms_iou``
    is the IoU above which detections are merged. ``margin`` is a black border added around
    every frame, as a fraction of its longer side (default none); ``retry_margin`` the border
    of the second pass run on frames where the first found nothing (default 0.25 short, 1.0
    full; 0 turns the retry off). See DEFAULT_RETRY_MARGIN for why.
    """

    def __init__(
        self,
        model_range: str = "short",
        score_threshold: float | None = None,
        nms_iou: float = 0.3,
        threads: int = 1,
        margin: float = 0.0,
        retry_margin: float | None = None,
        model_path: os.PathLike | str | None = None,
    ):
        if model_range not in MODEL_FILES:
            raise ValueError(f"blazeface: range must be one of {sorted(MODEL_FILES)}, got {model_range!r}")
        path = Path(model_path) if model_path is not None else MODEL_DIR / MODEL_FILES[model_range]
        self.runner = load_model(path, threads=threads)
        meta: ModelMeta = self.runner.meta
        source = meta_path_for(path)
        anchors_cfg = _require(meta.extra, "anchors", source, "")
        decoder = _require(meta.extra, "decoder", source, "")
        width, height = meta.input_size
        self.anchors = generate_anchors(AnchorOptions.from_dict(anchors_cfg, width, height))
        self.num_keypoints = int(_require(decoder, "num_keypoints", source, "decoder."))
        self.keypoint_offset = int(_require(decoder, "keypoint_coord_offset", source, "decoder."))
        self.box_offset = int(_require(decoder, "box_coord_offset", source, "decoder."))
        self.scales = np.array(
            [float(_require(decoder, k, source, "decoder.")) for k in ("x_scale", "y_scale")]
            + [float(_require(decoder, k, source, "decoder.")) for k in ("w_scale", "h_scale")],
            dtype=np.float32,
        )
        self.score_clip = float(decoder.get("score_clipping_thresh", 100.0))
        if score_threshold is None:
            score_threshold = float(_require(decoder, "min_score_thresh", source, "decoder."))
        if not 0 < score_threshold < 1:
            raise ValueError(f"blazeface: score_threshold must be in (0, 1), got {score_threshold}")
        if not 0 < nms_iou <= 1:
            raise ValueError(f"blazeface: nms_iou must be in (0, 1], got {nms_iou}")
        if retry_margin is None:
            retry_margin = DEFAULT_RETRY_MARGIN[model_range] if model_path is None else 0.0
        for name, value in (("margin", margin), ("retry_margin", retry_margin)):
            if not 0 <= value <= 2:
                raise ValueError(f"blazeface: {name} must be in [0, 2], got {value}")
        self.score_threshold = float(score_threshold)
        self.nms_iou = float(nms_iou)
        self.margin = float(margin)
        self.retry_margin = float(retry_margin)
        self.model_range = model_range
        self._check_outputs(path)

    def _check_outputs(self, path: Path) -> None:
        names = self.runner.meta.output_names
        if len(names) != 2:
            raise ValueError(f"{path}: expected 2 output_names (regressors, logits), got {list(names)}")
        regressors, logits = names
        n = len(self.anchors)
        coords = self.keypoint_offset + 2 * self.num_keypoints
        reg_shape = self.runner.output_shapes.get(regressors)
        cls_shape = self.runner.output_shapes.get(logits)
        if reg_shape is None or len(reg_shape) != 3 or reg_shape[1:] != (n, coords):
            raise ValueError(
                f"{path}: output '{regressors}' has shape {reg_shape}, expected (1, {n}, {coords}) for {n} anchors"
            )
        if cls_shape is None or len(cls_shape) != 3 or cls_shape[1:] != (n, 1):
            raise ValueError(f"{path}: output '{logits}' has shape {cls_shape}, expected (1, {n}, 1) for {n} anchors")

    @property
    def meta(self) -> ModelMeta:
        return self.runner.meta

    def _letterbox(self, image: np.ndarray, margin: float) -> tuple[np.ndarray, _Letterbox]:
        width, height = self.runner.meta.input_size
        frame_h, frame_w = image.shape[:2]
        box = _Letterbox(frame_w, frame_h, width, height, margin)
        canvas = np.zeros((height, width, 3), dtype=np.uint8)
        resized = resize_to(image, box.new_w, box.new_h)
        canvas[box.off_y : box.off_y + box.new_h, box.off_x : box.off_x + box.new_w] = resized
        return canvas, box

    def detect(self, image_bgr: np.ndarray) -> list[Detection]:
        """Faces in a uint8 BGR (or gray) frame, best first; boxes may reach past its border."""
        if not isinstance(image_bgr, np.ndarray) or image_bgr.dtype != np.uint8:
            raise TypeError("blazeface: detect() expected a uint8 numpy image")
        if image_bgr.ndim == 2 or (image_bgr.ndim == 3 and image_bgr.shape[2] == 1):
            image_bgr = cv2.cvtColor(image_bgr, cv2.COLOR_GRAY2BGR)
        if image_bgr.ndim != 3 or image_bgr.shape[2] != 3 or 0 in image_bgr.shape[:2]:
            raise ValueError(f"blazeface: detect() expected an (H, W, 3) BGR image, got {image_bgr.shape}")
        detections = self._detect_once(image_bgr, self.margin)
        if not detections and self.retry_margin > self.margin:
            detections = self._detect_once(image_bgr, self.retry_margin)
        return detections

    def _detect_once(self, image_bgr: np.ndarray, margin: float) -> list[Detection]:
        canvas, letterbox = self._letterbox(image_bgr, margin)
        outputs = self.runner.run(preprocess([canvas], self.runner.meta))
        regressors, logits = (outputs[name][0] for name in self.runner.meta.output_names[:2])
        return self._decode(regressors, logits.reshape(-1), letterbox)

    def _decode(self, regressors: np.ndarray, logits: np.ndarray, letterbox: _Letterbox) -> list[Detection]:
        clipped = np.clip(logits.astype(np.float64), -self.score_clip, self.score_clip)
        scores = 1.0 / (1.0 + np.exp(-clipped))
        keep = np.flatnonzero(scores >= self.score_threshold)
        if keep.size == 0:
            return []
        raw = regressors[keep]
        anchors = self.anchors[keep]
        width, height = self.runner.meta.input_size
        size = np.array([width, height], dtype=np.float32)
        centre_anchor, size_anchor = anchors[:, :2], anchors[:, 2:]
        b = self.box_offset
        # Offsets are in input pixels relative to the anchor centre, scaled by the anchor size.
        centre = raw[:, b : b + 2] / self.scales[:2] * size_anchor + centre_anchor
        extent = raw[:, b + 2 : b + 4] / self.scales[2:] * size_anchor
        boxes = np.concatenate([centre - extent / 2, centre + extent / 2], axis=1) * np.tile(size, 2)
        k0 = self.keypoint_offset
        points = raw[:, k0 : k0 + 2 * self.num_keypoints].reshape(-1, self.num_keypoints, 2)
        points = (points / self.scales[:2] * size_anchor[:, None] + centre_anchor[:, None]) * size

        boxes, kept_scores, points = weighted_nms(boxes, scores[keep], points, self.nms_iou)
        corners = letterbox.to_frame(boxes.reshape(-1, 2, 2)).reshape(-1, 4)
        points = letterbox.to_frame(points)
        return [
            Detection(box=corners[i], score=float(kept_scores[i]), keypoints=points[i]) for i in range(len(corners))
        ]
