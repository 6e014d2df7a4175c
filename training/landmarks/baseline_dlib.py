"""dlib's 68-point shape predictor as a landmark baseline, measured like our PIPNet.

``DlibLandmarker.predict(image_bgr, crop_boxes)`` has the interface of
``edge.landmarks.landmarker.Landmarker.predict``: the same square crop boxes go in (on
labelled data ``landmark_crop_box(gt)``), (N, 68, 2) x,y image pixels come out, and the same
NME/FR/AUC code scores both, so the two can be compared face for face in one run.

The model is ``shape_predictor_68_face_landmarks.dat`` as shipped in the
``face-recognition-models`` wheel (the optional ``baseline`` extra); nothing is downloaded.
This is a comparison tool only: never a runtime dependency, and never shipped, as the dlib
model was trained on iBUG 300-W, whose images are for research use only.

Caveats for reading its numbers:
- dlib's model was trained on iBUG 300-W (its AFW, HELEN-train, LFPW-train and iBUG faces with
  the 68 points), which includes the photos of our 300-W folder (all of AFW, part of HELEN's
  training set), validation faces and all. That favours dlib: here it is largely scored on
  its own training data, so its numbers are an optimistic bound, not held-out accuracy.
- dlib's predictor starts from boxes of dlib's own HOG frontal face detector, which sit
  differently from our landmark crop box. To be fair to it we map our crop box to the box it
  expects with a linear map (centre shift and scale, the form of
  ``edge.landmarks.crop.DetectorCropPolicy``) fitted on the 300-W training split only
  (``python -m training.landmarks.baseline_dlib fit``; the constants below). One linear map
  cannot follow how dlib's boxes move with yaw, and dlib's cascade fails often when started
  away from its own box, so the mapped box understates dlib; ``boxes="detector"`` (CLI
  ``--boxes detector``) starts it from its own detection of that face instead.
- dlib's points sit about 1.2 px left of and 0.5 px above our annotations (measured on the
  training split, ``DLIB_POINT_OFFSET``): a convention difference that ``--offset`` removes.
- dlib returns whole-pixel points (its Python API rounds them), which adds about 0.4 px of
  rounding error per point.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Sequence

import cv2
import numpy as np

from edge.detect.base import box_iou
from edge.imageio import read_image_bgr
from edge.landmarks.crop import DetectorCropPolicy, landmark_crop_box
from edge.metrics.landmarks import nme, summarise
from training.landmarks.evalcli import labelled_images, split_faces
from training.nn.dlib_format import installed_model_file

N_POINTS = 68
MODEL_FILE = "shape_predictor_68_face_landmarks.dat"

# Crop box -> the box dlib's shape predictor expects: dlib centre = crop centre + shift * crop
# side, dlib side = scale * crop side (crop side = LANDMARK_CROP_SCALE x the landmark box's
# larger side). Measured by `python -m training.landmarks.baseline_dlib fit`: dlib's HOG frontal
# face detector (upsample 1) on the 976 faces of the 300-W training split (split_300w, seed 0,
# val_fraction 0.2), each face matched to the detection of highest IoU (>= 0.3) with its tight
# 68-point box, 931 of 976 matched; medians over those (interquartile ranges: shift_x 0.097,
# shift_y 0.048, scale 0.154). dlib boxes are measured as the corner points its predictor maps
# to the unit square: centre ((l + r) / 2, (t + b) / 2), side r - l.
DLIB_SHIFT_X = 0.0146
DLIB_SHIFT_Y = -0.0854
DLIB_SCALE = 0.7924
# Median (dlib point - annotated point), x and y pixels, over all points of those 931 faces with
# dlib started from its own detection: mostly a coordinate convention difference (our .pts vs
# dlib's training annotations), not an error of dlib's to count against it.
DLIB_POINT_OFFSET = (-1.221, -0.516)
FIT_UPSAMPLE = 1
FIT_MIN_IOU = 0.3
# Where dlib's predictor starts (see DlibLandmarker).
BOX_SOURCES = ("map", "detector")


def default_box_map() -> DetectorCropPolicy:
    """Our crop box -> dlib's box, with the fitted constants (the same linear form as
    ``DetectorCropPolicy``, applied from our crop box to the box dlib expects)."""
    return DetectorCropPolicy(shift_x=DLIB_SHIFT_X, shift_y=DLIB_SHIFT_Y, scale=DLIB_SCALE)


def _import_dlib():
    try:
        import dlib
    except ImportError:
        raise ImportError(
            "dlib is not installed: the dlib baseline needs the optional extra "
            "(pip install -e '.[baseline]', i.e. dlib-bin and face-recognition-models)"
        ) from None
    return dlib


def model_path() -> Path:
    """The 68-point predictor file inside the installed ``face_recognition_models`` package."""
    return installed_model_file(MODEL_FILE)


def dlib_image(image_bgr: np.ndarray) -> np.ndarray:
    """What dlib takes: a contiguous uint8 RGB (H, W, 3) or grayscale (H, W) array."""
    image = np.asarray(image_bgr)
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {image.dtype}")
    if image.ndim == 2:
        return np.ascontiguousarray(image)
    if image.ndim == 3 and image.shape[2] == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if image.ndim == 3 and image.shape[2] == 1:
        return np.ascontiguousarray(image[:, :, 0])
    raise ValueError(f"expected a BGR (H, W, 3) or grayscale (H, W) image, got shape {image.shape}")


def rect_to_box(rect) -> np.ndarray:
    """A dlib rectangle as [l, t, r, b] float pixels: the corners its predictor maps to the unit square."""
    return np.array([rect.left(), rect.top(), rect.right(), rect.bottom()], dtype=np.float64)


def box_to_rect(box: np.ndarray):
    """[l, t, r, b] pixels (corner points, as ``rect_to_box``) -> a dlib rectangle (whole pixels)."""
    dlib = _import_dlib()
    left, top, right, bottom = (int(round(v)) for v in np.asarray(box, dtype=np.float64))
    return dlib.rectangle(left, top, right, bottom)


def best_match(box: np.ndarray, candidates: Sequence[np.ndarray], min_iou: float) -> int | None:
    """Index of the candidate box of highest IoU with ``box``, None if none reaches ``min_iou``."""
    if not len(candidates):
        return None
    ious = box_iou(np.asarray(box), np.stack(candidates))
    best = int(np.argmax(ious))
    return best if ious[best] >= min_iou else None


class DlibLandmarker:
    """68 landmarks from dlib's shape predictor, started from our square crop boxes.

    ``boxes`` says where dlib starts from:
    - ``"map"``: the crop box through ``box_map`` (default: the fitted constants);
    - ``"detector"``: dlib's own HOG detection (``upsample``) of highest IoU (>= ``min_iou``)
      with that mapped box, and the mapped box where there is none. Only the crop box picks the
      face, so the interface is unchanged; it exists because one linear map cannot follow how
      dlib's boxes move with yaw, and dlib's cascade fails often when started off its own box.
    ``point_offset`` (x, y pixels) is subtracted from every point: ``DLIB_POINT_OFFSET`` removes
    dlib's measured systematic shift against our annotations.
    """

    def __init__(
        self,
        model: os.PathLike | str | None = None,
        box_map: DetectorCropPolicy | None = None,
        boxes: str = "map",
        point_offset: tuple[float, float] = (0.0, 0.0),
        upsample: int = FIT_UPSAMPLE,
        min_iou: float = FIT_MIN_IOU,
    ):
        if boxes not in BOX_SOURCES:
            raise ValueError(f"boxes must be one of {BOX_SOURCES}, got {boxes!r}")
        dlib = _import_dlib()
        path = Path(model) if model is not None else model_path()
        if not path.is_file():
            raise FileNotFoundError(f"dlib shape predictor file not found: {path}")
        self.model = path
        self.predictor = dlib.shape_predictor(str(path))
        self.box_map = box_map if box_map is not None else default_box_map()
        self.boxes = boxes
        self.point_offset = np.asarray(point_offset, dtype=np.float64).reshape(2)
        self.upsample = upsample
        self.min_iou = min_iou
        self.detector = dlib.get_frontal_face_detector() if boxes == "detector" else None
        # Faces started from the mapped box because dlib detected nothing there (boxes="detector").
        self.fallbacks = 0

    def dlib_boxes(self, image: np.ndarray, crop_boxes: Sequence[np.ndarray]) -> list[np.ndarray]:
        """[l, t, r, b] of the box handed to dlib for each square crop box (``image`` as ``dlib_image``)."""
        mapped = [self.box_map.crop_box(box) for box in crop_boxes]
        if self.detector is None:
            return mapped
        detections = [rect_to_box(r) for r in self.detector(image, self.upsample)]
        chosen = []
        for box in mapped:
            k = best_match(box, detections, self.min_iou)
            self.fallbacks += k is None
            chosen.append(box if k is None else detections[k])
        return chosen

    def predict(self, image_bgr: np.ndarray, crop_boxes: Sequence[np.ndarray]) -> np.ndarray:
        """(N, 68, 2) landmarks in image pixels (x, y), one face per square crop box."""
        out = np.zeros((len(crop_boxes), N_POINTS, 2), dtype=np.float64)
        if not len(crop_boxes):
            return out
        image = dlib_image(image_bgr)
        for i, box in enumerate(self.dlib_boxes(image, crop_boxes)):
            shape = self.predictor(image, box_to_rect(box))
            if shape.num_parts != N_POINTS:
                raise RuntimeError(f"{self.model}: expected {N_POINTS} points, the predictor gave {shape.num_parts}")
            out[i] = [(p.x, p.y) for p in shape.parts()]
        return out - self.point_offset


# --- fitting the crop box -> dlib box map ----------------------------------------------------


@dataclass(frozen=True)
class BoxMapFit:
    """The fitted map and what it rests on; ``*_iqr`` are the interquartile ranges.

    ``offset_x``, ``offset_y``: median (prediction - ground truth) in pixels over all points of
    the matched faces, dlib started from its own detection.
    """

    shift_x: float
    shift_y: float
    scale: float
    offset_x: float
    offset_y: float
    matched: int
    faces: int
    shift_x_iqr: float
    shift_y_iqr: float
    scale_iqr: float
    upsample: int
    min_iou: float

    def box_map(self) -> DetectorCropPolicy:
        return DetectorCropPolicy(shift_x=self.shift_x, shift_y=self.shift_y, scale=self.scale)


def _iqr(values: np.ndarray) -> float:
    q1, q3 = np.percentile(values, [25, 75])
    return float(q3 - q1)


def fit_box_map(
    faces: Iterable[tuple[Path, np.ndarray]],
    upsample: int = FIT_UPSAMPLE,
    min_iou: float = FIT_MIN_IOU,
    model: os.PathLike | str | None = None,
) -> BoxMapFit:
    """Fit crop box -> dlib box on (image path, 68 ground-truth points) faces.

    Runs dlib's HOG frontal face detector on each image, keeps the detection with the highest
    IoU with the tight 68-point box (if at least ``min_iou``), and takes medians of
    (dlib centre - crop centre) / crop side and dlib side / crop side; and the point offset of
    the predictor started from that detection.
    """
    dlib = _import_dlib()
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(model if model is not None else model_path()))
    shifts, scales, residuals, total = [], [], [], 0
    for path, gt in faces:
        total += 1
        gt = np.asarray(gt, dtype=np.float64)
        image = dlib_image(read_image_bgr(path))
        detections = [rect_to_box(r) for r in detector(image, upsample)]
        k = best_match(np.concatenate([gt.min(axis=0), gt.max(axis=0)]), detections, min_iou)
        if k is None:
            continue
        det = detections[k]
        crop = landmark_crop_box(gt)
        crop_side = crop[2] - crop[0]
        shifts.append(((det[:2] + det[2:]) - (crop[:2] + crop[2:])) / 2.0 / crop_side)
        scales.append(max(det[2] - det[0], det[3] - det[1]) / crop_side)
        points = np.array([(p.x, p.y) for p in predictor(image, box_to_rect(det)).parts()], dtype=np.float64)
        residuals.append(points - gt)
    if not scales:
        raise RuntimeError(f"fit_box_map: dlib detected none of the {total} faces at IoU >= {min_iou}")
    shifts_a, scales_a = np.array(shifts), np.array(scales)
    offset = np.median(np.concatenate(residuals), axis=0)
    return BoxMapFit(
        shift_x=float(np.median(shifts_a[:, 0])),
        shift_y=float(np.median(shifts_a[:, 1])),
        scale=float(np.median(scales_a)),
        offset_x=float(offset[0]),
        offset_y=float(offset[1]),
        matched=len(scales),
        faces=total,
        shift_x_iqr=_iqr(shifts_a[:, 0]),
        shift_y_iqr=_iqr(shifts_a[:, 1]),
        scale_iqr=_iqr(scales_a),
        upsample=upsample,
        min_iou=min_iou,
    )


# --- evaluation --------------------------------------------------------------------------------


def evaluate(landmarker: DlibLandmarker, faces: Sequence[tuple[Path, np.ndarray]]) -> dict:
    """Scores (count, NME, FR@0.1, AUC@0.1) and seconds per face (prediction only, image
    reading excluded) of the landmarker on (image path, ground truth) faces, crop box =
    ``landmark_crop_box(gt)``."""
    if not faces:
        raise ValueError("evaluate: no labelled faces")
    preds, seconds = [], 0.0
    for path, gt in faces:
        image = read_image_bgr(path)
        start = time.perf_counter()
        preds.append(landmarker.predict(image, [landmark_crop_box(gt)])[0])
        seconds += time.perf_counter() - start
    errors = nme(np.stack(preds), np.stack([gt for _, gt in faces]))
    report = summarise(errors).as_dict()
    report["seconds_per_face"] = seconds / len(faces)
    return report


def _box_map_dict(box_map: DetectorCropPolicy) -> dict:
    return {"shift_x": box_map.shift_x, "shift_y": box_map.shift_y, "scale": box_map.scale}


def _cmd_fit(args: argparse.Namespace) -> int:
    faces = split_faces("train", args.data_root)
    fit = fit_box_map(faces, upsample=args.upsample, min_iou=args.min_iou, model=args.model)
    print(json.dumps(asdict(fit), indent=2))
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    if args.images is not None:
        faces = labelled_images(args.images)
        source = {"images": str(args.images)}
    else:
        faces = split_faces(args.faces_from_split, args.data_root)
        source = {"split": f"300w {args.faces_from_split} (split_300w seed 0, val_fraction 0.2)"}
    if not faces:
        print(f"no images with a .pts beside them in {args.images}", file=sys.stderr)
        return 2
    offset = DLIB_POINT_OFFSET if args.offset else (0.0, 0.0)
    landmarker = DlibLandmarker(args.model, boxes=args.boxes, point_offset=offset)
    report = {
        "model": f"dlib {MODEL_FILE}",
        **source,
        **evaluate(landmarker, faces),
        "boxes": args.boxes,
        "box_map": _box_map_dict(landmarker.box_map),
        "point_offset": list(offset),
    }
    if args.boxes == "detector":
        report["mapped_box_fallbacks"] = landmarker.fallbacks
    text = json.dumps(report, indent=2)
    print(text)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n", encoding="utf-8")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.landmarks.baseline_dlib", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--data-root", type=Path, default=None, help="300-W folder (default: <data root>/300w)")
    sub = parser.add_subparsers(dest="command", required=True)

    fit = sub.add_parser("fit", help="measure the crop box -> dlib box map on the 300-W training split")
    fit.add_argument("--upsample", type=int, default=FIT_UPSAMPLE, help="dlib detector upsampling")
    fit.add_argument("--min-iou", type=float, default=FIT_MIN_IOU, help="least IoU of detection and landmark box")
    fit.add_argument("--model", type=Path, default=None, help=f"{MODEL_FILE} (default: from face_recognition_models)")
    fit.set_defaults(run=_cmd_fit)

    ev = sub.add_parser("eval", help="NME / FR@0.1 / AUC@0.1 of dlib on labelled faces")
    faces = ev.add_mutually_exclusive_group(required=True)
    faces.add_argument("--images", type=Path, help="folder of images with iBUG .pts beside them (recursive)")
    faces.add_argument("--faces-from-split", choices=("train", "val"), help="the 300-W split_300w faces")
    ev.add_argument(
        "--boxes",
        choices=BOX_SOURCES,
        default="map",
        help="start dlib from the mapped crop box (default) or from its own detection matched to it",
    )
    ev.add_argument("--offset", action="store_true", help="subtract the fitted DLIB_POINT_OFFSET from the points")
    ev.add_argument("--json", type=Path, default=None, help="also write the report here")
    ev.add_argument("--model", type=Path, default=None, help=f"{MODEL_FILE} (default: from face_recognition_models)")
    ev.set_defaults(run=_cmd_eval)

    args = parser.parse_args(argv)
    if args.command == "eval" and args.images is not None and not args.images.is_dir():
        parser.error(f"--images {args.images}: no such folder")
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
