"""Scoring a landmark model on any folder of images with iBUG .pts beside them.

The model is a training checkpoint (.pt) or an exported .onnx/.tflite run through the edge
runner; faces are cropped by the test policy (square around the 68-point box, side 1.2x its
larger side) and decoded by the device's numpy decoder. The report adds a breakdown by the
ground truth's |yaw| (shared head-pose code), and a CED plot when asked.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge.datasets.pts import read_pts
from edge.geometry.headpose import head_pose
from edge.imageio import list_images, read_image_bgr
from edge.landmarks.landmarker import Landmarker
from edge.metrics.landmarks import ced_curve, summarise

YAW_BINS = ((0, 15), (15, 30), (30, 45), (45, 180))


def load_landmarker(model: Path, threads: int = 1):
    model = Path(model)
    if model.suffix == ".pt":
        from training.landmarks.train import load_checkpoint
        from training.nn.runner import TorchRunner

        net, meta, _ = load_checkpoint(model)
        return Landmarker(TorchRunner(net, meta))
    from edge.runtime.runner import load_model

    return Landmarker(load_model(model, threads=threads))


def labelled_images(folder: Path) -> list[tuple[Path, np.ndarray]]:
    """(image, 68 points) for every image under ``folder`` that has a .pts beside it."""
    faces = []
    for image in list_images(folder):
        pts = image.with_suffix(".pts")
        if pts.exists():
            faces.append((image, read_pts(pts)))
    if not faces:
        raise FileNotFoundError(f"{folder}: no images with an iBUG .pts file beside them")
    return faces


def yaw_of(path: Path, points: np.ndarray) -> float:
    h, w = read_image_bgr(path).shape[:2]
    return head_pose(points, (w, h)).yaw


def score(errors: np.ndarray, yaws: np.ndarray) -> dict:
    report = summarise(errors).as_dict()
    report["per_yaw_bin"] = {}
    for lo, hi in YAW_BINS:
        sel = (np.abs(yaws) >= lo) & (np.abs(yaws) < hi)
        key = f"{lo}-{hi}" if hi < 180 else f"{lo}+"
        report["per_yaw_bin"][key] = summarise(errors[sel]).as_dict() if sel.any() else {"count": 0}
    return report


def plot_ced(curves: dict[str, np.ndarray], out: Path, threshold: float = 0.1) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for label, errors in curves.items():
        t, f = ced_curve(errors, threshold)
        ax.plot(t, f, label=f"{label} (NME {np.mean(errors):.4f})")
    ax.set_xlabel("NME (inter-ocular)")
    ax.set_ylabel("fraction of faces")
    ax.set_xlim(0, threshold)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def split_faces(part: str, root=None) -> list[tuple[Path, np.ndarray]]:
    """(image path, 68 points) of our fixed 300-W ``"train"`` or ``"val"`` split (split_300w defaults)."""
    from edge.datasets.w300 import list_300w, load_landmarks, split_300w

    train, val = split_300w(list_300w(root))
    return [(face.image_path, load_landmarks(face)) for face in {"train": train, "val": val}[part]]


# A detection is the labelled face when its crop box overlaps the ground truth's landmark crop box
# at least this much (both boxes drawn by the same crop policy, so a hit overlaps far more).
MATCH_IOU = 0.3


def predict_from_detector(
    landmarker: Landmarker, faces: list[tuple[Path, np.ndarray]], refine: int, detector=None, progress: bool = True
) -> tuple[np.ndarray, int]:
    """The device chain on labelled faces: BlazeFace (short range) -> the measured crop policy ->
    PIPNet re-cropped ``refine`` times. Returns (N, 68, 2) points (NaN where no detection
    overlaps the labelled face) and how many faces had none."""
    from tqdm import tqdm

    from edge.core.faces import face_landmarks
    from edge.detect import build_detector
    from edge.detect.base import box_iou
    from edge.landmarks.crop import BLAZEFACE_SHORT_CROP, landmark_crop_box

    detector = detector or build_detector({"type": "blazeface", "range": "short"})
    preds, missed = [], 0
    for path, gt in tqdm(faces, disable=not progress, desc="eval (detector boxes)", mininterval=5):
        image = read_image_bgr(path)
        target = landmark_crop_box(gt)
        boxes = [BLAZEFACE_SHORT_CROP.crop_box(d.box) for d in detector.detect(image)]
        overlaps = box_iou(target, np.array(boxes))
        if not boxes or overlaps.max() < MATCH_IOU:
            missed += 1
            preds.append(np.full((68, 2), np.nan))
            continue
        box = boxes[int(np.argmax(overlaps))]
        preds.append(face_landmarks(image, [box], landmarker, refine=refine)[0])
    return np.stack(preds), missed
