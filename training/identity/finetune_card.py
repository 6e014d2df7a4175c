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
from training.identity.card import (
    _pct,
    ablation_section,
    eval_table,
    recipe_name,
    record_accuracy,
    thresholds_section,
)
from training.model_card import write_card_text
from training.run_folder import read_metrics

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
    return read_metrics(path) if path.exists() else []


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


def choice_section(ablation: Path | None) -> list[str]:
    """Each ablation run's last-epoch score on its validation fold (where the recipe was chosen and
    the guards were measured), from ``<ablation>/runs/<run>/metrics.jsonl`` (``metrics.json`` for a
    run of 0 epochs: the imported network as it is)."""
    runs = sorted(p for p in (ablation / "runs").glob("*") if p.is_dir()) if ablation is not None else []
    lines, scores = [], {}
    for run in runs:
        rows = _rows(run)
        if rows and "val_FP_acc" in rows[-1]:
            last = rows[-1]
            ff, fp, epochs = last["val_FF_acc"], last["val_FP_acc"], last["epoch"]
        elif (run / "metrics.json").exists():
            best = json.loads((run / "metrics.json").read_text()).get("best", {})
            if "FP_acc" not in best:
                continue
            ff, fp, epochs = best["FF_acc"], best["FP_acc"], best.get("epoch", 0)
        else:
            continue
        minutes = sum(r.get("seconds", 0.0) for r in rows) / 60
        lines.append(f"| {run.name} | {epochs} | {_pct(ff)} | {_pct(fp)} | {minutes:.0f} |")
        scores[run.name] = (ff, fp)
    if not lines:
        return []
    base = scores.get("dlib_arcface")  # the ArcFace arm with every guard: what each guard run drops one of
    deltas = [
        f"`{name[len('guard_') :]}` FF {100 * (ff - base[0]):+.1f} / FP {100 * (fp - base[1]):+.1f}"
        for name, (ff, fp) in scores.items()
        if base and name.startswith("guard_")
    ]
    return [
        "## Fold 8: model choice and the guard ablation",
        "",
        "Every arm, budget lever and guard ablation trained on CFP folds 1-7 + LFW + ORL and was scored after each "
        "epoch on fold 8's protocol pairs (fiducial boxes, threshold best on those pairs; about +-1.3 points of "
        "noise on 700 pairs); the last epoch's score. `guard_<name>` is the ArcFace arm without that one guard; "
        "`dlib_none` the imported network unchanged:",
        "",
        "| run | epochs | fold-8 FF acc | fold-8 FP acc | minutes |",
        "|---|---|---|---|---|",
        *lines,
        "",
        *(
            [
                "Each guard removed, against `dlib_arcface` (every guard, same budget), in points on fold 8: "
                + "; ".join(deltas)
                + ". Differences under about 1.3 points are within the noise of 700 pairs.",
                "",
            ]
            if deltas
            else []
        ),
    ]


