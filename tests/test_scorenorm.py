"""Cohort score normalisation (edge.core.scorenorm): the arithmetic, the matching it changes, the
stored cohort, and the shipped identity model's cohort on real photos."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from edge.core.matching import ThresholdsError, YawThresholds, match
from edge.core.scorenorm import ScoreNorm, ScoreNormError, cohort_means
from edge.storage.gallery.records import gallery_arrays_from


def unit(v):
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def test_normalised_score_is_the_mean_of_both_sides_z_scores():
    rng = np.random.default_rng(0)
    cohort = unit(rng.normal(size=(30, 8)))
    norm = ScoreNorm(cohort, top_k=5)
    a, b = unit(rng.normal(size=(3, 8))), unit(rng.normal(size=(4, 8)))
    got = norm.pair_scores(a, b)
    for i in range(3):
        for j in range(4):
            ta = np.sort(cohort @ a[i])[-5:]
            tb = np.sort(cohort @ b[j])[-5:]
            s = a[i] @ b[j]
            want = 0.5 * ((s - ta.mean()) / ta.std() + (s - tb.mean()) / tb.std())
            assert got[i, j] == pytest.approx(want, rel=1e-4)


def test_a_probe_close_to_everybody_loses_its_lead():
    """A "hub" probe (near the centre of all faces) scores a high cosine against a stranger's
    template; against the cohort it scores as high, so its normalised score is low."""
    rng = np.random.default_rng(1)
    centre = unit(rng.normal(size=16))
    people = unit(centre + 0.9 * rng.normal(size=(60, 16)) / 4)
    norm = ScoreNorm(people[:50], top_k=10)
    hub = unit(centre)
    template = people[55]
    genuine_probe = unit(people[56] + 0.05 * rng.normal(size=16))
    hub_cos, genuine_cos = float(hub @ template), float(genuine_probe @ people[56])
    hub_z = norm.pair_scores(hub[None], template[None])[0, 0]
    genuine_z = norm.pair_scores(genuine_probe[None], people[56][None])[0, 0]
    assert genuine_z - hub_z > 3 * (genuine_cos - hub_cos)  # normalisation widens the gap in spread units
    assert hub_z < 0 < genuine_z


def test_match_with_normalised_thresholds_keeps_the_cosine_and_reports_the_normalised_score():
    rng = np.random.default_rng(2)
    cohort = unit(rng.normal(size=(40, 8)))
    norm = ScoreNorm(cohort, top_k=8)
    ann, bob = unit(rng.normal(size=8)), unit(rng.normal(size=8))
    gallery = gallery_arrays_from([("ann", ann, 0.0), ("bob", bob, 10.0)])
    probe = unit(ann + 0.1 * rng.normal(size=8))
    thresholds = YawThresholds.uniform(0.0)
    z_thresholds = YawThresholds((15.0,), (2.0, 2.0), score="as-norm")
    got = match(probe, 5.0, gallery, z_thresholds, norm)
    assert got.candidate == "ann" and got.name == "ann"
    assert got.score == pytest.approx(float(probe @ ann), abs=1e-5)
    assert got.norm_score == pytest.approx(norm.pair_scores(probe[None], ann[None])[0, 0], rel=1e-4)
    assert got.norm_score > 2.0
    strict = YawThresholds((15.0,), (got.norm_score + 0.01,) * 2, score="as-norm")
    assert match(probe, 5.0, gallery, strict, norm).name is None
    with pytest.raises(ValueError, match="no score normalisation"):
        match(probe, 5.0, gallery, z_thresholds)
    with pytest.raises(ValueError, match="a score normalisation was given"):
        match(probe, 5.0, gallery, thresholds, norm)
    assert match(probe, 5.0, gallery, thresholds).norm_score is None


def test_template_statistics_follow_the_gallery_array():
    rng = np.random.default_rng(3)
    norm = ScoreNorm(unit(rng.normal(size=(20, 4))), top_k=4)
    a, b = unit(rng.normal(size=(3, 4))), unit(rng.normal(size=(3, 4)))
    first = norm.template_stats(a)
    assert norm.template_stats(a) is first  # kept for the same array
    assert not np.allclose(norm.template_stats(b)[0], first[0])  # recomputed for a new one


def test_normalised_thresholds_round_trip_and_cosines_stay_bounded():
    z = YawThresholds((15.0, 30.0), (3.1, 2.8, 2.5), (1e-2, 1e-3), ((2.0, 3.1),) * 3, score="as-norm")
    back = YawThresholds.from_dict(json.loads(json.dumps(z.to_dict())))
    assert back == z and back.score == "as-norm"
    assert "score" not in YawThresholds.uniform(0.5).to_dict()  # cosine records are as before
    with pytest.raises(ThresholdsError, match="cosines in"):
        YawThresholds((15.0,), (3.1, 2.8))
    with pytest.raises(ThresholdsError, match="field 'score'"):
        YawThresholds.from_dict({**z.to_dict(), "score": "znorm"}, source="m.json")
    assert z.for_stranger_rate(40, 0.01).score == "as-norm"


def test_cohort_means_are_one_unit_row_per_person_and_view():
    emb = np.array([[1, 0], [1, 0.2], [0, 1], [0.1, 1], [1, 1]], dtype=np.float32)
    got = cohort_means([1, 1, 1, 1, 2], ["frontal", "frontal", "profile", "profile", "frontal"], emb)
    assert got.shape == (3, 2)
    assert np.allclose(np.linalg.norm(got, axis=1), 1)
    assert got[0] == pytest.approx(unit(unit([1, 0]) + unit([1, 0.2])), abs=1e-6)  # mean of unit rows


def _stored(tmp_path, cohort, top_k=3, **changes):
    np.save(tmp_path / "m.cohort.npy", cohort)
    data = (tmp_path / "m.cohort.npy").read_bytes()
    record = {
        "method": "as-norm",
        "top_k": top_k,
        "cohort_file": "m.cohort.npy",
        "cohort_sha256": hashlib.sha256(data).hexdigest(),
        "cohort_source": "test",
    }
    record.update(changes)
    return record


def test_stored_cohort_is_checked_with_one_line_errors(tmp_path):
    model = tmp_path / "m.onnx"
    cohort = unit(np.random.default_rng(4).normal(size=(10, 4))).astype(np.float16)
    norm = ScoreNorm.from_meta(_stored(tmp_path, cohort), model)
    assert norm.top_k == 3 and norm.dim == 4
    cases = [
        (_stored(tmp_path, cohort, cohort_sha256="0" * 64), "sha256 differs"),
        (_stored(tmp_path, cohort, cohort_file="gone.npy"), "gone.npy: cohort file not found"),
        (_stored(tmp_path, cohort, cohort_file="../m.cohort.npy"), "a file name beside the model"),
        (_stored(tmp_path, cohort, top_k=11), r"top_k: expected an integer in \[2, 10\]"),
        (_stored(tmp_path, cohort, method="znorm"), "method"),
        ({**_stored(tmp_path, cohort), "colour": 1}, "unknown field 'colour'"),
    ]
    for record, message in cases:
        with pytest.raises(ScoreNormError, match=message) as err:
            ScoreNorm.from_meta(record, model, source="m.json")
        assert "\n" not in str(err.value)
    (tmp_path / "bad.npy").write_bytes(b"not an array")
    record = _stored(tmp_path, cohort, cohort_file="bad.npy")
    record["cohort_sha256"] = hashlib.sha256(b"not an array").hexdigest()
    with pytest.raises(ScoreNormError, match="bad.npy: expected a .npy array"):
        ScoreNorm.from_meta(record, model)


def test_shipped_identity_model_carries_its_cohort_and_it_separates_real_faces(real_data):
    """The shipped model's thresholds are normalised, its cohort loads, and on real fold-9
    photos the same person's normalised score clears the threshold while another's does not."""
    from edge.core.faces import alignment_for, embed_batch, prepare_largest_face
    from edge.detect.registry import build_detector
    from edge.imageio import read_image_bgr
    from edge.landmarks.crop import BLAZEFACE_SHORT_CROP
    from edge.landmarks.landmarker import Landmarker
    from edge.runtime.runner import load_model
    from edge.shipped import SHIPPED_IDENTITY, SHIPPED_LANDMARKS

    extra = json.loads(SHIPPED_IDENTITY.with_suffix(".json").read_text())["extra"]
    thresholds = YawThresholds.from_dict(extra["matching_thresholds"], source=str(SHIPPED_IDENTITY))
    assert thresholds.score == "as-norm"
    norm = ScoreNorm.from_meta(extra["score_norm"], SHIPPED_IDENTITY)
    assert norm.cohort.shape[0] >= 100  # one row per person and view of the cohort folds
    assert "fold(s) [1, 2, 3, 4, 5, 6, 7]" in extra["score_norm"]["cohort_source"]  # never the calibration fold

    embedder = load_model(SHIPPED_IDENTITY)
    landmarker = Landmarker(load_model(SHIPPED_LANDMARKS))
    detector = build_detector({"type": "blazeface", "range": "short"})
    root = real_data / "cfp" / "Data" / "Images"
    paths = [
        root / "401" / "frontal" / "01.jpg",
        root / "401" / "frontal" / "02.jpg",
        root / "402" / "frontal" / "01.jpg",
    ]
    faces = [
        prepare_largest_face(read_image_bgr(p), detector, BLAZEFACE_SHORT_CROP, landmarker, alignment_for(embedder))
        for p in paths
    ]
    emb = embed_batch(embedder, [f.aligned for f in faces])
    z = norm.pair_scores(emb[:1], emb[1:])[0]
    threshold = thresholds.threshold_for(faces[0].yaw)
    assert z[0] >= threshold > z[1]


def test_calibration_refuses_a_cohort_of_the_calibrated_people(real_data, capsys):
    from edge.shipped import SHIPPED_IDENTITY
    from edge.tools.calibrate import main

    code = main(["--model", str(SHIPPED_IDENTITY), "--folds", "9", "--cohort-folds", "7-9", "--dry-run"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--cohort-folds: fold(s) [9] are also calibrated on" in err and "\n" not in err


def test_pipeline_refuses_thresholds_without_their_normalisation():
    from edge.core.pipeline import FacePipeline

    z = YawThresholds((15.0,), (2.0, 2.0), score="as-norm")
    with pytest.raises(ValueError, match="compare as-norm scores"):
        FacePipeline(None, None, None, object(), lambda: None, z)
    with pytest.raises(ValueError, match="compare cosine scores"):
        FacePipeline(None, None, None, object(), lambda: None, YawThresholds.uniform(0.5), score_norm=object())


def test_calibration_writes_the_cohort_beside_the_model_and_drops_it_for_cosines(tmp_path):
    from edge.tools.calibrate import write_thresholds

    model = tmp_path / "m.onnx"
    model.write_bytes(b"model")
    (tmp_path / "m.json").write_text(json.dumps({"name": "m", "extra": {"keep": 1}}))
    cohort = unit(np.random.default_rng(5).normal(size=(12, 4)))
    z = YawThresholds((15.0,), (2.5, 2.0), score="as-norm")
    details = {"far": 1e-3, "score_norm": {"method": "as-norm", "top_k": 4, "cohort": "CFP fold(s) [1]"}}
    write_thresholds(model, z, details, cohort, 4)
    extra = json.loads((tmp_path / "m.json").read_text())["extra"]
    assert extra["keep"] == 1 and extra["score_norm"]["cohort_file"] == "m.cohort.npy"
    norm = ScoreNorm.from_meta(extra["score_norm"], model)
    assert np.allclose(norm.cohort, cohort, atol=2e-3)  # stored as float16
    assert YawThresholds.from_dict(extra["matching_thresholds"]) == z
    write_thresholds(model, YawThresholds.uniform(0.5, (15.0,)), {"far": 1e-3})
    extra = json.loads((tmp_path / "m.json").read_text())["extra"]
    assert "score_norm" not in extra and YawThresholds.from_dict(extra["matching_thresholds"]).score == "cosine"
    assert not list(tmp_path.glob("*.tmp"))


def test_runtime_refuses_a_model_whose_cohort_is_missing(tmp_path):
    from types import SimpleNamespace

    from edge.app.config.errors import ConfigError
    from edge.app.run import matching_score_norm
    from edge.shipped import SHIPPED_IDENTITY

    extra = json.loads(SHIPPED_IDENTITY.with_suffix(".json").read_text())["extra"]
    thresholds = YawThresholds.from_dict(extra["matching_thresholds"])
    embedder = SimpleNamespace(meta=SimpleNamespace(extra=extra))
    here = SimpleNamespace(embedding=SimpleNamespace(model=SHIPPED_IDENTITY))
    assert matching_score_norm(here, embedder, thresholds).top_k == extra["score_norm"]["top_k"]
    moved = SimpleNamespace(embedding=SimpleNamespace(model=tmp_path / SHIPPED_IDENTITY.name))  # cohort left behind
    with pytest.raises(ConfigError, match="cohort file not found") as err:
        matching_score_norm(moved, embedder, thresholds)
    assert "\n" not in str(err.value) and "extra.score_norm" in str(err.value)
    bare = SimpleNamespace(meta=SimpleNamespace(extra={k: v for k, v in extra.items() if k != "score_norm"}))
    with pytest.raises(ConfigError, match="rerun python -m edge.calibrate"):
        matching_score_norm(here, bare, thresholds)
    assert matching_score_norm(here, embedder, YawThresholds.uniform(0.5)) is None


def test_dense_pairs_score_normalised_as_the_matcher_does():
    from edge.tools.calibrate import dense_probe_pairs

    rng = np.random.default_rng(7)
    emb = unit(rng.normal(size=(6, 4)))
    ids = np.array([1, 1, 2, 2, 3, 3])
    views = np.array(["frontal", "profile"] * 3)
    norm = ScoreNorm(unit(rng.normal(size=(10, 4))), top_k=3)
    cos, same, yaw = dense_probe_pairs(ids, views, emb, np.arange(6.0))
    z, same_z, yaw_z = dense_probe_pairs(ids, views, emb, np.arange(6.0), norm)
    assert np.array_equal(same, same_z) and np.array_equal(yaw, yaw_z) and len(z) == len(cos) == 3 * 5
    want = norm.pair_scores(emb[0::2], emb)  # frontal gallery x every photo, self pairs dropped
    assert np.allclose(z, want[np.arange(3)[:, None] * 2 != np.arange(6)[None, :]])
