"""The card of an identity model fine-tuned from dlib's face-recognition ResNet, written from
measured files only (nothing typed in by hand):

    python -m training.identity finetune-card --model edge/models/identity/poseface_r29.onnx \\
        --run RUN --eval NAME=JSON ... --ablation DIR [--student-eval JSON] [--bench JSON] [--out FILE]

``--eval`` files come from ``python -m training.identity eval`` (this model, CFP fold 9);
``--ablation`` is a folder written by ``python -m training.identity report`` (the arms, the
imported network unchanged and dlib's own pipeline on the same pairs); ``--bench`` a JSON of
``python -m edge.bench`` with this model and the one it replaces, timed side by side.
"""

from __future__ import annotations

import json
from pathlib import Path

from edge.runtime.meta import load_meta
from training.identity.card import _pct, ablation_section, eval_table, recipe_name, record_accuracy, thresholds_section

GUARDS = """\
- **Frozen early levels**: the stem and levels 4 and 3 (stride 8; 60% of the multiply-adds) keep dlib's
  weights; their output is computed once per face and per mirror image (`frozen_dlib_resnet_l2.npz` beside the
  cache), so an epoch costs a third of a full one. The only augmentation is then the mirror.
- **A lower learning rate for the pretrained part** (trunk and dlib's fc, the identity projection) than for the
  new heads (margin head, pose branch): `trunk_lr_mult`.
- **Gradient clipping** of the pretrained part only (the net has no batch norm; its raw gradient norms run at
  about 100): clipping everything let the new heads' large gradients shrink every step.
- **Margin head initialised at the classes' frontal centres** in the original network's space (the unit mean of
  a class's faces with |yaw| < 30 degrees).
- **Anchor**: 1 - cos(embedding, own class's frozen frontal centre in the original space), on every face.
- **Frontal self-distillation**: 1 - cos(embedding, the original network's embedding of the same view), on
  frontal views only (profiles are free to move toward their class).
- **Smaller margins** (0.2 rad; PAA 0.2 frontal to 0.3 in profile): dlib's metric loss already holds an
  identity within about 27 degrees; ArcFace's 0.5 could not be met (cross-entropy stuck at 10.7 for an epoch,
  fold-8 FP 87.4 -> 87.0) and was dropped.
"""


