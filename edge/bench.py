"""Latency of model files on this machine, measured side by side, as one table and JSON.

    python -m edge.bench [MODEL ...] [--threads 1 2] [--runs 100] [--json OUT]

Without MODEL arguments, every shipped model under edge/models is timed. Runs are
interleaved (one call of each model per round), so a noisy, shared machine slows every
model alike and the ratios between them stay meaningful. One call = one face (batch 1),
after warm-up; the input is random in the model's own layout.
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", type=Path)
    parser.add_argument("--threads", type=int, nargs="+", default=[1])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
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
        args.json.write_text(json.dumps({"runs": args.runs, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
