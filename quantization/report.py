"""What int8 (and fp16, and TFLite) costs: every variant of the shipped models, scored side by side.

    python -m quantization.report [--models-dir edge/models] [--out out/quant_report] [--quick] [--cards]

Variants are the files beside each fp32 model (``<stem>.onnx``, ``<stem>_int8.onnx``,
``<stem>_tfl_fp32.tflite``, ``<stem>_tfl_fp16.tflite``, ``<stem>_tfl_int8.tflite``;
``python -m quantization build`` makes them). Each runs through the edge runner and is scored by training's own
evaluation code, on data the models never trained on:

- landmarks: the fixed 300-W validation split (NME, FR@0.1, AUC@0.1, per ground-truth yaw bin
  0-15/15-30/30-45/45+, CED curves) and the pose check on CFP fold 9 photos;
- identity: CFP fold 9 FF and FP (threshold chosen on fold 8), TAR@FAR, per probe-yaw bin, the
  cosine between each variant's and fp32's embedding of the same face per yaw bin, and how many
  fold-9 pair decisions flip at fp32's operating threshold.

Every file: size, peak memory (a fresh process loads it and runs it), latency p50/p90 at one
thread and at all cores, interleaved in one run, with the ratio to fp32 of the same runtime.
Writes ``report.json``, ``summary.md`` and PNG plots to ``--out``, and prints the summary.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from edge.runtime import load_model
from edge.shipped import SHIPPED_IDENTITY, SHIPPED_LANDMARKS
from training.model_card import CARD_BEGIN, CARD_END

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "edge" / "models"
STEMS = {"landmarks": SHIPPED_LANDMARKS.stem, "identity": SHIPPED_IDENTITY.stem}  # the shipped defaults
VARIANTS = (("onnx", "fp32"), ("onnx", "int8"), ("tflite", "fp32"), ("tflite", "fp16"), ("tflite", "int8"))

# Targets (issue 7): checked here, never by timed unit tests.
LANDMARK_NME_DELTA = 0.001  # +0.10 NME points, in every yaw bin
IDENTITY_FP_DELTA = 0.005  # CFP-FP accuracy within 0.5 points
IDENTITY_MIN_COSINE = 0.99  # mean int8-vs-fp32 cosine
MIN_SPEEDUP = 2.0  # int8 vs fp32, 1 thread, same runtime
MIN_SHRINK = 3.0  # int8 file several times smaller than fp32
DRIFT_BINS = ((0, 30), (30, 60), (60, 90))


def variant_files(models_dir: Path, task: str) -> dict[str, Path]:
    """``"onnx/int8"`` -> path, for the variants present beside the task's fp32 model."""
    from edge.runtime.meta import variant_path

    stem = STEMS[task]
    out = {}
    for fmt, precision in VARIANTS:
        path = variant_path(Path(models_dir) / task / f"{stem}.onnx", fmt, precision)
        if path.exists():
            out[f"{fmt}/{precision}"] = path
    if "onnx/fp32" not in out:
        raise FileNotFoundError(f"{Path(models_dir) / task / (stem + '.onnx')}: the fp32 model is missing")
    return out


# ------------------------------------------------------------------ landmarks


def landmark_report(files: dict[str, Path], quick: bool, out: Path) -> dict:
    from edge.landmarks.landmarker import Landmarker
    from training.landmarks.evalcli import plot_ced, score, split_faces, yaw_of
    from training.landmarks.evaluate import evaluate_labelled
    from training.landmarks.posecheck import pose_check

    faces = split_faces("val")
    if quick:
        faces = faces[:40]
    yaws = np.array([yaw_of(p, g) for p, g in faces])
    rows, curves = {}, {}
    for name, path in files.items():
        landmarker = Landmarker(load_model(path))
        errors = evaluate_labelled(landmarker, faces)
        curves[name] = errors
        rows[name] = {
            "file": path.name,
            "validation": score(errors, yaws),
            "pose_check_cfp_fold9": pose_check(landmarker, None, [9], progress=False)
            if not quick
            else "skipped (--quick)",
        }
    plot_ced(curves, out / "landmarks_ced.png")
    return rows


