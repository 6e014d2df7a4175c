"""The card of a landmark model trained with CFP's profile fiducials, written from measured reports.

    python -m training.landmarks card --run RUN --model edge/models/landmarks/X.onnx --out CARD.md \
        --w300 "label=REPORT.json" ... --cfp "label=REPORT.json" ... --pose "label=REPORT.json" ... \
        [--identity "label=REPORT.json" ...] [--compare "label=RUN" ...] [--latency BENCH.json] \
        [--recipe CONFIG.toml] [--intro TEXT.md]

Every number comes from a report that a CLI wrote (``training.landmarks eval`` in its 300-W and CFP
modes, ``training.landmarks.baseline_dlib eval`` as a 300-W row, ``training.landmarks posecheck``,
``training.identity eval``, ``edge.bench --pipeline``); the labels are the caller's. Nothing is
copied by hand, so the card can be written again from new runs.
"""

from __future__ import annotations

import json
from pathlib import Path

from training.landmarks.card import _fmt
from training.model_card import write_card_text
from training.run_folder import read_metrics


def _load(spec: str, what: str) -> tuple[str, dict]:
    label, sep, path = spec.partition("=")
    if not sep or not Path(path).is_file():
        raise ValueError(f"--{what}: expected LABEL=REPORT.json of an existing file, got {spec!r}")
    try:
        return label, json.loads(Path(path).read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"--{what} {path}: not JSON ({err})") from None


