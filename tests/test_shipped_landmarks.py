"""The shipped landmark model: loads on the device runtime, scores what its card says, runs the demo."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from edge.landmarks.landmarker import Landmarker
from edge.runtime.runner import load_model
from edge.shipped import SHIPPED_LANDMARKS

MODEL = SHIPPED_LANDMARKS


def test_shipped_model_loads_with_its_metadata():
    runner = load_model(MODEL)  # checks the sha256 recorded beside it
    meta = runner.meta
    assert meta.task == "landmarks" and meta.landmark_scheme == "ibug68"
    assert MODEL.stat().st_size < 20 * 1024 * 1024
    assert {"val_300w_nme", "cfp_profile_share_abs_yaw_ge_45"} <= set(meta.accuracy)
    assert (MODEL.parent / "MODEL_CARD.md").exists()
    Landmarker(runner)  # has what decoding needs


def test_shipped_model_scores_what_its_metadata_says(real_data, tmp_path):
    out = tmp_path / "eval.json"
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "training.landmarks",
            "eval",
            "--model",
            str(MODEL),
            "--split",
            "val",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    got = json.loads(out.read_text())
    recorded = load_model(MODEL).meta.accuracy
    assert got["count"] == 231
    assert got["nme"] == pytest.approx(recorded["val_300w_nme"], abs=1e-4)
    assert got["nme"] < 0.06  # the light model must stay clearly useful for alignment


def test_demo_writes_an_annotated_picture(real_data, tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "edge.tools.demo", "--out", str(tmp_path)], capture_output=True, text=True, timeout=600
    )
    assert res.returncode == 0, res.stderr[-2000:]
    report = json.loads((tmp_path / "landmarks_demo.json").read_text())
    assert (tmp_path / "landmarks_demo.png").stat().st_size > 10_000
    assert sum(r["face"] for r in report["photos"]) >= len(report["photos"]) - 1
    assert report["mean_nme_on_photos_with_pts"] < 0.1


def test_eval_cli_refuses_a_folder_without_pts(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"")
    res = subprocess.run(
        [sys.executable, "-m", "training.landmarks", "eval", "--model", str(MODEL), "--images", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2 and "no images with an iBUG .pts" in res.stderr
