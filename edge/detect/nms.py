"""Non-maximum suppression as MediaPipe's face detector does it (the WEIGHTED algorithm).

Plain NMS keeps the best box of each overlapping cluster; weighted NMS replaces it with the
score-weighted mean of the cluster's boxes and keypoints, which is markedly steadier from
frame to frame for BlazeFace, whose neighbouring anchors all fire on one face.
"""

from __future__ import annotations

import numpy as np

from edge.detect.base import box_iou


def weighted_nms(
    boxes: np.ndarray,
    scores: np.ndarray,
    keypoints: np.ndarray,
    iou_threshold: float,
    max_detections: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cluster (N, 4) [x1, y1, x2, y2] boxes by IoU > ``iou_threshold`` around the best one.

    Each cluster becomes one detection: its box and (N, K, 2) keypoints are averaged with the
    scores as weights; its score is the best member's. Returns (boxes, scores, keypoints) of
    the clusters, best first.
    """
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float32).reshape(-1)
    keypoints = np.asarray(keypoints, dtype=np.float32)
    if len(scores) != len(boxes) or keypoints.ndim != 3 or keypoints.shape[::2] != (len(boxes), 2):
        raise ValueError(
            f"weighted_nms: expected (N, 4) boxes, (N,) scores and (N, K, 2) keypoints, got "
            f"{boxes.shape}, {scores.shape} and {keypoints.shape}"
        )
    remaining = np.argsort(-scores, kind="stable")
    out_boxes, out_scores, out_keypoints = [], [], []
    while remaining.size and (max_detections is None or len(out_boxes) < max_detections):
        best = remaining[0]
        overlaps = box_iou(boxes[best], boxes[remaining])
        members = remaining[overlaps > iou_threshold]
        members = members if members.size else remaining[:1]
        weights = scores[members]
        total = float(weights.sum())
        if total > 0:
            box = (boxes[members] * weights[:, None]).sum(axis=0) / total
            points = (keypoints[members] * weights[:, None, None]).sum(axis=0) / total
        else:
            box, points = boxes[best], keypoints[best]
        out_boxes.append(box)
        out_scores.append(scores[best])
        out_keypoints.append(points)
        remaining = remaining[overlaps <= iou_threshold]
        # A degenerate (zero-area) best box has IoU 0 with itself; never loop on it.
        remaining = remaining[remaining != best]
    k = keypoints.shape[1]
    if not out_boxes:
        return (
            np.zeros((0, 4), np.float32),
            np.zeros((0,), np.float32),
            np.zeros((0, k, 2), np.float32),
        )
    return (
        np.stack(out_boxes).astype(np.float32),
        np.asarray(out_scores, dtype=np.float32),
        np.stack(out_keypoints).astype(np.float32),
    )
