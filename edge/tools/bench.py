"""Latency on this machine, measured side by side, as one table and JSON.

    python -m edge.bench [MODEL ...] [--threads 1 2] [--runs 100] [--json OUT]
    python -m edge.bench --pipeline [--frames 60] [--threads 1 2] [--gallery-size 100] [--json OUT]

Models: without MODEL arguments, every shipped model under edge/models is timed. Runs are
interleaved (one call of each model per round), so a noisy, shared machine slows every
model alike and the ratios between them stay meaningful. One call = one face (batch 1),
after warm-up; the input is random in the model's own layout.

``--pipeline``: the whole device chain per stage (detect, landmarks, pose_align, embed, match,
frame) on real photos (CFP fold 9, frontal and profile), p50/p90 per frame and per face, for
every backend/precision variant of the shipped landmark + identity models present (pairs with
the same precision and format), interleaved frame by frame; plus the process's peak memory.
Each variant (fp32, int8, ...) is its own row, labelled with the files that ran and the format
and precision their metadata JSON states (never guessed from a file name).

Every report JSON records the CPU (``cpu``, as lscpu names it): timings compare on one CPU only.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from edge.runtime.runner import load_model

MODELS_DIR = Path(__file__).parents[1] / "models"  # edge/models


def cpu_model() -> str:
    """This machine's CPU as ``lscpu`` names it (timings are only comparable on one CPU); without
    lscpu, /proc/cpuinfo's model name (x86; an Arm board's cpuinfo often has none)."""
    try:
        out = subprocess.run(
            ["lscpu"], capture_output=True, text=True, timeout=10, env={**os.environ, "LC_ALL": "C"}
        ).stdout
        # big.LITTLE boards list one model name per cluster (e.g. Cortex-A55 and Cortex-A76)
        names = [x.split(":", 1)[1].strip() for x in out.splitlines() if x.strip().lower().startswith("model name:")]
        if names:
            return " + ".join(dict.fromkeys(names))
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def shipped_models() -> list[Path]:
    return sorted(
        p for p in MODELS_DIR.rglob("*") if p.suffix in (".onnx", ".tflite") and p.with_suffix(".json").exists()
    )


def bench(paths: list[Path], threads: int, runs: int, warmup: int = 10) -> list[dict]:
    runners = [load_model(p, threads=threads) for p in paths]
    rng = np.random.default_rng(0)
    inputs = [rng.normal(0, 1, (1, *r.input_shape[1:])).astype(np.float32) for r in runners]
    for r, x in zip(runners, inputs):
        for _ in range(warmup):
            r.run(x)
    times = [[] for _ in runners]
    for _ in range(runs):
        for i, (r, x) in enumerate(zip(runners, inputs)):
            t0 = time.perf_counter()
            r.run(x)
            times[i].append((time.perf_counter() - t0) * 1000)
    base = float(np.median(times[0]))
    rows = []
    for p, r, t in zip(paths, runners, times):
        t = np.asarray(t)
        rows.append(
            {
                "model": str(p),
                "task": r.meta.task,
                "format": r.meta.format,
                "precision": r.meta.precision,
                "input": list(r.meta.input_size),
                "threads": threads,
                "size_kib": round(p.stat().st_size / 1024, 1),
                "p50_ms": round(float(np.median(t)), 3),
                "p90_ms": round(float(np.percentile(t, 90)), 3),
                "ratio_to_first": round(float(np.median(t)) / base, 3),
            }
        )
    return rows


def format_table(rows: list[dict]) -> str:
    head = f"{'model':<48} {'thr':>3} {'input':>9} {'KiB':>8} {'p50 ms':>8} {'p90 ms':>8} {'ratio':>6}"
    lines = [head, "-" * len(head)]
    for r in rows:
        name = Path(r["model"]).name
        inp = "x".join(map(str, r["input"]))
        cells = f"{r['size_kib']:>8} {r['p50_ms']:>8} {r['p90_ms']:>8} {r['ratio_to_first']:>6}"
        lines.append(f"{name:<48} {r['threads']:>3} {inp:>9} {cells}")
    return "\n".join(lines)


def ran(runner) -> dict:
    """What a loaded model really is: its file, and the format and precision its metadata states."""
    return {"file": str(runner.path), "format": runner.meta.format, "precision": runner.meta.precision}


def variant_label(landmarks: dict, identity: dict) -> str:
    """``"onnx int8"`` when the landmark and identity models agree (as :func:`ran` describes
    them); else both, e.g. ``"landmarks onnx int8 + identity onnx fp32"``."""
    lm, ident = (f"{m['format']} {m['precision']}" for m in (landmarks, identity))
    return lm if lm == ident else f"landmarks {lm} + identity {ident}"


def pipeline_variants() -> list[tuple[str, Path, Path]]:
    """(label, landmark model, identity model): the shipped default models' variants, found where
    ``variant_path`` puts them and paired by that name; the label is what the two files'
    metadata JSON says (format and precision), not what their names suggest."""
    from edge.runtime.meta import FORMATS, PRECISIONS, load_meta, meta_path_for, variant_path
    from edge.shipped import SHIPPED_IDENTITY, SHIPPED_LANDMARKS

    pairs = []
    for fmt in FORMATS:
        for precision in PRECISIONS:
            try:
                lm, ident = (variant_path(m, fmt, precision) for m in (SHIPPED_LANDMARKS, SHIPPED_IDENTITY))
            except ValueError:  # a combination no variant is made in
                continue
            if all(p.exists() and meta_path_for(p).exists() for p in (lm, ident)):
                metas = [load_meta(meta_path_for(p)) for p in (lm, ident)]
                label = variant_label(*({"format": m.format, "precision": m.precision} for m in metas))
                pairs.append((label, lm, ident))
    return pairs


def _identity_like(landmarks: Path) -> Path:
    """The shipped identity model's variant in the landmark model's format and precision (fp32 where
    there is none), so a row compares landmark models and nothing else."""
    from edge.runtime.meta import load_meta, meta_path_for, variant_path
    from edge.shipped import SHIPPED_IDENTITY

    if not Path(landmarks).is_file() or not meta_path_for(Path(landmarks)).exists():
        raise FileNotFoundError(f"--landmarks {landmarks}: expected a model file with its metadata JSON beside it")
    meta = load_meta(meta_path_for(Path(landmarks)))
    try:
        path = variant_path(SHIPPED_IDENTITY, meta.format, meta.precision)
    except ValueError:
        return SHIPPED_IDENTITY
    return path if path.exists() else SHIPPED_IDENTITY


def rss_mib(field: str = "VmRSS") -> float:
    """This process's resident memory (``VmRSS``) or its peak (``VmHWM``) in MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def bench_pipeline(
    frames: int, threads: int, gallery_size: int, variants=None, images: list[np.ndarray] | None = None
) -> list[dict]:
    """One row per variant: ``variants`` are ``(landmark model, identity model)`` pairs, or
    ``(label, landmark model, identity model)`` where the label must agree with what the files'
    metadata says (a label naming other files than ran is refused). ``images``: the frames to run
    (default: ``frames`` real CFP fold-9 photos)."""
    from edge.core.matching import YawThresholds
    from edge.core.pipeline import FacePipeline
    from edge.detect.registry import build_detector
    from edge.landmarks.crop import BLAZEFACE_SHORT_CROP
    from edge.landmarks.landmarker import Landmarker
    from edge.storage.gallery.records import gallery_arrays_from

    variants = variants or pipeline_variants()
    if not variants:
        raise FileNotFoundError("no landmark + identity model pair of one precision under edge/models")
    if images is None:
        from edge.datasets.cfp import cfp_photos, fold_identities
        from edge.datasets.root import require_data_root
        from edge.imageio import read_image_bgr

        photos = cfp_photos(require_data_root("cfp"), identities=fold_identities(9))
        step = max(1, len(photos) // frames)
        images = [read_image_bgr(p.image_path) for p in photos[::step][:frames]]
    rng = np.random.default_rng(0)
    rows, pipes, models = [], [], []
    for variant in variants:
        if len(variant) not in (2, 3):
            raise ValueError(f"variant {variant!r}: expected (landmark model, identity model) or (label, ...)")
        *asked, lm, ident = variant
        landmarker = Landmarker(load_model(lm, threads=threads))
        embedder = load_model(ident, threads=threads)
        detector = build_detector({"type": "blazeface", "range": "short", "threads": threads})
        # what the pipeline below really runs: the runners' own files and metadata
        loaded = {"detector": ran(detector.runner), "landmarks": ran(landmarker.runner), "identity": ran(embedder)}
        label = variant_label(loaded["landmarks"], loaded["identity"])
        if asked and asked[0] != label:
            raise ValueError(
                f"variant {asked[0]!r}: {Path(lm).name} + {Path(ident).name} are {label!r} by their metadata"
            )
        dim = int(
            np.prod(
                embedder.run(np.zeros((1, *embedder.input_shape[1:]), np.float32))[embedder.meta.output_names[0]].shape[
                    1:
                ]
            )
        )
        gallery = gallery_arrays_from(
            (f"id{i // 3}", rng.normal(size=dim), float(rng.uniform(-60, 60))) for i in range(3 * gallery_size)
        )
        pipes.append(
            FacePipeline(
                detector,
                BLAZEFACE_SHORT_CROP,
                landmarker,
                embedder,
                lambda g=gallery: g,
                YawThresholds.uniform(0.5),
                stills=True,
            )
        )
        models.append((label, loaded))
    for pipe in pipes:  # warm-up
        for image in images[:3]:
            pipe.process(image)
        pipe.stats.clear()
    per_face = [[] for _ in pipes]
    faces = [0 for _ in pipes]
    for image in images:
        for i, pipe in enumerate(pipes):
            result = pipe.process(image)
            faces[i] += len(result.faces)
            if result.faces:
                per_face[i].append(result.timings_ms["frame"] / len(result.faces))
    for (label, loaded), pipe, pf, n_faces in zip(models, pipes, per_face, faces):
        stats = pipe.stats.summary()
        precisions = {loaded["landmarks"]["precision"], loaded["identity"]["precision"]}
        rows.append(
            {
                "variant": label,
                "precision": precisions.pop() if len(precisions) == 1 else "mixed",
                "landmarks": loaded["landmarks"]["file"],
                "identity": loaded["identity"]["file"],
                "models": loaded,
                "refine": pipe.refine,
                "threads": threads,
                "frames": len(images),
                "faces": n_faces,
                "stages": stats,
                "per_face_p50_ms": round(float(np.median(pf)), 3) if pf else None,
                "per_face_p90_ms": round(float(np.percentile(pf, 90)), 3) if pf else None,
            }
        )
    return rows


def format_pipeline(rows: list[dict]) -> str:
    from edge.core.pipeline import STAGES

    def cell(p50, p90) -> str:
        return f"{p50:>6.2f}/{p90:<7.2f}" if p50 is not None else f"{'-':>6}/{'-':<7}"

    width = max([14, *(len(r["variant"]) for r in rows)])
    head = f"{'variant':<{width}} {'thr':>3} " + " ".join(f"{s:>14}" for s in STAGES) + f" {'per face':>14}  files"
    lines = ["p50/p90 ms", head, "-" * len(head)]
    for r in rows:
        stages = r["stages"]
        cells = " ".join(
            cell(stages[s]["p50_ms"], stages[s]["p90_ms"]) if s in stages else cell(None, None) for s in STAGES
        )
        files = " + ".join(Path(r["models"][k]["file"]).name for k in ("landmarks", "identity"))
        per_face = cell(r["per_face_p50_ms"], r["per_face_p90_ms"])
        lines.append(f"{r['variant']:<{width}} {r['threads']:>3} {cells} {per_face}  {files}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", type=Path)
    parser.add_argument("--pipeline", action="store_true", help="per-stage latency of the whole chain on real photos")
    parser.add_argument("--frames", type=int, default=60, help="--pipeline: real photos to run")
    parser.add_argument("--gallery-size", type=int, default=100, help="--pipeline: identities in the gallery")
    parser.add_argument(
        "--landmarks",
        type=Path,
        nargs="+",
        help="--pipeline: these landmark models side by side (each with its own re-crops), beside the shipped"
        " identity model of the same precision, instead of the shipped pairs",
    )
    parser.add_argument("--threads", type=int, nargs="+", default=[1])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.pipeline:
        try:
            rows = []
            variants = None
            if args.landmarks:
                variants = [(lm, _identity_like(lm)) for lm in args.landmarks]
            for threads in args.threads:
                rows += bench_pipeline(args.frames, threads, args.gallery_size, variants)
        except (FileNotFoundError, ValueError) as err:
            print(f"edge.bench: {err}", file=sys.stderr)
            return 2
        report = {
            "cpu": cpu_model(),
            "frames": args.frames,
            "gallery_identities": args.gallery_size,
            "rows": rows,
            "peak_rss_mib": rss_mib("VmHWM"),
        }
        print(format_pipeline(rows))
        print(f"peak memory (RSS) of this process: {report['peak_rss_mib']} MiB")
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(report, indent=1) + "\n")
        return 0
    paths = args.models or shipped_models()
    if not paths:
        print("error: no models given and none shipped under edge/models", file=sys.stderr)
        return 2
    rows = []
    for threads in args.threads:
        rows += bench(paths, threads, args.runs)
    print(format_table(rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"cpu": cpu_model(), "runs": args.runs, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
