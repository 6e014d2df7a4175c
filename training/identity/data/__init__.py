"""Training samples from the aligned-face cache: selection by source and CFP fold, class labels,
the pose signal, and augmentation that keeps pose labels true (a flip mirrors yaw, roll and
the landmarks)."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from edge.geometry.align import ARCFACE_112, AlignmentSpec
from edge.geometry.landmarks68 import mirror_landmarks
from edge.runtime.meta import ModelMeta, Normalisation
from edge.runtime.preprocess import preprocess
from training.identity.config import IdentityAugmentConfig, IdentityTrainConfig

# The common face-recognition input convention: RGB, (pixel - 127.5) / 128.
FACE_NORMALISATION = Normalisation(mean=(127.5, 127.5, 127.5), std=(128.0, 128.0, 128.0))


def trunk_normalisation(trunk: str) -> Normalisation:
    """The input scaling a trunk was trained with: dlib's ResNet its file's per-channel means and
    1/256, the MobileFaceNet the common (pixel - 127.5) / 128."""
    if trunk == "dlib_resnet":
        from training.nn.dlib_resnet import INPUT_MEAN_RGB

        return Normalisation(mean=INPUT_MEAN_RGB, std=(256.0, 256.0, 256.0))
    return FACE_NORMALISATION


def identity_meta(cfg: IdentityTrainConfig, spec: AlignmentSpec = ARCFACE_112, name: str = "poseface") -> ModelMeta:
    """The metadata of a model this recipe trains on crops cut as ``spec`` says (the cache's)."""
    return ModelMeta(
        name=name,
        version="0.1.0",
        task="identity",
        format="onnx",
        precision="fp32",
        input_size=(spec.size, spec.size),
        input_layout="NCHW",
        color_order="RGB",
        normalisation=trunk_normalisation(cfg.trunk),
        input_name="image",
        output_names=("embedding",),
        extra={
            "architecture": "poseface",
            "trunk": cfg.trunk,
            "width": cfg.width,
            "depth": cfg.depth,
            "embedding_dim": cfg.embedding_dim,
            "alignment": spec.to_dict(),
            "embedding": "L2-normalise the output; compare by cosine",
        },
    )


@dataclass
class TrainingSet:
    images: np.ndarray  # (N, S, S, 3) uint8 BGR
    labels: np.ndarray  # (N,) int64 class index
    pose: np.ndarray  # (N, 3) yaw, pitch, roll degrees
    landmarks: np.ndarray  # (N, 68, 2) aligned pixels
    profile: np.ndarray  # (N,) bool
    classes: list[str]
    teacher: np.ndarray | None = None  # (N, 128) unit vectors (distillation), NaN rows where dlib failed
    paths: np.ndarray | None = None  # (N,) photo paths (the cache's), the key of cached frozen features

    def __len__(self) -> int:
        return len(self.labels)


def select_training(cache: dict[str, np.ndarray], cfg: IdentityTrainConfig) -> TrainingSet:
    src, fold = cache["source"], cache["fold"]
    keep = (src == "cfp") & np.isin(fold, cfg.train_cfp_folds)
    if cfg.use_lfw:
        keep |= src == "lfw"
    if cfg.use_orl:
        keep |= src == "orl"
    if cfg.use_lfw and cfg.exclude_lfw_people_file:
        keep &= ~np.isin(cache["person"], [f"lfw/{n}" for n in excluded_lfw_people(cfg.exclude_lfw_people_file)])
    idx = np.flatnonzero(keep)
    classes = sorted(set(cache["person"][idx].tolist()))
    lookup = {c: i for i, c in enumerate(classes)}
    labels = np.array([lookup[p] for p in cache["person"][idx]], dtype=np.int64)
    teacher = None
    if "teacher" in cache:
        teacher = cache["teacher"][idx].astype(np.float32)
        teacher[~cache["teacher_ok"][idx]] = np.nan
    return TrainingSet(
        cache["images"][idx],
        labels,
        cache["pose"][idx],
        cache["landmarks"][idx],
        cache["profile"][idx],
        classes,
        teacher,
        cache["path"][idx] if "path" in cache else None,
    )


def excluded_lfw_people(path: str) -> list[str]:
    """LFW names from an overlap report (``{"matches": [{"lfw": NAME, ...}]}``)."""
    import json
    from pathlib import Path

    file = Path(path)
    if not file.is_absolute() and not file.exists():
        file = Path(__file__).resolve().parents[3] / path  # relative to the repository
    try:
        data = json.loads(file.read_text())
        return [m["lfw"] for m in data["matches"]]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(
            f"exclude_lfw_people_file {path}: expected an overlap report with matches[].lfw ({err})"
        ) from None


def pose_target(pose: np.ndarray, landmarks: np.ndarray, kind: str, size: int) -> np.ndarray:
    """The PoseFace pose signal: angles / 90 degrees and/or aligned landmarks (in a ``size``
    crop) scaled to [-1, 1]."""
    parts = []
    if "angles" in kind:
        parts.append(np.asarray(pose, dtype=np.float32) / 90.0)
    if "landmarks" in kind:
        parts.append(((np.asarray(landmarks, dtype=np.float32) - size / 2) / (size / 2)).reshape(-1))
    return np.concatenate(parts)


def augment_face(image: np.ndarray, pose: np.ndarray, landmarks: np.ndarray, aug: IdentityAugmentConfig, rng):
    """(image, pose, landmarks) after one random draw of ``aug``; inputs are not modified."""
    size = image.shape[0]
    pose = np.array(pose, dtype=np.float32)
    pts = np.array(landmarks, dtype=np.float32)
    if rng.random() < aug.flip:
        image = image[:, ::-1]
        pose[0], pose[2] = -pose[0], -pose[2]
        pts = mirror_landmarks(pts, size)
    angle = rng.uniform(-aug.max_rotate_deg, aug.max_rotate_deg)
    scale = float(np.exp(rng.uniform(-aug.max_log_scale, aug.max_log_scale)))
    m = cv2.getRotationMatrix2D(((size - 1) / 2, (size - 1) / 2), angle, scale)
    m[:, 2] += rng.uniform(-aug.max_shift_px, aug.max_shift_px, 2)
    image = cv2.warpAffine(
        np.ascontiguousarray(image), m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT
    )
    pts = pts @ m[:, :2].T.astype(np.float32) + m[:, 2].astype(np.float32)
    pose[2] -= angle  # cv2 turns the image counter-clockwise for a positive angle; roll > 0 is clockwise
    if rng.random() < aug.gray:
        image = cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    if rng.random() < aug.low_res:
        side = int(rng.integers(24, 64))
        image = cv2.resize(cv2.resize(image, (side, side), interpolation=cv2.INTER_AREA), (size, size))
    if rng.random() < aug.blur:
        image = cv2.GaussianBlur(image, (5, 5), rng.uniform(0.5, 1.5))
    img = image.astype(np.float32)
    if aug.contrast or aug.brightness:
        c = 1.0 + rng.uniform(-aug.contrast, aug.contrast)
        b = rng.uniform(-aug.brightness, aug.brightness) * float(img.mean())
        img = (img - img.mean()) * c + img.mean() + b
    if rng.random() < aug.erase:
        h, w = (int(v) for v in rng.integers(16, 48, 2))
        y, x = int(rng.integers(0, size - h)), int(rng.integers(0, size - w))
        img[y : y + h, x : x + w] = rng.uniform(0, 255, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8), pose, pts


class IdentityDataset(torch.utils.data.Dataset):
    def __init__(self, data: TrainingSet, cfg: IdentityTrainConfig, meta: ModelMeta, seed: int = 0):
        self.data, self.cfg, self.meta = data, cfg, meta
        self.seed, self.epoch = seed, 0

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        rng = np.random.default_rng((self.seed, self.epoch, i))
        image, pose, pts = augment_face(
            self.data.images[i], self.data.pose[i], self.data.landmarks[i], self.cfg.augment, rng
        )
        return image, int(self.data.labels[i]), pose, pts, i

    def collate(self, items):
        images, labels, pose, pts, index = zip(*items)
        out = {
            "image": torch.from_numpy(preprocess(list(images), self.meta)),
            "label": torch.tensor(labels, dtype=torch.int64),
            "yaw": torch.tensor(np.array([p[0] for p in pose]), dtype=torch.float32),
        }
        if self.cfg.distill_weight:
            out["teacher"] = torch.from_numpy(self.data.teacher[list(index)])
        if self.cfg.pose_dim:
            size = self.meta.input_size[0]
            target = np.stack([pose_target(p, q, self.cfg.pose_target, size) for p, q in zip(pose, pts)])
            out["pose"] = torch.from_numpy(target)
        return out


def sample_weights(data: TrainingSet, profile_oversample: float) -> np.ndarray:
    w = np.ones(len(data), dtype=np.float64)
    w[data.profile] = profile_oversample
    return w


class FrozenFeatureDataset(torch.utils.data.Dataset):
    """A fine-tune whose early levels are frozen (``frozen_levels``) trains on their output,
    computed once per face and per mirror image and kept in memory (float16). The only
    augmentation is the mirror (probability ``augment.flip``; yaw, roll and landmarks mirrored
    with it): every other augmentation would change the frozen output.

    The features are also saved beside the cache (``frozen_<trunk>_l<levels>.npz``, keyed by
    photo path and the net's weights), so arms that share the frozen part compute them once."""

    def __init__(self, data: TrainingSet, cfg: IdentityTrainConfig, meta: ModelMeta, net, seed: int = 0):
        from pathlib import Path

        self.data, self.cfg, self.meta = data, cfg, meta
        self.seed, self.epoch = seed, 0
        self.levels = cfg.frozen_levels
        fingerprint = _frozen_fingerprint(net, self.levels)
        path = Path(cfg.cache) / f"frozen_{cfg.trunk}_l{self.levels}.npz"
        stored = _load_frozen(path, fingerprint)
        missing = [p for p in data.paths if p not in stored]
        if missing:
            wanted = set(missing)
            rows = [i for i, p in enumerate(data.paths) if p in wanted]
            plain, mirrored = self._compute(net, data.images[rows])
            for j, i in enumerate(rows):
                stored[data.paths[i]] = (plain[j], mirrored[j])
            _save_frozen(path, fingerprint, stored)
        self.plain = np.stack([stored[p][0] for p in data.paths])
        self.mirrored = np.stack([stored[p][1] for p in data.paths])

    def _compute(self, net, images: np.ndarray, batch: int = 64):
        from tqdm import tqdm

        plain, mirrored = [], []
        with torch.no_grad():
            for i in tqdm(range(0, len(images), batch), desc="frozen levels", mininterval=10):
                chunk = list(images[i : i + batch])
                for out, imgs in ((plain, chunk), (mirrored, [np.ascontiguousarray(im[:, ::-1]) for im in chunk])):
                    x = torch.from_numpy(preprocess(imgs, self.meta))
                    out.append(net.trunk.frozen(x, self.levels).numpy().astype(np.float16))
        return np.concatenate(plain), np.concatenate(mirrored)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        rng = np.random.default_rng((self.seed, self.epoch, i))
        pose = np.array(self.data.pose[i], dtype=np.float32)
        pts = np.array(self.data.landmarks[i], dtype=np.float32)
        if rng.random() < self.cfg.augment.flip:
            pose[0], pose[2] = -pose[0], -pose[2]
            pts = mirror_landmarks(pts, self.meta.input_size[0])
            return self.mirrored[i], int(self.data.labels[i]), pose, pts, i
        return self.plain[i], int(self.data.labels[i]), pose, pts, i

    def collate(self, items):
        feats, labels, pose, pts, index = zip(*items)
        out = {
            "feat": torch.from_numpy(np.stack(feats).astype(np.float32)),
            "label": torch.tensor(labels, dtype=torch.int64),
            "yaw": torch.tensor(np.array([p[0] for p in pose]), dtype=torch.float32),
        }
        if self.cfg.pose_dim:
            size = self.meta.input_size[0]
            target = np.stack([pose_target(p, q, self.cfg.pose_target, size) for p, q in zip(pose, pts)])
            out["pose"] = torch.from_numpy(target)
        return out


def _frozen_fingerprint(net, levels: int) -> str:
    import hashlib

    digest = hashlib.sha256(f"levels={levels}".encode())
    frozen = [net.trunk.net.stem_conv, net.trunk.net.stem_aff, *net.trunk.net.levels[:levels]]
    for module in frozen:
        for p in module.parameters():
            digest.update(p.detach().cpu().numpy().tobytes())
    return digest.hexdigest()


def _load_frozen(path, fingerprint: str) -> dict:
    if not path.exists():
        return {}
    with np.load(path) as z:
        if str(z["fingerprint"]) != fingerprint:
            return {}
        return {str(p): (a, b) for p, a, b in zip(z["path"], z["plain"], z["mirrored"])}


def _save_frozen(path, fingerprint: str, stored: dict) -> None:
    import os

    keys = sorted(stored)
    tmp = path.with_name(f".{path.stem}.tmp.npz")
    np.savez(
        tmp,
        fingerprint=np.array(fingerprint),
        path=np.array(keys),
        plain=np.stack([stored[k][0] for k in keys]),
        mirrored=np.stack([stored[k][1] for k in keys]),
    )
    os.replace(tmp, path)
