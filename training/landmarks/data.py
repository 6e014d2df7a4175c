"""Landmark samples, the crop boxes of photos whose points do not give one, and the torch Dataset
that crops, augments and builds PIPNet targets."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from edge.detect.registry import build_detector
from edge.imageio import read_image_bgr
from edge.landmarks.crop import BLAZEFACE_SHORT_CROP, apply_affine, crop_matrix, landmark_crop_box
from edge.runtime.meta import ModelMeta
from edge.runtime.preprocess import preprocess
from training.landmarks.augment import AugmentConfig, crop_for_training
from training.landmarks.targets import make_targets
from training.run_folder import write_json
from training.runtime import is_main_process


@dataclass(frozen=True)
class LandmarkSample:
    """One face: its photo, 68 points in that photo's pixels, and how it is supervised.

    ``coarse_factor`` 1 = full targets (labelled faces, late STC rounds); f > 1 = only the
    score map max-pooled by f (pseudo-labelled faces in early STC rounds). Points that are NaN are
    unlabelled (CFP's fiducials map to some of the 68): the loss leaves them out.
    """

    image_path: Path
    points: np.ndarray
    coarse_factor: int = 1
    name: str = ""
    box: np.ndarray | None = None  # crop box (x0, y0, x1, y1) where the points do not give it (partial labels)


def mean_face(samples: list[LandmarkSample], size: int) -> np.ndarray:
    """(68, 2) mean landmarks in crop pixels under the test crop policy."""
    shapes = [apply_affine(s.points, crop_matrix(landmark_crop_box(s.points), size)) for s in samples]
    return np.mean(shapes, axis=0)


def detect_crop_boxes(paths: list[Path], cache: Path, min_score: float) -> dict[str, list[float]]:
    """Crop box per image (best BlazeFace detection at or above ``min_score``), cached as JSON."""
    boxes: dict[str, list[float]] = json.loads(cache.read_text()) if cache.exists() else {}
    todo = [p for p in paths if str(p) not in boxes]
    if todo:
        detector = build_detector({"type": "blazeface", "range": "short"})
        for p in tqdm(todo, desc="detect unlabeled faces", mininterval=10):
            dets = [d for d in detector.detect(read_image_bgr(p)) if d.score >= min_score]
            boxes[str(p)] = BLAZEFACE_SHORT_CROP.crop_box(dets[0].box).tolist() if dets else []
        if is_main_process():
            write_json(cache, boxes)
    return {k: v for k, v in boxes.items() if v}


class LandmarkDataset(torch.utils.data.Dataset):
    def __init__(
        self,
        samples: list[LandmarkSample],
        meta: ModelMeta,
        neighbours: np.ndarray,
        augment: AugmentConfig | None,
        seed: int = 0,
    ):
        self.samples = samples
        self.meta = meta
        self.neighbours = neighbours
        self.augment = augment
        self.seed = seed
        self.epoch = 0
        self.size = meta.input_size[0]
        side = round(self.size / float(meta.extra["stride"]))
        self.map_size = (side, side)
        self.stride = float(meta.extra["stride"])

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict:
        s = self.samples[i]
        image = read_image_bgr(s.image_path)
        rng = None if self.augment is None else np.random.default_rng((self.seed, self.epoch, i))
        crop, pts = crop_for_training(image, s.points, self.size, rng, self.augment or AugmentConfig(), box=s.box)
        mask = np.isfinite(pts).all(axis=1)
        t = make_targets(np.where(mask[:, None], pts, 0.0), self.neighbours, self.map_size, self.stride)
        return {
            "mask": torch.from_numpy(mask),
            "nb_mask": torch.from_numpy(mask[:, None] & mask[self.neighbours]),
            "image": torch.from_numpy(preprocess([crop], self.meta)[0]),
            "cell": torch.from_numpy(t["cell"]),
            "off": torch.from_numpy(t["off"]),
            "nb_off": torch.from_numpy(t["nb_off"]),
            "coarse_factor": torch.tensor(s.coarse_factor, dtype=torch.long),
        }
