"""edge.bench: times every given model side by side and writes the table as JSON."""

from __future__ import annotations

import json
import subprocess
import sys

from edge.bench import shipped_models


def test_bench_times_the_shipped_models(tmp_path):
    models = shipped_models()
    names = {m.name for m in models}
    assert {"face_detection_short_range.tflite", "face_detection_full_range.tflite"} <= names
    out = tmp_path / "bench.json"
    res = subprocess.run(
        [sys.executable, "-m", "edge.bench", *map(str, models[:2]), "--runs", "3", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-1500:]
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 2 and rows[0]["ratio_to_first"] == 1.0
    assert all(r["p50_ms"] > 0 and r["p90_ms"] >= r["p50_ms"] for r in rows)
    assert "p50 ms" in res.stdout


def test_bench_without_models_fails_clearly(tmp_path, monkeypatch):
    from edge import bench

    monkeypatch.setattr(bench, "MODELS_DIR", tmp_path)
    assert bench.main([]) == 2


def test_pipeline_pairs_the_shipped_defaults_variants_by_their_names():
    """Each row of `edge.bench --pipeline` runs the landmark and identity files its label names
    (the default models' variants, not the other identity model beside them)."""
    from edge.bench import pipeline_variants
    from edge.runtime.meta import load_meta
    from edge.shipped import SHIPPED_IDENTITY

    pairs = {label: (lm, ident) for label, lm, ident in pipeline_variants()}
    assert {"onnx fp32", "onnx int8", "tflite int8"} <= set(pairs)
    for label, files in pairs.items():
        fmt, precision = label.split()
        for path in files:
            meta = load_meta(path.with_suffix(".json"))
            assert (meta.format, meta.precision) == (fmt, precision), (label, path.name)
        assert files[1].name.startswith(SHIPPED_IDENTITY.stem)
