"""Teacher embeddings for distillation (training only): dlib's face-recognition ResNet on every
face of the aligned-face cache.

    python -m training.identity.teacher --cache runs/idcache [--sources cfp lfw orl]

For each cached face, dlib's own 5-point predictor runs on the aligned 112x112 crop (box: our
68 landmarks' box in the crop), dlib cuts its 150x150 chip from it and embeds it. Writes
``<cache>/teacher_dlib_<source>.npz`` with ``embeddings`` (N, 128) float32 unit vectors in the
cache's order and ``ok`` (N,) bool. The teacher never ships; a distilled model is reported as
its own arm.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
from tqdm import tqdm

from edge.geometry.landmarks68 import landmark_box

TEACHER_FILE = "teacher_dlib_{source}.npz"


def teacher_embeddings(
    images: np.ndarray, landmarks: np.ndarray, progress: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    from training.identity.baseline_dlib import RECOGNITION_FILE, SHAPE_FILE
    from training.landmarks.baseline_dlib import _import_dlib, box_to_rect, dlib_image, model_path

    dlib = _import_dlib()
    folder = model_path().parent
    shape = dlib.shape_predictor(str(folder / SHAPE_FILE))
    net = dlib.face_recognition_model_v1(str(folder / RECOGNITION_FILE))
    out = np.zeros((len(images), 128), np.float32)
    ok = np.zeros(len(images), bool)
    for i in tqdm(range(len(images)), desc="dlib teacher", disable=not progress, mininterval=10):
        img = dlib_image(np.ascontiguousarray(images[i]))
        try:
            s = shape(img, box_to_rect(landmark_box(landmarks[i])))
            vec = np.asarray(net.compute_face_descriptor(img, s), dtype=np.float64)
        except RuntimeError:
            continue
        norm = np.linalg.norm(vec)
        if norm > 1e-9:
            out[i], ok[i] = vec / norm, True
    return out, ok


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.identity.teacher", description=__doc__.split("\n\n")[0])
    p.add_argument("--cache", required=True)
    p.add_argument("--sources", nargs="+", default=["cfp", "lfw", "orl"])
    args = p.parse_args(argv)
    cache = Path(args.cache)
    for source in args.sources:
        target = cache / TEACHER_FILE.format(source=source)
        if target.exists():
            print(f"{target} exists: skipped")
            continue
        with np.load(cache / f"{source}.npz") as z:
            images, landmarks = z["images"], z["landmarks"]
        emb, ok = teacher_embeddings(images, landmarks)
        tmp = cache / f".teacher_{source}.tmp.npz"
        np.savez(tmp, embeddings=emb, ok=ok)
        os.replace(tmp, target)
        print(f"{source}: {int(ok.sum())}/{len(ok)} faces embedded -> {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
