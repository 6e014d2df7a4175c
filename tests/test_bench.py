"""edge.bench: times every given model side by side and writes the table as JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from edge.tools.bench import shipped_models


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
    report = json.loads(out.read_text())
    rows = report["rows"]
    assert report["cpu"] and len(rows) == 2 and rows[0]["ratio_to_first"] == 1.0
    assert all(r["p50_ms"] > 0 and r["p90_ms"] >= r["p50_ms"] for r in rows)
    assert "p50 ms" in res.stdout


def test_bench_without_models_fails_clearly(tmp_path, monkeypatch):
    from edge.tools import bench

    monkeypatch.setattr(bench, "MODELS_DIR", tmp_path)
    assert bench.main([]) == 2


def test_pipeline_pairs_the_shipped_defaults_variants_by_their_names():
    """Each row of `edge.bench --pipeline` runs the landmark and identity files its label names
    (the default models' variants, not the other identity model beside them)."""
    from edge.runtime.meta import load_meta
    from edge.shipped import SHIPPED_IDENTITY
    from edge.tools.bench import pipeline_variants

    pairs = {label: (lm, ident) for label, lm, ident in pipeline_variants()}
    assert {"onnx fp32", "onnx int8", "tflite int8"} <= set(pairs)
    for label, files in pairs.items():
        fmt, precision = label.split()
        for path in files:
            meta = load_meta(path.with_suffix(".json"))
            assert (meta.format, meta.precision) == (fmt, precision), (label, path.name)
        assert files[1].name.startswith(SHIPPED_IDENTITY.stem)


def _meta_label(path) -> tuple[str, str]:
    from edge.runtime.meta import load_meta, meta_path_for

    meta = load_meta(meta_path_for(path))
    return meta.format, meta.precision


def test_pipeline_rows_are_labelled_with_the_files_that_ran_and_their_metadata():
    """Every --pipeline row names the files its pipeline loaded, and its label and precision are
    what those files' metadata JSON says; fp32 and int8 are separate rows. No timing is checked."""
    import numpy as np

    from edge.tools.bench import bench_pipeline, format_pipeline, pipeline_variants

    variants = pipeline_variants()
    frames = [np.full((240, 320, 3), 128, np.uint8)] * 2  # no face: the labels are what is checked
    rows = bench_pipeline(2, 1, 2, variants, images=frames)
    assert len(rows) == len(variants) and len({r["variant"] for r in rows}) == len(rows)
    assert {"onnx fp32", "onnx int8"} <= {r["variant"] for r in rows}
    for row, (label, lm, ident) in zip(rows, variants):
        models = row["models"]
        assert (models["landmarks"]["file"], models["identity"]["file"]) == (str(lm), str(ident))
        assert (row["landmarks"], row["identity"]) == (str(lm), str(ident))
        for role in ("detector", "landmarks", "identity"):
            meta = _meta_label(models[role]["file"])
            assert (models[role]["format"], models[role]["precision"]) == meta, (role, models[role])
        fmt, precision = _meta_label(lm)
        assert _meta_label(ident) == (fmt, precision)
        assert row["variant"] == label == f"{fmt} {precision}" and row["precision"] == precision
    table = format_pipeline(rows)
    for row in rows:
        line = next(x for x in table.splitlines() if x.startswith(row["variant"] + " "))
        assert Path(row["landmarks"]).name in line and Path(row["identity"]).name in line


def test_pipeline_label_comes_from_metadata_not_the_file_name(tmp_path):
    """int8 files under fp32-looking names are labelled int8; a label naming other files than
    ran (the old "onnx fp32" beside pipnet_light_int8.onnx) is refused with one line."""
    import shutil

    import numpy as np
    import pytest

    from edge.runtime.meta import meta_path_for, variant_path
    from edge.shipped import SHIPPED_IDENTITY_MFN, SHIPPED_LANDMARKS
    from edge.tools.bench import bench_pipeline

    renamed = []
    for model in (SHIPPED_LANDMARKS, SHIPPED_IDENTITY_MFN):
        int8 = variant_path(model, "onnx", "int8")
        target = tmp_path / model.name  # e.g. pipnet_light_stc.onnx holding the int8 model
        shutil.copy(int8, target)
        shutil.copy(meta_path_for(int8), meta_path_for(target))
        renamed.append(target)
    frames = [np.full((240, 320, 3), 128, np.uint8)]
    (row,) = bench_pipeline(1, 1, 2, [tuple(renamed)], images=frames)
    assert row["variant"] == "onnx int8" and row["precision"] == "int8"
    assert row["models"]["landmarks"]["file"] == str(renamed[0])
    lm_int8 = variant_path(SHIPPED_LANDMARKS, "onnx", "int8")
    with pytest.raises(ValueError, match=rf"'onnx fp32'.*{lm_int8.stem}\.onnx.*'onnx int8'") as err:
        bench_pipeline(1, 1, 2, [("onnx fp32", lm_int8, variant_path(SHIPPED_IDENTITY_MFN, "onnx", "int8"))], frames)
    assert "\n" not in str(err.value)


def test_pipeline_report_json_records_the_cpu_and_the_files(real_data, tmp_path, monkeypatch):
    """`edge.bench --pipeline --json`: the CPU beside the timings, each row's files and precision."""
    from edge.runtime.meta import variant_path
    from edge.shipped import SHIPPED_IDENTITY_MFN, SHIPPED_LANDMARKS
    from edge.tools import bench

    lm_int8, id_int8 = (variant_path(m, "onnx", "int8") for m in (SHIPPED_LANDMARKS, SHIPPED_IDENTITY_MFN))
    monkeypatch.setattr(
        bench, "pipeline_variants", lambda: [(SHIPPED_LANDMARKS, SHIPPED_IDENTITY_MFN), (lm_int8, id_int8)]
    )
    out = tmp_path / "bench.json"
    assert bench.main(["--pipeline", "--frames", "2", "--gallery-size", "2", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["cpu"] == bench.cpu_model() and report["cpu"]
    assert [(r["variant"], Path(r["landmarks"]).name, Path(r["identity"]).name) for r in report["rows"]] == [
        ("onnx fp32", SHIPPED_LANDMARKS.name, "poseface_mfn.onnx"),
        ("onnx int8", lm_int8.name, "poseface_mfn_int8.onnx"),
    ]
    for row in report["rows"]:
        for role in ("landmarks", "identity"):
            assert (row["models"][role]["format"], row["models"][role]["precision"]) == _meta_label(row[role])