def student_section(student: dict, teacher: dict | None, run: Path | None = None) -> list[str]:
    """The distilled student beside its teacher, on the same fold and boxes (and its run's budget)."""
    lines = [
        "## The device-sized student",
        "",
        f"`{student.get('model')}`, distilled from this model by `python -m training.identity student`.",
        "",
        "| model | boxes | flip | FF acc | FP acc | FP TAR@1e-3 | FP EER |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in (("teacher (this model)", teacher), ("student", student)):
        if r is None:
            continue
        lines.append(
            f"| {name} | {r.get('boxes')} | {r.get('flip')} | {_pct(r['FF']['accuracy'])} | "
            f"{_pct(r['FP']['accuracy'])} | "
            f"{_pct(r['FP']['dense']['tar@far=0.001'])} | {_pct(r['FP']['dense']['eer'])} |"
        )
    if teacher is not None:
        lines += [
            "",
            f"The student lands {100 * (teacher['FF']['accuracy'] - student['FF']['accuracy']):.1f} points (FF) and "
            f"{100 * (teacher['FP']['accuracy'] - student['FP']['accuracy']):.1f} points (FP) below its teacher.",
        ]
    if student["FF"]["accuracy"] < SHIP_MINIMUM["FF"] or student["FP"]["accuracy"] < SHIP_MINIMUM["FP"]:
        lines += [
            "",
            f"Below the minimum to ship (FF {_pct(SHIP_MINIMUM['FF'])}, FP {_pct(SHIP_MINIMUM['FP'])}): not shipped.",
        ]
    rows = _rows(run) if run is not None else []
    if rows:
        cfg = json.loads((run / "config.json").read_text()) if (run / "config.json").exists() else {}
        lines += [
            "",
            f"Its run: {rows[-1]['epoch']} epochs of {cfg.get('epochs', '?')} planned, "
            f"{sum(r.get('seconds', 0.0) for r in rows) / 3600:.2f} h on this CPU; distillation loss "
            f"(1 - cosine to the teacher's embedding of the same view) {rows[0].get('loss_distill', float('nan')):.3f} "
            f"after the first epoch, {rows[-1].get('loss_distill', float('nan')):.3f} after the last.",
        ]
    return lines + [""]


SHIP_MINIMUM = {"FF": 0.99, "FP": 0.91}  # issue 17's minimum for a default identity model (CFP fold 9)
DEMO_BARS = {"frontal": 0.95, "profile": 0.80, "strangers": 0.01}  # issue 17's bar for make demo


def landmark_cost_lines(reports: dict) -> list[str]:
    """What the device's landmarks cost on profiles: the same model with the photos' hand-marked
    boxes against the detector's (same flip), where both were measured."""
    by: dict = {}
    for r in reports.values():  # the first report of each (boxes, flip): the fp32 model's where listed first
        by.setdefault((r.get("boxes"), r.get("flip")), r)
    lines = []
    for (boxes, flip), r in by.items():
        fid = by.get(("fiducials", flip))
        if boxes != "detector" or fid is None:
            continue
        lines.append(
            f"- Flip {flip}: FP {_pct(r['FP']['accuracy'])} from detector boxes against {_pct(fid['FP']['accuracy'])} "
            f"from the photos' fiducial boxes; per probe yaw 60-90: "
            f"{_pct(r['FP']['per_probe_yaw']['60-90']['accuracy'])} against "
            f"{_pct(fid['FP']['per_probe_yaw']['60-90']['accuracy'])}."
        )
    if not lines:
        return []
    return [
        "## What the landmarks cost on profiles",
        "",
        "The chip is cut from our PIPNet landmarks in both cases; only the first face box differs. The gap is "
        "the device chain's profile landmarks (the landmark issue works on them):",
        "",
        *lines,
        "",
    ]


def opensim_section(*sims: dict) -> list[str]:
    """The demo's rates over many random galleries (``python -m training.identity opensim``)."""
    first = sims[0]
    lines = [
        f"The demo is one draw of people. Over {first['draws']} random draws of the same shape from CFP fold "
        f"{first['fold']} ({first['enrolled']} people enrolled from their first {first['templates']} frontal photos, "
        f"{first['strangers']} strangers; every photo decided alone with `{Path(first['model']).name}`'s own "
        f"thresholds, landmarks `{Path(first['landmark_model']).name}`, `python -m training.identity opensim`), "
        "mean +- standard deviation (range):",
        "",
        "| thresholds | frontal identified | profile identified | strangers accepted |",
        "|---|---|---|---|",
    ]
    for sim in sims:
        rule = "per pair" if sim.get("stranger_rate") is None else f"stranger_rate {sim['stranger_rate']:g}"
        cells = [
            f"{_pct(r['mean'])} +- {_pct(r['std'])} ({_pct(r['min'])}-{_pct(r['max'])})"
            for r in (sim["rates"][k] for k in ("frontal_identified", "profile_identified", "strangers_accepted"))
        ]
        lines.append(f"| {rule}, {sim['scores']} | " + " | ".join(cells) + " |")
    lines.append("")
    with_frontier = [sim for sim in sims if sim.get("frontier")]
    if with_frontier:
        lines += frontier_lines(with_frontier[0])
    return lines


def frontier_lines(sim: dict) -> list[str]:
    """The open-set frontier of ``opensim --frontier``: what the best per-bin thresholds would do."""
    lines = [
        "What the scores allow (`opensim --frontier`): per |yaw| bin the thresholds that identify the most "
        "enrolled probes while at most the given share of strangers passes, fitted to the same draws' own "
        "scores, so an upper bound for any calibration of one threshold per bin:",
        "",
        "| strangers accepted at most | frontal identified | profile identified | strangers accepted | "
        "thresholds per bin |",
        "|---|---|---|---|---|",
    ]
    for point in sim["frontier"]:
        ts = ", ".join("any" if t is None else f"{t:g}" for t in point["thresholds"])
        lines.append(
            f"| {100 * point['stranger_rate']:g}% | {_pct(point['frontal_identified'])} | "
            f"{_pct(point['profile_identified'])} | {100 * point['strangers_accepted']:.2f}% | {ts} |"
        )
    if sim.get("plot"):
        lines += ["", f"![open-set frontier]({Path(sim['plot']).name})"]
    return lines + [""]


def demo_section(*demos: dict) -> list[str]:
    """What ``make demo`` showed with this model (``python -m edge.demo_people``'s JSON), one
    paragraph per run: per-pair thresholds, and with ``--stranger-rate`` where it was run too."""
    lines = ["## What `make demo` shows", ""]
    for k, demo in enumerate(demos):
        stranger_probes = demo["frontal_stranger_probes"] + demo["profile_stranger_probes"]
        accepted = demo["frontal_stranger_false_accepts"] + demo["profile_stranger_false_accepts"]
        met = {
            "frontal": demo["frontal_identification_rate"] >= DEMO_BARS["frontal"],
            "profile": demo["profile_identification_rate"] >= DEMO_BARS["profile"],
            "strangers": accepted / max(stranger_probes, 1) <= DEMO_BARS["strangers"],
        }
        said = {key: "met" if v else "NOT met" for key, v in met.items()}
        rate = demo.get("stranger_rate")
        how = (
            "the device thresholds, each pair at the calibrated false-accept rate"
            if rate is None
            else f"`matching.stranger_rate = {rate:g}` (the thresholds follow the gallery's size)"
        )
        if demo.get("scores", "cosine") != "cosine":
            how += f" on {demo['scores']} (cohort-normalised) scores"
        intro = (
            f"{demo['enrolled_people']} CFP fold-9 people enrolled from two frontal photos each, their other photos "
            f"and {demo['stranger_people']} strangers' photos streamed through `python -m edge.run` with "
            f"`{Path(demo['model']).name}` and {how}:"
            if k == 0
            else f"A second run of the same stream with {how}:"
        )
        lines += [
            intro,
            "",
            f"- frontal probes identified: {_pct(demo['frontal_identification_rate'])} of {demo['frontal_probes']} "
            f"({demo['frontal_misidentified']} given the wrong name);",
            f"- profile probes identified: {_pct(demo['profile_identification_rate'])} of {demo['profile_probes']} "
            f"({demo['profile_misidentified']} given the wrong name);",
            f"- strangers accepted as someone: {accepted} of {stranger_probes} "
            f"({_pct(accepted / max(stranger_probes, 1))}; "
            f"frontal {demo['frontal_stranger_false_accepts']}/{demo['frontal_stranger_probes']}, profile "
            f"{demo['profile_stranger_false_accepts']}/{demo['profile_stranger_probes']}).",
            "",
            f"The bar set for the demo: frontal >= {_pct(DEMO_BARS['frontal'])} ({said['frontal']}), profile >= "
            f"{_pct(DEMO_BARS['profile'])} ({said['profile']}), strangers <= {_pct(DEMO_BARS['strangers'])} "
            f"({said['strangers']}).",
            "",
        ]
    lines += [
        "Per pair, the thresholds hold the false-accept rate at 1e-3 per comparison; a stranger is compared with "
        "every enrolled template, so a gallery of 40 templates lets through up to 40 times that rate of strangers. "
        "`matching.stranger_rate` divides the rate among the templates instead (each |yaw| bin's threshold read "
        "off the FAR grid the calibration records, no stricter than the grid's smallest resolved rate).",
        "",
    ]
    return lines


def write_finetune_card(
    model: Path,
    run: Path,
    evals: dict[str, Path],
    ablation: Path | None,
    out: Path,
    student_eval: Path | None = None,
    bench: Path | None = None,
    demo: Path | list[Path] | None = None,
    recipe: Path | None = None,
    student_run: Path | None = None,
    opensim: list[Path] | None = None,
) -> Path:
    cfg = json.loads((run / "config.json").read_text())
    rows = _rows(run)
    hours = sum(r.get("seconds", 0.0) for r in rows) / 3600
    reports = {name: json.loads(Path(p).read_text()) for name, p in evals.items()}
    # the metadata holds this file's own numbers (not a variant's, nor another flip setting's)
    mine = model.resolve()
    own = {k: v for k, v in reports.items() if "flip" not in k and Path(v.get("model", "")).resolve() == mine}
    record_accuracy(model, own)
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
        *(
            [
                "- Fold 8 chose the recipe (the arms and levers below trained on folds 1-7); this run then trained on "
                "it too, so the protocol accuracies below take their threshold from a fold this model has seen."
            ]
            if 8 in cfg["train_cfp_folds"]
            else []
        ),
        "",
        "## Recipe",
        f"`{recipe or 'training/identity/configs/dlib/'}`: {recipe_name(cfg)}; head "
        f"`{cfg['head']}` {cfg.get('head_options') or ''}, pose weight {cfg['pose_weight']}, orthogonality "
        f"{cfg['orthogonality_weight']}, RegularFace {cfg['regularface_weight']}; {cfg['epochs']} epochs, batch "
        f"{cfg['batch_size']}, SGD lr {cfg['lr']} for the new heads and {cfg['lr'] * cfg['trunk_lr_mult']:g} for "
        f"the pretrained part (warm-up, cosine to 0), gradient clip {cfg['grad_clip']}, anchor "
        f"{cfg['anchor_weight']}, frontal self-distillation {cfg['self_distill_weight']}, frozen levels "
        f"{cfg['frozen_levels']}, CFP profiles drawn {cfg.get('profile_oversample', 1.0):g}x as often; {hours:.2f} h "
        f"on this machine ({cfg['threads']} threads).",
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
    parts += choice_section(ablation)
    bench_data = json.loads(Path(bench).read_text()) if bench is not None and Path(bench).exists() else None
    if student_eval is not None and Path(student_eval).exists():
        student = json.loads(Path(student_eval).read_text())
        same = [r for r in reports.values() if r.get("boxes") == student.get("boxes")]
        parts += student_section(student, same[0] if same else None, student_run)
    parts += thresholds_section(meta)
    if bench_data is not None:
        parts += ["## Latency per face, beside the model it replaces", *_bench_lines(bench_data), ""]
    demos = [] if demo is None else [demo] if isinstance(demo, (str, Path)) else list(demo)
    demos = [json.loads(Path(d).read_text()) for d in demos if Path(d).exists()]
    if demos:
        parts += demo_section(*demos)
    sims = [json.loads(Path(p).read_text()) for p in (opensim or []) if Path(p).exists()]
    if sims:
        parts += opensim_section(*sims)
    parts += landmark_cost_lines(reports)
    parts += [
        "## Files",
        "- `training/identity/results/`: the measured JSON behind every table here; the checkpoint it was exported "
        f"from: `training/checkpoints/{model.stem}.pt`.",
        "- The MobileFaceNet trained from scratch that this model replaced as the default still ships: "
        "`poseface_mfn.onnx`, card `MODEL_CARD_poseface_mfn.md`.",
        "",
    ]
    return write_card_text(out, "\n".join(parts))