# ------------------------------------------------------------------ identity


def identity_report(files: dict[str, Path], quick: bool, out: Path) -> dict:
    from edge.app.enroll import LANDMARK_MODEL
    from edge.datasets.cfp import cfp_root
    from edge.geometry.align import alignment_from_meta
    from edge.landmarks.landmarker import Landmarker
    from edge.runtime.meta import load_meta
    from training.identity.evaluate import (
        PROTOCOLS,
        RunnerEmbedder,
        plot_roc,
        prepare_photos,
        protocol_scores,
        table_from,
        verification_report,
    )

    root = cfp_root()
    # Faces are prepared once (fp32 landmarks, fiducial boxes), cut as the fp32 model's metadata
    # says (every variant shares it): only the identity model varies.
    spec = alignment_from_meta(load_meta(files["onnx/fp32"].with_suffix(".json")))
    prepared = prepare_photos(
        root, [8, 9], Landmarker(load_model(LANDMARK_MODEL)), "fiducials", spec, progress=not quick
    )
    if quick:
        prepared = [p for p in prepared if int(p.key.split("/")[0]) % 25 in (1, 2)]
    tables = {name: table_from(prepared, RunnerEmbedder(load_model(path))) for name, path in files.items()}
    reference = tables["onnx/fp32"]  # first in ``files``: its report gives the operating thresholds
    reference_scores = {p: protocol_scores(root, p, [9], reference)[:2] for p in PROTOCOLS}
    rows, rocs = {}, {}
    fp32_report = None
    for name, table in tables.items():
        report = verification_report(root, table, 9, [8], with_roc=True)
        rocs[name] = report.pop("_roc")["FP"]
        if name == "onnx/fp32":
            fp32_report = report
        keys = [k for k in reference.index if k in table.index]
        a = reference.embeddings[[reference.index[k] for k in keys]]
        b = table.embeddings[[table.index[k] for k in keys]]
        cos = np.sum(a * b, axis=1)
        yaw = reference.abs_yaw[[reference.index[k] for k in keys]]
        drift = {"mean": float(cos.mean()), "min": float(cos.min())}
        for lo, hi in DRIFT_BINS:
            sel = (yaw >= lo) & (yaw < hi) if hi < 90 else yaw >= lo
            drift[f"{lo}-{hi}"] = {"faces": int(sel.sum()), "mean": float(cos[sel].mean()) if sel.any() else None}
        flips = {}
        for protocol in PROTOCOLS:
            threshold = fp32_report[protocol]["threshold"]
            s_ref, labels = reference_scores[protocol]
            s_var, _, _ = protocol_scores(root, protocol, [9], table)
            changed = (s_ref >= threshold) != (s_var >= threshold)
            flips[protocol] = {
                "threshold_fp32": threshold,
                "genuine_flipped": int((changed & labels).sum()),
                "impostor_flipped": int((changed & ~labels).sum()),
                "pairs": int(len(labels)),
            }
        rows[name] = {"file": files[name].name, "cfp_fold9": report, "drift_vs_fp32": drift, "decision_flips": flips}
    plot_roc(rocs, out / "identity_roc_fp.png", "CFP-FP fold 9, dense pairs, per variant")
    _plot_drift(rows, out / "identity_drift.png")
    return rows


def _plot_drift(rows: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in rows if n != "onnx/fp32"]
    bins = [f"{lo}-{hi}" for lo, hi in DRIFT_BINS]
    fig, ax = plt.subplots(figsize=(6, 3.8))
    width = 0.8 / max(len(names), 1)
    for i, name in enumerate(names):
        values = [rows[name]["drift_vs_fp32"][b]["mean"] or np.nan for b in bins]
        ax.bar(np.arange(len(bins)) + i * width, values, width, label=name)
    ax.axhline(IDENTITY_MIN_COSINE, color="red", lw=1, ls="--", label=f"target {IDENTITY_MIN_COSINE}")
    ax.set_xticks(np.arange(len(bins)) + width * (len(names) - 1) / 2, [f"|yaw| {b}" for b in bins])
    ax.set_ylim(0.97, 1.0005)
    ax.set_ylabel("mean cosine to fp32 embedding")
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------ size, memory, speed


