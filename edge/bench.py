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
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from edge.runtime.runner import load_model

MODELS_DIR = Path(__file__).parent / "models"


def cpu_model() -> str:
    """This machine's CPU as ``lscpu`` names it (timings are only comparable on one CPU)."""
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


def pipeline_variants() -> list[tuple[str, Path, Path]]:
    """(label, landmark model, identity model) pairs of the same format and precision: the
    shipped default models' variants (``edge.shipped``), named as ``variant_path`` names them."""
    from edge.runtime.meta import FORMATS, PRECISIONS, variant_path
    from edge.shipped import SHIPPED_IDENTITY, SHIPPED_LANDMARKS

    pairs = []
    for fmt in FORMATS:
        for precision in PRECISIONS:
            try:
                lm, ident = (variant_path(m, fmt, precision) for m in (SHIPPED_LANDMARKS, SHIPPED_IDENTITY))
            except ValueError:  # a combination no variant is made in
                continue
            if all(p.exists() and p.with_suffix(".json").exists() for p in (lm, ident)):
                pairs.append((f"{fmt} {precision}", lm, ident))
    return pairs


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


def bench_pipeline(frames: int, threads: int, gallery_size: int, variants=None) -> list[dict]:
    from edge.datasets.cfp import cfp_photos, fold_identities
    from edge.datasets.root import require_data_root
    from edge.detect.registry import build_detector
    from edge.gallery import gallery_arrays_from
    from edge.imageio import read_image_bgr
    from edge.landmarks.crop import BLAZEFACE_SHORT_CROP
    from edge.landmarks.landmarker import Landmarker
    from edge.matching import YawThresholds
    from edge.pipeline import FacePipeline

    variants = variants or pipeline_variants()
    if not variants:
        raise FileNotFoundError("no landmark + identity model pair of one precision under edge/models")
    photos = cfp_photos(require_data_root("cfp"), identities=fold_identities(9))
    step = max(1, len(photos) // frames)
    images = [read_image_bgr(p.image_path) for p in photos[::step][:frames]]
    rng = np.random.default_rng(0)
    rows, pipes = [], []
    for _label, lm, ident in variants:
        embedder = load_model(ident, threads=threads)
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
                build_detector({"type": "blazeface", "range": "short", "threads": threads}),
                BLAZEFACE_SHORT_CROP,
                Landmarker(load_model(lm, threads=threads)),
                embedder,
                lambda g=gallery: g,
                YawThresholds.uniform(0.5),
                stills=True,
            )
        )
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
    for (label, lm, ident), pipe, pf, n_faces in zip(variants, pipes, per_face, faces):
        stats = pipe.stats.summary()
        rows.append(
            {
                "variant": label,
                "landmarks": str(lm),
                "identity": str(ident),
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
    from edge.pipeline import STAGES

    head = f"{'variant':<14} {'thr':>3} " + " ".join(f"{s:>14}" for s in STAGES) + f" {'per face':>14}"
    lines = ["p50/p90 ms", head, "-" * len(head)]
    for r in rows:
        cells = " ".join(f"{r['stages'][s]['p50_ms']:>6.2f}/{r['stages'][s]['p90_ms']:<7.2f}" for s in STAGES)
        lines.append(
            f"{r['variant']:<14} {r['threads']:>3} {cells} {r['per_face_p50_ms']:>6.2f}/{r['per_face_p90_ms']:<7.2f}"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", type=Path)
    parser.add_argument("--pipeline", action="store_true", help="per-stage latency of the whole chain on real photos")
    parser.add_argument("--frames", type=int, default=60, help="--pipeline: real photos to run")
    parser.add_argument("--gallery-size", type=int, default=100, help="--pipeline: identities in the gallery")
    parser.add_argument("--threads", type=int, nargs="+", default=[1])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.pipeline:
        try:
            rows = []
            for threads in args.threads:
                rows += bench_pipeline(args.frames, threads, args.gallery_size)
        except (FileNotFoundError, ValueError) as err:
            print(f"edge.bench: {err}", file=sys.stderr)
            return 2
        report = {
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
