"""The yaw pre-pass: head yaw of every face of a streamed source, once, written beside it
(``python -m training.identity.data yaw --rec FILE.rec | --folder DIR``); the readers then give
PAA each face's yaw (why a pre-pass: :mod:`training.identity.data.streamed`).

Each aligned crop goes through the chain the cache's yaw comes from: PIPNet on the whole crop
as the first box, ``ANNOTATION_REFINE`` re-crops from its own landmarks, and
:func:`edge.geometry.headpose.head_pose` on the 68 points. A face whose pose cannot be fitted,
or a broken record, gets NaN (the base margin)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from tqdm import tqdm

from training.identity.data.streamed import BrokenRecord, FolderFaces, RecordFaces, StreamedFaces, yaw_sidecar_path


def crop_yaw(images, landmarker, refine: int) -> np.ndarray:
    """(N,) yaw in degrees of aligned face crops (uint8 BGR), NaN where no pose fits."""
    from edge.geometry.headpose import head_pose
    from edge.landmarks.crop import apply_affine, crop_face, invert_affine, landmark_crop_box

    boxes = []
    for image in images:
        h, w = image.shape[:2]
        side = max(h, w)
        boxes.append(np.array([(w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2], np.float64))
    points = []
    for _ in range(refine + 1):
        crops, inverses = [], []
        for image, box in zip(images, boxes):
            crop, m = crop_face(image, box, landmarker.size)
            crops.append(crop)
            inverses.append(invert_affine(m))
        points = [apply_affine(p, inv) for p, inv in zip(landmarker.predict_crops(crops), inverses)]
        boxes = [landmark_crop_box(p) for p in points]
    out = np.full(len(images), np.nan, np.float32)
    for i, (image, pts) in enumerate(zip(images, points)):
        try:
            out[i] = head_pose(pts, (image.shape[1], image.shape[0])).yaw
        except ValueError:
            pass
    return out


def write_yaw_sidecar(
    source, out=None, landmark_model=None, batch: int = 64, threads: int = 1, progress: bool = True
) -> Path:
    """Estimate every face's yaw in ``source`` (a folder or a ``.rec``) and write the sidecar
    (``out``, default :func:`yaw_sidecar_path`) atomically; returns its path."""
    from training.identity.prepare import ANNOTATION_REFINE
    from training.landmarks.evalcli import load_landmarker

    source = Path(source)
    if source.is_dir():
        data: StreamedFaces = FolderFaces(source, yaw=False, progress=progress)
        keys = data.paths
    else:
        data = RecordFaces(source, yaw=False, progress=progress)
        keys = data.keys
    if landmark_model is None:
        from edge.shipped import SHIPPED_LANDMARKS

        landmark_model = SHIPPED_LANDMARKS
    landmarker = load_landmarker(Path(landmark_model), threads=threads)
    yaw = np.full(len(data), np.nan, np.float32)
    failed = 0
    for start in tqdm(range(0, len(data), batch), desc=f"yaw of {source.name}", unit="batch", disable=not progress):
        rows, images = [], []
        for i in range(start, min(start + batch, len(data))):
            try:
                image, _ = data.load(i)
            except BrokenRecord:
                failed += 1
                continue
            rows.append(i)
            images.append(image)
        if images:
            yaw[rows] = crop_yaw(images, landmarker, ANNOTATION_REFINE)
    out = Path(out) if out else yaw_sidecar_path(source)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.npz")
    np.savez(
        tmp,
        key=keys,
        yaw=yaw,
        source=np.array(str(source)),
        landmark_model=np.array(str(landmark_model)),
        refine=np.array(ANNOTATION_REFINE),
    )
    os.replace(tmp, out)
    if progress:
        known = int(np.isfinite(yaw).sum())
        print(f"wrote {out}: yaw for {known} of {len(yaw)} faces ({failed} broken records, {len(yaw) - known} unknown)")
    return out
