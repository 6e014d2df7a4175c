"""Self-training with curriculum (STC) on unlabeled real faces.

Round r: the previous stage's best model pseudo-labels a fresh random subset of the unlabeled
faces (cropped from BlazeFace boxes by the device's crop policy), a re-initialised PIPNet
trains on the labelled 300-W faces (full targets always) plus those pseudo-labelled faces,
which the curriculum supervises only on the score map max-pooled to ``coarse_sizes[r]``
(no offsets) in early rounds and on full targets in the last.

Unlabeled faces: LFW (grayscale) and CFP frontal + profile photos of folds 1-8 (fold 9 is
kept out: the identity work evaluates on it and the pose check reports on it); of the recipe's
``cfp_folds`` only where it trains on CFP's fiducials, so its profile validation fold stays unseen.
``stc.teacher`` names a trained checkpoint to label the first round (the supervised stage is
then not run).

CPU budget deviation from the paper: each round re-labels only the subset it trains on
(``unlabeled_per_round``), not the whole pool.

Device, precision and processes as in :func:`training.landmarks.train.fit`: under torchrun
rank 0 detects the unlabeled faces and pseudo-labels each round's subset (on its device) while
the others wait, then every process trains the round.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

from edge.datasets.cfp import cfp_photos, fold_identities
from edge.datasets.lfw import lfw_people
from edge.imageio import read_image_bgr
from edge.landmarks.landmarker import Landmarker
from training.landmarks.config import LandmarkTrainConfig
from training.landmarks.data import LandmarkSample, detect_crop_boxes
from training.landmarks.train import fit, load_checkpoint, prepare_run
from training.run_folder import write_json
from training.runtime import DeviceRunner, setup

STC_CFP_FOLDS = tuple(range(1, 9))


def unlabeled_pool(data_root=None, cfp_folds: tuple[int, ...] = ()) -> dict[str, list[Path]]:
    """LFW and CFP photos to pseudo-label: CFP's ``cfp_folds`` (default :data:`STC_CFP_FOLDS`)."""
    ids = [i for f in (cfp_folds or STC_CFP_FOLDS) for i in fold_identities(f)]
    cfp_root = None if data_root is None else Path(data_root) / "cfp"
    lfw_root = None if data_root is None else Path(data_root) / "lfw_gray"
    return {
        "lfw": [p for paths in lfw_people(lfw_root).values() for p in paths],
        "cfp_frontal": [p.image_path for p in cfp_photos(cfp_root, identities=ids, views=("frontal",))],
        "cfp_profile": [p.image_path for p in cfp_photos(cfp_root, identities=ids, views=("profile",))],
    }


def choose_subset(pool: dict[str, list[Path]], boxes: dict, n: int, cfp_fraction: float, rng) -> list[Path]:
    usable = {k: [p for p in v if str(p) in boxes] for k, v in pool.items()}
    n_cfp = int(round(n * cfp_fraction))
    n_prof = min(len(usable["cfp_profile"]), n_cfp // 2)
    picks = {
        "cfp_profile": n_prof,
        "cfp_frontal": min(len(usable["cfp_frontal"]), n_cfp - n_prof),
    }
    picks["lfw"] = min(len(usable["lfw"]), n - sum(picks.values()))
    out: list[Path] = []
    for k, m in picks.items():
        idx = rng.choice(len(usable[k]), size=m, replace=False)
        out += [usable[k][i] for i in sorted(idx)]
    return out


def pseudo_label(checkpoint: Path, paths: list[Path], boxes: dict, device=None) -> list[np.ndarray]:
    """The checkpoint's landmarks for each photo's crop box (the model on ``device``, default the CPU)."""
    model, meta, _ = load_checkpoint(checkpoint)
    if device is not None:
        model.to(device)
    landmarker = Landmarker(DeviceRunner(model, meta))
    return [
        landmarker.predict(read_image_bgr(p), [np.asarray(boxes[str(p)])])[0]
        for p in tqdm(paths, desc="pseudo-label", mininterval=10)
    ]


def train_stc(cfg: LandmarkTrainConfig, run_dir: Path, data_root=None) -> dict:
    stc = cfg.stc
    if len(stc.coarse_sizes) != stc.rounds:
        raise ValueError(f"stc.coarse_sizes needs one entry per round ({stc.rounds}), got {list(stc.coarse_sizes)}")
    teacher = Path(stc.teacher) if stc.teacher else run_dir / "supervised" / "best.pt"
    if not teacher.exists():  # before the pool is detected: a wrong path fails at once
        raise FileNotFoundError(f"stc teacher {teacher}: no such checkpoint")
    rt = setup(cfg.device, cfg.precision)
    with rt.main_first():  # rank 0 detects and caches the boxes, the others read them
        train, val, meta = prepare_run(cfg, run_dir, data_root)
        pool = unlabeled_pool(data_root, cfg.cfp_folds)
        all_paths = [p for v in pool.values() for p in v]
        boxes = detect_crop_boxes(all_paths, run_dir / "stc_boxes.json", stc.min_detection_score)
    metrics_path = run_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    metrics["stc_pool"] = {k: len(v) for k, v in pool.items()} | {"with_face": len(boxes)}
    for r in range(stc.rounds):
        stage = run_dir / f"stc_round{r + 1}"
        labels_path = stage / "pseudo_labels.json"
        with rt.main_first():  # rank 0 pseudo-labels the round's faces, the others read its file
            if rt.is_main:
                stage.mkdir(parents=True, exist_ok=True)
            if labels_path.exists():
                labels = json.loads(labels_path.read_text())
            else:
                rng = np.random.default_rng((cfg.seed, r))
                subset = choose_subset(pool, boxes, stc.unlabeled_per_round, stc.cfp_fraction, rng)
                points = pseudo_label(teacher, subset, boxes, rt.device)
                faces = {str(p): np.round(q, 2).tolist() for p, q in zip(subset, points)}
                labels = {"teacher": str(teacher), "faces": faces}
                if rt.is_main:
                    write_json(labels_path, labels)
        coarse = stc.coarse_sizes[r]
        factor = 1 if coarse == 0 else max(1, cfg.map_size // coarse)
        pseudo = [LandmarkSample(Path(p), np.asarray(q), factor, f"pseudo:{p}") for p, q in labels["faces"].items()]
        best = fit(cfg, meta, train + pseudo, val, stage, stc.epochs, stc.milestones)
        metrics[f"stc_round{r + 1}"] = {**best, "coarse_map": coarse or cfg.map_size, "pseudo_faces": len(pseudo)}
        if rt.is_main:
            write_json(metrics_path, metrics)
        teacher = stage / "best.pt"
    return metrics