_PEAK_SNIPPET = """
import sys, numpy as np
from edge.runtime import load_model
r = load_model(sys.argv[1], threads=1)
x = np.zeros((1, *r.input_shape[1:]), np.float32)
for _ in range(20):
    r.run(x)
from edge.tools.bench import rss_mib
print(rss_mib("VmHWM"))
"""


def peak_memory_mib(path: Path) -> float | None:
    """Peak resident memory of a fresh Python process that loads ``path`` and runs it 20 times."""
    if not Path("/proc/self/status").exists():
        return None
    done = subprocess.run(
        [sys.executable, "-c", _PEAK_SNIPPET, str(path)], capture_output=True, text=True, cwd=ROOT, check=True
    )
    return round(float(done.stdout.strip().splitlines()[-1]), 1)


def onnx_kernel_ms(path: Path, runs: int) -> float:
    """Mean time per run inside onnxruntime's operator kernels (its profiler), at one thread:
    the speed-up of the arithmetic itself, without the fixed cost of a call."""
    import onnxruntime as ort

    from edge.runtime.meta import load_meta

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.enable_profiling = True
    options.profile_file_prefix = str(Path(os.environ.get("TMPDIR", "/tmp")) / "poseface-quant-profile")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    meta = load_meta(path.with_suffix(".json"))
    shape = [1, 3, meta.height, meta.width] if meta.input_layout == "NCHW" else [1, meta.height, meta.width, 3]
    x = np.zeros(shape, np.float32)
    for _ in range(runs):
        session.run(None, {meta.input_name: x})
    trace = Path(session.end_profiling())
    events = json.loads(trace.read_text())
    trace.unlink()
    total_us = sum(e["dur"] for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"))
    return round(total_us / runs / 1000, 3)


def speed_rows(files: dict[str, Path], runs: int) -> dict:
    """Latency of every file at 1 thread and at all cores; every runtime's files interleaved in
    one run, so the ratio to its fp32 file is measured side by side."""
    from edge.tools.bench import bench

    names = list(files)
    out = {name: {"size_kib": round(files[name].stat().st_size / 1024, 1)} for name in names}
    for threads in sorted({1, os.cpu_count() or 1}):
        rows = bench([files[n] for n in names], threads=threads, runs=runs)
        for name, row in zip(names, rows):
            out[name][f"threads_{threads}"] = {"p50_ms": row["p50_ms"], "p90_ms": row["p90_ms"]}
        for name in names:
            fmt = name.split("/")[0]
            base = out.get(f"{fmt}/fp32", {}).get(f"threads_{threads}")
            if base:
                out[name][f"threads_{threads}"]["speedup_vs_fp32_same_runtime"] = round(
                    base["p50_ms"] / out[name][f"threads_{threads}"]["p50_ms"], 2
                )
    for name in names:
        fp32 = out.get(f"{name.split('/')[0]}/fp32")
        out[name]["shrink_vs_fp32"] = round(fp32["size_kib"] / out[name]["size_kib"], 2) if fp32 else None
        out[name]["peak_rss_mib"] = peak_memory_mib(files[name])
        if name.startswith("onnx/"):
            out[name]["kernel_ms_1_thread"] = onnx_kernel_ms(files[name], runs)
    if "onnx/fp32" in out:
        for name in names:
            if name.startswith("onnx/"):
                out[name]["kernel_speedup_vs_fp32"] = round(
                    out["onnx/fp32"]["kernel_ms_1_thread"] / out[name]["kernel_ms_1_thread"], 2
                )
    return out


# ------------------------------------------------------------------ verdicts


def landmark_accuracy_problems(name: str, acc: dict) -> list[str]:
    ref = acc["onnx/fp32"]["validation"]
    mine = acc[name]["validation"]
    problems = []
    if mine["nme"] - ref["nme"] > LANDMARK_NME_DELTA:
        problems.append(f"NME +{(mine['nme'] - ref['nme']) * 100:.3f} points overall")
    for key, b in mine["per_yaw_bin"].items():
        rb = ref["per_yaw_bin"][key]
        if b.get("count") and rb.get("count") and b["nme"] - rb["nme"] > LANDMARK_NME_DELTA:
            problems.append(f"NME +{(b['nme'] - rb['nme']) * 100:.3f} points at yaw {key}")
    return problems


def identity_accuracy_problems(name: str, acc: dict) -> list[str]:
    ref = acc["onnx/fp32"]["cfp_fold9"]["FP"]["accuracy"]
    mine = acc[name]["cfp_fold9"]["FP"]["accuracy"]
    problems = []
    if ref - mine > IDENTITY_FP_DELTA:
        problems.append(f"CFP-FP accuracy {(mine - ref) * 100:+.2f} points")
    cos = acc[name]["drift_vs_fp32"]["mean"]
    if cos < IDENTITY_MIN_COSINE:
        problems.append(f"mean cosine to fp32 {cos:.4f} < {IDENTITY_MIN_COSINE}")
    return problems


def speed_problems(name: str, speed: dict) -> list[str]:
    problems = []
    if name.endswith("int8"):
        ratio = speed[name]["threads_1"].get("speedup_vs_fp32_same_runtime")
        if ratio is not None and ratio < MIN_SPEEDUP:
            problems.append(f"{ratio:.2f}x faster than fp32 at 1 thread (target {MIN_SPEEDUP:g}x)")
        shrink = speed[name]["shrink_vs_fp32"]
        if shrink is not None and shrink < MIN_SHRINK:
            problems.append(f"{shrink:.2f}x smaller than fp32 (target {MIN_SHRINK:g}x)")
    return problems


def verdicts(task: str, acc: dict, speed: dict) -> dict[str, tuple[str, list[str]]]:
    """Per variant: (verdict, notes). Accuracy targets decide whether a file may be deployed;
    the fastest deployable file of each runtime (1 thread, p50) is the one to deploy."""
    accuracy = landmark_accuracy_problems if task == "landmarks" else identity_accuracy_problems
    out, deployable = {}, {}
    for name in acc:
        if name == "onnx/fp32":
            out[name] = ("REFERENCE", [])
            deployable.setdefault("onnx", []).append(name)
            continue
        bad_accuracy, slow = accuracy(name, acc), speed_problems(name, speed)
        notes = []
        if name.endswith("fp16"):
            notes.append("half the fp32 file; a CPU computes it in fp32, so no faster")
        if bad_accuracy:
            out[name] = ("FAILS ACCURACY", bad_accuracy + slow + notes)
            continue
        deployable.setdefault(name.split("/")[0], []).append(name)
        out[name] = (("MISSES SPEED/SIZE TARGET" if slow else "PASS"), slow + notes)
    for fmt, names in deployable.items():
        best = min(names, key=lambda n: speed[n]["threads_1"]["p50_ms"])
        status, notes = out[best]
        runtime = "onnxruntime" if fmt == "onnx" else "TFLite"
        out[best] = (f"{status}; DEPLOY THIS with {runtime}", ["accuracy targets met, fastest at 1 thread", *notes])
    return out


# ------------------------------------------------------------------ main


def run(models_dir: Path, out: Path, quick: bool = False, runs: int = 200, tasks=("landmarks", "identity")) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {"quick": quick, "models_dir": str(models_dir), "threads_all": os.cpu_count()}
    for task in tasks:
        files = variant_files(models_dir, task)
        acc = landmark_report(files, quick, out) if task == "landmarks" else identity_report(files, quick, out)
        speed = speed_rows(files, runs=20 if quick else runs)
        judged = verdicts(task, acc, speed)
        report[task] = {}
        for name in files:
            status, notes = judged[name]
            report[task][name] = {**acc[name], "speed": speed[name], "verdict": status, "verdict_notes": notes}
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    summary = summary_markdown(report)
    (out / "summary.md").write_text(summary)
    return report


def summary_markdown(report: dict) -> str:
    lines = ["# Quantization report", ""]
    if report["quick"]:
        lines += ["**Quick smoke run on a small subset: the numbers are not comparable to a full run.**", ""]
    if "landmarks" in report:
        lines += [
            "## Landmarks (300-W validation split; NME inter-ocular)",
            "",
            "| variant | verdict | NME | FR@0.1 | AUC@0.1 | NME yaw 0-15 | 15-30 | 30-45 | 45+ | "
            "CFP frontal yaw<=20 | profile yaw>=45 |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, row in report["landmarks"].items():
            v = row["validation"]
            bins = [v["per_yaw_bin"][k].get("nme") for k in ("0-15", "15-30", "30-45", "45+")]
            pc = row["pose_check_cfp_fold9"]
            front = pc["frontal"]["share_abs_yaw_le_20"] if isinstance(pc, dict) else None
            prof = pc["profile"]["share_abs_yaw_ge_45"] if isinstance(pc, dict) else None
            lines.append(
                f"| {name} | {row['verdict']} | {v['nme']:.4f} | {v['fr@0.1']:.3f} | {v['auc@0.1']:.3f} | "
                + " | ".join("-" if b is None else f"{b:.4f}" for b in bins)
                + f" | {_fmt(front)} | {_fmt(prof)} |"
            )
        lines.append("")
    if "identity" in report:
        lines += [
            "## Identity (CFP fold 9, fiducial boxes; threshold chosen on fold 8)",
            "",
            "| variant | verdict | FF acc | FP acc | FP TAR@1e-2 | FP TAR@1e-3 | FP acc yaw 0-30 | 30-60 | 60-90 | "
            "cos to fp32 mean | 0-30 | 30-60 | 60-90 | FP decisions flipped |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, row in report["identity"].items():
            r = row["cfp_fold9"]
            per = r["FP"]["per_probe_yaw"]
            d = row["drift_vs_fp32"]
            fl = row["decision_flips"]["FP"]
            lines.append(
                f"| {name} | {row['verdict']} | {r['FF']['accuracy']:.4f} | {r['FP']['accuracy']:.4f} | "
                f"{r['FP']['dense']['tar@far=0.01']:.4f} | {r['FP']['dense']['tar@far=0.001']:.4f} | "
                + " | ".join(_fmt(_bin_acc(per, k)) for k in ("0-30", "30-60", "60-90"))
                + f" | {d['mean']:.5f} | "
                + " | ".join(_fmt(d[f"{lo}-{hi}"]["mean"], 5) for lo, hi in DRIFT_BINS)
                + f" | {fl['genuine_flipped'] + fl['impostor_flipped']}/{fl['pairs']} |"
            )
        lines.append("")
    lines += [
        "## Size, memory, speed (this CPU; p50 ms per face; ratio to fp32 of the same runtime)",
        "",
        "| model | variant | KiB | x smaller | peak RSS MiB | 1 thread p50 / p90 | speed-up | all cores p50 / p90 | "
        "speed-up | ORT kernel ms (speed-up) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for task in ("landmarks", "identity"):
        for name, row in report.get(task, {}).items():
            s = row["speed"]
            t1 = s["threads_1"]
            ta = s.get(f"threads_{report['threads_all']}", t1)
            lines.append(
                f"| {task} | {name} | {s['size_kib']} | {_fmt(s['shrink_vs_fp32'], 2)} | "
                f"{_fmt(s['peak_rss_mib'], 1)} | "
                f"{t1['p50_ms']} / {t1['p90_ms']} | {_fmt(t1.get('speedup_vs_fp32_same_runtime'), 2)} | "
                f"{ta['p50_ms']} / {ta['p90_ms']} | {_fmt(ta.get('speedup_vs_fp32_same_runtime'), 2)} | "
                + _kernel_cell(s)
            )
    lines += ["", "## Verdicts", ""]
    for task in ("landmarks", "identity"):
        for name, row in report.get(task, {}).items():
            notes = "; ".join(row["verdict_notes"])
            lines.append(f"- {task} {name} ({row['file']}): **{row['verdict']}**" + (f": {notes}" if notes else ""))
    return "\n".join(lines) + "\n"


def card_section(report: dict, task: str) -> str:
    """The model card's section on the variants: the report's table rows for this model."""
    full = summary_markdown({k: v for k, v in report.items() if k in ("quick", "threads_all")} | {task: report[task]})
    body = full.split("\n", 2)[2].strip()  # drop the report's own title
    return "\n".join(
        [
            CARD_BEGIN,
            "## Quantized variants",
            "",
            "Made by `python -m quantization build` (calibration on real faces, method and mixed precision chosen on",
            "selection faces; the details are in each file's metadata, `extra.quantization`) and scored by",
            "`python -m quantization.report` on data no variant trained or calibrated on:",
            "",
            body.replace("## ", "### "),
            CARD_END,
        ]
    )


def update_cards(report: dict, models_dir: Path) -> None:
    """Write the report's numbers into each model card (replacing the previous section) and into
    each variant's metadata ``accuracy`` (the model file, and so its checksum, is untouched)."""
    import dataclasses

    from edge.runtime.meta import load_meta, save_meta

    for task in ("landmarks", "identity"):
        if task not in report:
            continue
        card = Path(models_dir) / task / "MODEL_CARD.md"
        text = card.read_text() if card.exists() else ""
        if CARD_BEGIN in text:
            text = (
                text[: text.index(CARD_BEGIN)].rstrip() + "\n\n" + text[text.index(CARD_END) + len(CARD_END) :].lstrip()
            )
        card.write_text(text.rstrip() + "\n\n" + card_section(report, task) + "\n")
        for name, row in report[task].items():
            if name == "onnx/fp32":
                continue
            path = Path(models_dir) / task / row["file"]
            meta = load_meta(path.with_suffix(".json"))
            if task == "landmarks":
                v = row["validation"]
                accuracy = {"w300_val_nme": v["nme"], "w300_val_fr@0.1": v["fr@0.1"], "w300_val_auc@0.1": v["auc@0.1"]}
            else:
                r = row["cfp_fold9"]
                accuracy = {
                    "cfp_fold9_ff_acc_fiducials": r["FF"]["accuracy"],
                    "cfp_fold9_fp_acc_fiducials": r["FP"]["accuracy"],
                    "cfp_fold9_fp_tar@far=1e-3_fiducials": r["FP"]["dense"]["tar@far=0.001"],
                    "cosine_to_fp32_mean": row["drift_vs_fp32"]["mean"],
                }
            accuracy = {k: round(float(x), 5) for k, x in accuracy.items()}
            extra = {**meta.extra, "report_verdict": row["verdict"]}
            save_meta(dataclasses.replace(meta, accuracy=accuracy, extra=extra), path.with_suffix(".json"))


def _kernel_cell(speed: dict) -> str:
    if "kernel_ms_1_thread" not in speed:
        return "- |"
    return f"{speed['kernel_ms_1_thread']} ({speed['kernel_speedup_vs_fp32']}x) |"


def _bin_acc(per: dict, key: str):
    entry = per.get(key)
    if isinstance(entry, dict):
        return entry.get("accuracy")
    return entry


def _fmt(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m quantization.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models-dir", type=Path, default=MODELS, help="folder with landmarks/ and identity/")
    parser.add_argument("--out", type=Path, default=Path("out/quant_report"))
    parser.add_argument("--task", nargs="+", choices=["landmarks", "identity"], default=["landmarks", "identity"])
    parser.add_argument("--runs", type=int, default=200, help="timed runs per file and thread count")
    parser.add_argument("--quick", action="store_true", help="small real subset (smoke run; numbers not comparable)")
    parser.add_argument(
        "--cards", action="store_true", help="write the numbers into the model cards and the variants' metadata"
    )
    args = parser.parse_args(argv)
    if args.cards and args.quick:
        print("error: --cards records a full run's numbers; drop --quick", file=sys.stderr)
        return 2
    try:
        report = run(args.models_dir, args.out, args.quick, args.runs, tuple(args.task))
        if args.cards:
            update_cards(report, args.models_dir)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print((args.out / "summary.md").read_text())
    print(f"wrote {args.out}/report.json, summary.md and plots")
    return 0


if __name__ == "__main__":
    sys.exit(main())