def _w300_rows(reports: list[tuple[str, dict]]) -> list[str]:
    lines = [
        "| model | crop from | re-crops | faces | missed | NME | FR@0.1 | AUC@0.1 | yaw 0-15 | 15-30 | 30-45 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, r in reports:
        bins = r.get("per_yaw_bin", {})
        boxes = "detector" if r.get("boxes") == "detector" else "landmark box"
        lines.append(
            f"| {label} | {boxes} | {r.get('refine', '-')} | {r['count']} | {r.get('no_face', '-')} | "
            f"{_fmt(r['nme'])} | "
            f"{_fmt(r['fr@0.1'], 3)} | {_fmt(r['auc@0.1'], 3)} | "
            + " | ".join(_fmt(bins.get(b, {}).get("nme")) for b in ("0-15", "15-30", "30-45"))
            + " |"
        )
    return lines


def _cfp_rows(reports: list[tuple[str, dict]]) -> list[str]:
    lines = [
        "| model | folds | re-crops | frontal NME | profile NME | profile median / p90 | profiles over 0.1 |"
        " profile NME by group |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, r in reports:
        f, p = r["frontal"], r["profile"]
        groups = ", ".join(f"{k} {v:.4f}" for k, v in p.get("nme_by_group", {}).items())
        lines.append(
            f"| {label} | {r['folds']} | {r['refine']} | {_fmt(f.get('nme'))} | {_fmt(p.get('nme'))} | "
            f"{_fmt(p.get('nme_median'))} / {_fmt(p.get('nme_p90'))} | {_fmt(p.get('share_over_0.1'), 3)} | {groups} |"
        )
    return lines


def _pose_rows(reports: list[tuple[str, dict]]) -> list[str]:
    lines = [
        "| model | folds | re-crops | frontal with abs(yaw) <= 20 | profile with abs(yaw) >= 45 |"
        " profile abs(yaw) p10/p50/p90 | no face (frontal/profile) |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, r in reports:
        f, p = r["frontal"], r["profile"]
        lines.append(
            f"| {label} | {r['folds']} | {r.get('refine', '-')} | {_fmt(f['share_abs_yaw_le_20'], 3)} | "
            f"{_fmt(p['share_abs_yaw_ge_45'], 3)} | {p['abs_yaw_percentiles_10_50_90']} | "
            f"{f['no_face']}/{p['no_face']} |"
        )
    return lines


def _identity_rows(reports: list[tuple[str, dict]]) -> list[str]:
    lines = [
        "| landmarks | identity model | FF acc | FP acc | FP TAR@FAR 1e-3 | FP EER |"
        " FP by probe yaw 0-30 / 30-60 / 60-90 (pairs) |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, r in reports:
        ff, fp = r["FF"], r["FP"]
        bins = fp.get("per_probe_yaw", {})
        by_yaw = " / ".join(
            f"{_fmt(bins[b]['accuracy'], 3)} ({bins[b]['pairs']})" if b in bins and bins[b].get("pairs") else "-"
            for b in ("0-30", "30-60", "60-90")
        )
        lines.append(
            f"| {label} | {Path(r['model']).name} | {_fmt(ff['accuracy'], 4)} | {_fmt(fp['accuracy'], 4)} | "
            f"{_fmt(fp['dense'].get('tar@far=0.001'), 3)} | {_fmt(fp['dense'].get('eer'), 4)} | {by_yaw} |"
        )
    return lines


def _compare_rows(runs: list[tuple[str, Path]]) -> list[str]:
    lines = [
        "| arm | backbone | input | map | start | epochs | best 300-W val NME (epoch) | last epoch NME | CPU minutes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    from training.config import from_dict
    from training.landmarks.config import LandmarkTrainConfig

    for label, run in runs:
        cfg_d = json.loads((run / "config.json").read_text())
        cfg = from_dict(LandmarkTrainConfig, cfg_d, str(run / "config.json"))
        rows = read_metrics(run / "supervised" / "metrics.jsonl")
        best = min(rows, key=lambda r: r["val_nme"])
        start = (
            f"`{Path(cfg.init_from).name}`"
            if cfg.init_from
            else ("dlib's weights" if cfg.backbone_options.get("pretrained") else "random")
        )
        lines.append(
            f"| {label} | `{cfg.backbone}` {dict(cfg.backbone_options)} | {cfg.input_size} | "
            f"{cfg.map_size}x{cfg.map_size} | {start} | {len(rows)}/{cfg.epochs} | "
            f"{best['val_nme']:.4f} ({best['epoch']}) | {rows[-1]['val_nme']:.4f} | "
            f"{sum(r['seconds'] for r in rows) / 60:.0f} |"
        )
    return lines


def _latency_rows(bench: dict) -> list[str]:
    lines = [
        "| row | landmark file | re-crops | landmark stage p50 / p90 ms | whole face p50 ms |"
        " landmark stage ratio (to the row's first file) |",
        "|---|---|---|---|---|---|",
    ]
    bases: dict[str, float] = {}  # the first row of each variant (runtime and precision) is its base
    for r in bench.get("rows", []):
        stage = r.get("stages", {}).get("landmarks", {})
        lm = stage.get("p50_ms")
        base = bases.setdefault(r.get("variant", "-"), lm) if lm else None
        ratio = _fmt(lm / base, 2) if lm and base else "-"
        lines.append(
            f"| {r.get('variant', '-')} | {Path(str(r.get('landmarks', '-'))).name} | {r.get('refine', '-')} | "
            f"{_fmt(lm, 2)} / {_fmt(stage.get('p90_ms'), 2)} | {_fmt(r.get('per_face_p50_ms'), 2)} | {ratio} |"
        )
    return lines


def _mapping_rows() -> list[str]:
    """The CFP fiducial -> iBUG-68 table as the code holds it (edge.datasets.cfp_fiducials)."""
    from edge.datasets.cfp_fiducials import FRONTAL_TO_IBUG68, PROFILE_TO_IBUG68

    groups = {"jaw": range(0, 9), "brow": range(9, 12), "eye": range(12, 18), "nose bridge": range(18, 22)}
    groups |= {"nose base": range(22, 25), "mouth": range(25, 30)}
    lines = ["| CFP points | what | frontal -> iBUG-68 | profile -> iBUG-68 |", "|---|---|---|---|"]
    tables = (FRONTAL_TO_IBUG68, PROFILE_TO_IBUG68)
    for name, idx in groups.items():
        cells = [", ".join("-" if t[i] is None else str(t[i]) for i in idx) for t in tables]
        lines.append(f"| {idx.start}-{idx.stop - 1} | {name} | {cells[0]} | {cells[1]} |")
    return lines


def _stc_lines(cfg: dict) -> list[str]:
    """The recipe's self-training rounds, when it has any."""
    stc = cfg.get("stc", {})
    if not stc.get("rounds"):
        return []
    first = f"`{stc['teacher']}`" if stc.get("teacher") else "the supervised stage"
    coarse = ", ".join(f"{c}x{c}" if c else "full targets" for c in stc["coarse_sizes"])
    return [
        f"- Self-training (STC): {stc['rounds']} round(s), the first labelled by {first}, each the next's"
        f" teacher. A round retrains the schedule above from the same start ({stc['epochs']} epochs, x{cfg['gamma']}"
        f" at {stc['milestones']}) with {stc['unlabeled_per_round']} pseudo-labelled faces added (LFW and the"
        f" recipe's CFP folds, {stc['cfp_fraction']:.0%} CFP, half of those profiles), supervised on the score map"
        f" max-pooled to {coarse} (round by round; no offsets unless full).",
    ]


def write_profile_card(
    run: Path,
    model: Path,
    out: Path,
    w300: list[tuple[str, dict]],
    cfp: list[tuple[str, dict]],
    pose: list[tuple[str, dict]],
    identity: list[tuple[str, dict]] = (),
    compare: list[tuple[str, Path]] = (),
    latency: dict | None = None,
    intro: str = "",
    recipe: str | None = None,
) -> None:
    cfg = json.loads((run / "config.json").read_text())
    split = json.loads((run / "split.json").read_text())
    meta = json.loads(model.with_suffix(".json").read_text())
    size = meta["input_size"][0]
    stride = meta["extra"]["stride"]
    lines = [
        f"# {model.stem}: 68-point PIPNet landmarks that hold on profiles",
        "",
        f"`{model.name}` (ONNX opset 17, fp32, input 1x3x{size}x{size} RGB, mean {meta['normalisation']['mean']} /"
        f" std {meta['normalisation']['std']}) outputs the five raw PIPNet heads on a {round(size / stride)}x"
        f"{round(size / stride)} map ({stride:.1f} input pixels a cell); `edge.landmarks.Landmarker` decodes them in"
        f" numpy (argmax cell + offsets + Neighbor Regression Module, {meta['extra']['num_nb']} neighbours)."
        f" The device makes **{meta['extra'].get('refine', 1)} re-crop(s)** from the first points"
        " (`extra.refine` in the metadata).",
        "",
    ]
    if intro:
        lines += [intro, ""]
    lines += [
        "## Data",
        f"- 300-W train (AFW + HELEN-train) with all 68 points: {split['train']} faces train, {split['val']} validate"
        f" ({split['rule']}).",
        f"- CFP folds {split['cfp_partial']['folds']}: {split['cfp_partial']['faces']} photos (frontal and profile)"
        " with their 30 hand-marked fiducials mapped to the 68 points by `edge.datasets.cfp_fiducials`"
        " (frontal: 30 points on the subject's right half; profile: 21 points on the visible side, the mirror"
        " taken into account; jaw points 0-7 and brow point 9 of a profile have no twin). Unmapped points get no"
        " gradient (masked score, offset and neighbour losses). Cropped from BlazeFace's box through the device's"
        " crop policy, so the model trains on the detector's framing.",
        "- CFP fold 8 is this recipe's profile validation split; **fold 9 is never trained on** and is where the"
        " numbers below are reported.",
        "",
        "## The fiducial mapping (`edge.datasets.cfp_fiducials`, tested in `tests/test_cfp_fiducials.py`)",
        "Written for the subject's right side (a frontal photo's marked half; a profile facing image right);"
        " on the other side each index is its mirror (`MIRROR_68`). `-`: no twin, no gradient.",
        "",
        *_mapping_rows(),
        "",
        "## Recipe",
        f"- Backbone `{cfg['backbone']}` {cfg['backbone_options']}, input {cfg['input_size']};"
        + (f" started from `{cfg['init_from']}`." if cfg.get("init_from") else ""),
        f"- Adam lr {cfg['lr']} (trunk x{cfg.get('backbone_lr_scale', 1.0)}), batch {cfg['batch_size']},"
        f" {cfg['epochs']} epochs, x{cfg['gamma']} at {cfg['milestones']}; each epoch all 300-W faces plus"
        f" {cfg.get('cfp_per_epoch') or 'all'} CFP faces drawn afresh, profiles at"
        f" {cfg.get('cfp_profile_share') or 'their natural'} share.",
        *_stc_lines(cfg),
        f"- Augmentation: {cfg['augment']}.",
        f"- Recipe file: `{recipe or f'training/landmarks/configs/{run.name}.toml'}`.",
        "",
    ]
    if compare:
        lines += [
            "## Architecture at equal budget (step 3: a face-pretrained trunk)",
            "Both arms: the same data, epochs and schedule, 1 thread each, run side by side on this machine.",
            "",
            *_compare_rows(list(compare)),
            "",
        ]
    lines += [
        "## 300-W validation split (NME inter-ocular, device decoder)",
        "Landmark box: the test crop policy around the ground truth (the usual protocol). Detector: the device"
        " chain, BlazeFace's box through the measured crop policy, then the stated re-crops from the model's own"
        " points; a face the detector misses counts as NME 1.0.",
        "",
        *_w300_rows(list(w300)),
        "",
        "## CFP profiles (fiducial error over the mapped points / diagonal of the fiducials' box)",
        "Device chain from BlazeFace's largest face. The normaliser is the box around a photo's 30 fiducials"
        " (half a face wide on a frontal photo), so frontal and profile columns are each comparable with"
        " themselves, not with 300-W's inter-ocular NME.",
        "",
        *_cfp_rows(list(cfp)),
        "",
        "## Pose check (head pose from the landmarks, device chain)",
        "",
        *_pose_rows(list(pose)),
        "",
    ]
    if identity:
        lines += [
            "## What it does for recognition (identity model through the device chain, CFP fold 9)",
            "Thresholds from fold 8 (`training.identity eval --calib-folds 8 --boxes detector`), the same identity"
            " model, only the landmark model changes.",
            "",
            *_identity_rows(list(identity)),
            "",
        ]
    if latency:
        lines += [
            f"## Latency (`edge.bench --pipeline`, one run, CPU: {latency.get('cpu', '-')})",
            "",
            *_latency_rows(latency),
            "",
        ]
    recipe = recipe or f"training/landmarks/configs/{run.name}.toml"
    rounds = cfg.get("stc", {}).get("rounds", 0)
    stage = f"stc_round{rounds}" if rounds else "supervised"
    lines += [
        "Reproduce: `python -m training.landmarks train --config "
        f"{recipe} --out RUN`; export with `python -m training.landmarks export --checkpoint"
        f" RUN/{stage}/best.pt --out {model.name} --refine {meta['extra'].get('refine', 1)}`.",
        f"Score on your own data: `python -m training.landmarks eval --model {model} --images DIR`"
        " (add `--boxes detector`), or a CFP-layout root: `--cfp-root DIR --folds LIST`.",
        "",
        "Licence: Apache-2.0 (our weights; trained on research-only datasets, see ../shared/data/README.md)."
        + (
            " The trunk starts from dlib's CC0 face-recognition ResNet (see the identity card for origin and checksum)."
            if cfg["backbone"] == "dlib_resnet"
            else ""
        ),
    ]
    write_card_text(out, "\n".join(lines) + "\n")