def _rows(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _bench_lines(bench: dict) -> list[str]:
    lines = [
        f"Measured side by side in one run by `python -m edge.bench` on {bench.get('cpu', 'a CPU not recorded')} "
        f"({bench.get('runs')} interleaved calls per model, one face per call):",
        "",
        "| model | precision | threads | p50 ms / face | p90 ms | ratio to the first row | file KiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in bench.get("rows", []):
        lines.append(
            f"| {Path(row['model']).name} | {row['precision']} | {row['threads']} | {row['p50_ms']} | "
            f"{row['p90_ms']} | {row['ratio_to_first']} | {row['size_kib']} |"
        )
    return lines


def write_finetune_card(
    model: Path,
    run: Path,
    evals: dict[str, Path],
    ablation: Path | None,
    out: Path,
    student_eval: Path | None = None,
    bench: Path | None = None,
) -> Path:
    cfg = json.loads((run / "config.json").read_text())
    rows = _rows(run)
    hours = sum(r.get("seconds", 0.0) for r in rows) / 3600
    reports = {name: json.loads(Path(p).read_text()) for name, p in evals.items()}
    record_accuracy(model, {k: v for k, v in reports.items() if "flip" not in k})
    meta = load_meta(model.with_suffix(".json"))
    pre = meta.extra.get("pretrained", {})
    align = meta.extra.get("alignment", {})
    first = next(iter(reports.values()))
    parts = [
        f"# Identity model card: {model.name} (the default identity model)",
        "",
        f"dlib's face-recognition ResNet, imported into plain torch by our own reader and fine-tuned by "
        f"`python -m training.identity train` on this machine's CPU with {recipe_name(cfg)} and the guards below. "
        "Only the identity path is exported (dlib's affine layers folded into its convolutions).",
        "",
        "## Where it comes from",
        f"- Pretrained weights: {pre.get('origin')}.",
        f"- Their file: sha256 `{pre.get('sha256')}`; licence {pre.get('licence')}.",
        "- Imported by `training.nn.dlib_format` (dlib's serialization, read in numpy) into `training.nn.dlib_resnet`; "
        "the copy reproduces dlib's `compute_face_descriptor` at cosine >= 0.9999 on 60 real CFP faces "
        "(`tests/test_dlib_import.py`).",
        "- dlib's training identities include FaceScrub and the VGG face set (celebrities); dlib made sure to "
        "avoid LFW identities, not CFP's. CFP's people are celebrities too, so some CFP test people may have been "
        "among dlib's 7,485 identities (other photos): the fold-9 numbers below can be optimistic for that "
        "reason, for dlib's own pipeline and for every arm alike.",
        "",
        "## The model",
        f"- dlib's ResNet-29 layout, {meta.extra.get('parameters')} parameters, "
        f"{model.stat().st_size / 2**20:.1f} MiB ONNX (opset 17, fp32), sha256 `{meta.sha256}`.",
        f"- Input: {meta.input_size[0]}x{meta.input_size[1]} RGB, (pixel - dlib's per-channel mean) / 256, the "
        f"crop `{align.get('template')}` (dlib's 68-point face-chip geometry, padding {align.get('padding')}) cut "
        "from our PIPNet landmarks by `edge.geometry.align`; the runtime reads this from the metadata. Output: "
        f"`embedding` ({meta.extra.get('embedding_dim')}-d), L2-normalised by the runtime; compare by cosine.",
        f"- Test-time flip: {'on' if meta.extra.get('test_time_flip') else 'off'} "
        "(`extra.test_time_flip`; the runtime's `embedding.test_time_flip` can override it).",
        "",
        "## Data (all real, `../shared/data`)",
        f"- CFP folds {cfg['train_cfp_folds']}, LFW people with 2 or more photos (minus 43 probable CFP fold 8/9 "
        "people, `training/identity/lfw_overlap_cfp.json`), ORL; 150x150 chips cut by the device chain "
        "(`python -m training.identity prepare --alignment dlib_68`).",
        "- **CFP fold 9 (people 401-450) was never trained on**: it is the test fold and calibrates the device "
        "thresholds.",
        "",
        "## Recipe",
        f"`{cfg.get('_recipe_file', 'training/identity/configs/dlib/')}`: {recipe_name(cfg)}; head "
        f"`{cfg['head']}` {cfg.get('head_options') or ''}, pose weight {cfg['pose_weight']}, orthogonality "
        f"{cfg['orthogonality_weight']}, RegularFace {cfg['regularface_weight']}; {cfg['epochs']} epochs, batch "
        f"{cfg['batch_size']}, SGD lr {cfg['lr']} for the new heads and {cfg['lr'] * cfg['trunk_lr_mult']:g} for "
        f"the pretrained part (warm-up, cosine to 0), gradient clip {cfg['grad_clip']}, anchor "
        f"{cfg['anchor_weight']}, frontal self-distillation {cfg['self_distill_weight']}, frozen levels "
        f"{cfg['frozen_levels']}; {hours:.2f} h on this machine ({cfg['threads']} threads).",
        "",
        "## Guards (what keeps the frontal accuracy dlib already has)",
        GUARDS,
        f"## Accuracy on CFP fold {first['test_fold']} (never trained on)",
        "",
        f"Threshold for the protocol accuracy chosen on fold(s) {first['calib_folds']}; TAR/EER on the dense pairs "
        "of the fold (every frontal photo against every other frontal / every profile photo).",
        "",
        eval_table(reports),
        "",
    ]
    parts += ablation_section(
        ablation,
        "## Ablation (equal budget, every arm from the imported weights) and dlib's own pipeline",
        "Every arm: the guarded fine-tune of `training/identity/configs/dlib/base.toml` (2 epochs, CFP folds 1-7 "
        "+ LFW + ORL), changing only its loss; chosen on fold 8, thresholds from fold 8, reported on fold 9. "
        "'none' is the imported network unchanged through our chain; 'dlib ResNet' is dlib's own pipeline "
        "(its 5-point predictor and chip) on the same photos, in the same run.",
    )
    if student_eval is not None and Path(student_eval).exists():
        st = json.loads(Path(student_eval).read_text())
        parts += [
            "## The device-sized student",
            f"`{st.get('model')}`: FF {_pct(st['FF']['accuracy'])}, FP {_pct(st['FP']['accuracy'])}, FP TAR@1e-3 "
            f"{_pct(st['FP']['dense']['tar@far=0.001'])} on fold {st['test_fold']} ({st.get('boxes')} boxes).",
            "",
        ]
    parts += thresholds_section(meta)
    if bench is not None and Path(bench).exists():
        bench_data = json.loads(Path(bench).read_text())
        parts += ["## Latency per face, beside the model it replaces", *_bench_lines(bench_data), ""]
    parts += [
        "## Files",
        "- `training/identity/results/`: the measured JSON behind every table here; the checkpoint it was exported "
        f"from: `training/checkpoints/{model.stem}.pt`.",
        "- The MobileFaceNet trained from scratch that this model replaced as the default still ships: "
        "`poseface_mfn.onnx`, card `MODEL_CARD_poseface_mfn.md`.",
        "",
    ]
    out.write_text("\n".join(parts))
    return out
