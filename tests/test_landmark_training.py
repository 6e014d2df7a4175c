"""Landmark training side: crops, augmentation geometry, export (ONNX = torch), a real smoke run."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from edge.landmarks.crop import DetectorCropPolicy, apply_affine, crop_face, crop_matrix, landmark_crop_box
from edge.landmarks.landmarker import Landmarker
from edge.landmarks.pipnet_decode import neighbour_table
from edge.runtime.runner import load_model
from edge.shipped import PREVIOUS_LANDMARKS
from training.config import to_dict
from training.landmarks.augment import AugmentConfig, crop_for_training
from training.landmarks.config import LandmarkTrainConfig
from training.landmarks.meta import landmark_meta
from training.landmarks.model import PipNet
from training.nn.runner import TorchRunner

from .conftest import real_subset

TINY = LandmarkTrainConfig(backbone="mobilenetv2", backbone_options={"width": 0.25, "last_channels": 0}, input_size=64)


def test_crop_of_the_whole_image_is_a_resize():
    img = np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)
    crop, _ = crop_face(img, np.array([-0.5, -0.5, 39.5, 39.5]), 20)
    np.testing.assert_allclose(crop.astype(int), cv2.resize(img, (20, 20), interpolation=cv2.INTER_LINEAR), atol=1)


def test_landmark_crop_box_is_square_and_centred():
    pts = np.array([[10.0, 20.0], [50.0, 40.0], [30.0, 90.0]])
    box = landmark_crop_box(pts, scale=1.2)
    assert box[2] - box[0] == pytest.approx(84.0) and box[3] - box[1] == pytest.approx(84.0)
    np.testing.assert_allclose((box[:2] + box[2:]) / 2, [30.0, 55.0])
    m = crop_matrix(box, 84)
    np.testing.assert_allclose(apply_affine(np.array([[30.0, 55.0]]), m), [[41.5, 41.5]])


def test_detector_policy_shifts_and_scales():
    box = DetectorCropPolicy(shift_x=0.0, shift_y=0.1, scale=1.5).crop_box(np.array([0.0, 0.0, 100.0, 80.0]))
    np.testing.assert_allclose(box, [-25.0, -25.0, 125.0, 125.0])  # centre (50, 40 + 10), side 150


def test_augmented_landmarks_follow_the_pixels():
    # Each landmark is a bright dot; after any augmentation the dots must sit under the
    # transformed landmarks (geometry only: photometric changes switched off).
    rng = np.random.default_rng(3)
    pts = np.stack([rng.uniform(60, 140, 68), rng.uniform(60, 140, 68)], axis=1)
    cfg = AugmentConfig(occlude=0, blur=0, gray=0, colour=0, flip=0.5)
    for seed in range(6):
        k = seed * 11 % 68
        img = np.zeros((200, 200, 3), np.uint8)
        cv2.circle(img, tuple(int(round(v)) for v in pts[k]), 3, (255, 255, 255), -1)
        crop, out = crop_for_training(img, pts, 96, np.random.default_rng(seed), cfg)
        ys, xs = np.nonzero(crop[..., 0] > 128)
        centre = np.array([xs.mean(), ys.mean()])
        # landmark k moved to index MIRROR_68^-1(k) if flipped; find the one nearest the dot
        d = np.linalg.norm(out - centre, axis=1)
        assert d.min() < 1.5
        assert np.linalg.norm(out[k] - centre) < 1.5 or np.argmin(d) != k  # flipped: index moved


def _tiny_checkpoint(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model = PipNet(TINY.backbone, 68, TINY.num_nb, **TINY.backbone_options)
    for p in model.parameters():  # non-trivial heads, so argmax and offsets differ per cell
        p.data.normal_(0, 0.2)
    model.eval()
    mf = np.random.default_rng(0).uniform(5, 60, (68, 2))
    meta = landmark_meta(TINY, neighbour_table(mf, TINY.num_nb), mf, name="tiny")
    path = tmp_path / "tiny.pt"
    torch.save({"model": model.state_dict(), "config": to_dict(TINY), "meta": meta.to_dict()}, path)
    return path


@pytest.mark.parametrize("decoder", ["numpy", "graph"])
def test_export_matches_torch_and_decodes_identically(tmp_path, decoder):
    from training.landmarks.export import export_onnx
    from training.landmarks.train import load_checkpoint

    ckpt = _tiny_checkpoint(tmp_path)
    out = export_onnx(ckpt, tmp_path / f"tiny_{decoder}.onnx", decoder=decoder)  # raises if > 1e-4 off
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["extra"]["decoder"] == decoder and len(meta["sha256"]) == 64
    runner = load_model(out)
    model, tmeta, _ = load_checkpoint(ckpt)
    crops = [np.random.default_rng(i).integers(0, 255, (64, 64, 3), dtype=np.uint8) for i in range(3)]
    via_onnx = Landmarker(runner).predict_crops(crops)
    via_torch = Landmarker(TorchRunner(model, tmeta)).predict_crops(crops)
    # a near-tie between two score cells may resolve either way; every other point agrees
    agree = np.linalg.norm(via_onnx - via_torch, axis=-1) < 1e-3
    assert agree.mean() > 0.97


def test_training_runs_and_resumes_on_real_faces(real_data, tmp_path):
    from edge.datasets.w300 import list_300w
    from training.landmarks import train as tr

    if not (real_data / "300w").is_dir():
        pytest.skip("300w absent")
    cfg = replace(TINY, epochs=2, milestones=(1,), batch_size=8, workers=0, threads=1)
    faces = list_300w(real_data / "300w")
    assert len(faces) == 1207
    samples, val = tr.labelled_300w(cfg, real_data / "300w")
    samples, val = samples[:32], val[:16]
    mf = np.mean([apply_affine(s.points, crop_matrix(landmark_crop_box(s.points), 64)) for s in samples], axis=0)
    meta = landmark_meta(cfg, neighbour_table(mf, cfg.num_nb), mf)
    stage = tmp_path / "stage"
    best = tr.fit(replace(cfg, epochs=1), meta, samples, val, stage, 1, (1,))
    rows = [json.loads(x) for x in (stage / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1] and np.isfinite(best["nme"])
    tr.fit(cfg, meta, samples, val, stage, 2, (1,))  # resumes at epoch 2, does not redo epoch 1
    rows = [json.loads(x) for x in (stage / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert rows[1]["lr"] == pytest.approx(cfg.lr * cfg.gamma)
    assert (stage / "best.pt").exists() and (stage / "curves.png").exists()


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "training/landmarks/configs").glob("*.toml")))
def test_shipped_recipes_load(path):
    from training.config import load_toml

    cfg = load_toml(LandmarkTrainConfig, path)
    if not cfg.stc.rounds:  # a supervised-only recipe
        return
    assert len(cfg.stc.coarse_sizes) == cfg.stc.rounds
    assert all(c == 0 or cfg.map_size % c == 0 for c in cfg.stc.coarse_sizes)


def test_config_errors_name_the_key(tmp_path):
    from training.config import ConfigError, load_toml

    bad = tmp_path / "bad.toml"
    bad.write_text('backbone = "mobilenetv2"\nepoch = 3\n')
    with pytest.raises(ConfigError, match="unknown key 'epoch'"):
        load_toml(LandmarkTrainConfig, bad)
    bad.write_text("input_size = 100\n")
    with pytest.raises(ConfigError, match="multiple of 32"):
        load_toml(LandmarkTrainConfig, bad)
    bad.write_text('lr = "fast"\n')
    with pytest.raises(ConfigError, match="lr: expected float"):
        load_toml(LandmarkTrainConfig, bad)


# ------------------------------------------------------------------ CFP mode of the eval CLI


def _tiny_cfp(real: Path, out: Path, people=(401, 402), fold: int = 9) -> Path:
    """A CFP-layout folder (links to real photos and fiducials) holding two people of ``fold``."""
    for person in people:
        for view in ("frontal", "profile"):
            for kind, ext in (("Images", ".jpg"), ("Fiducials", ".txt")):
                src = real / "Data" / kind / f"{person:03d}" / view / f"01{ext}"
                dst = out / "Data" / kind / f"{person:03d}" / view / f"01{ext}"
                dst.parent.mkdir(parents=True, exist_ok=True)
                dst.symlink_to(src)
    split = out / "Protocol" / "Split" / "FP" / f"{fold:02d}"
    split.mkdir(parents=True)
    (split / "same.txt").write_text("1,2\n")
    (split / "diff.txt").write_text("1,2\n")
    return out


def test_cfp_errors_count_only_mapped_points():
    from edge.datasets.cfp_fiducials import fiducials_to_ibug68
    from training.landmarks.cfp_eval import fiducial_diagonal, photo_errors

    rng = np.random.default_rng(0)
    fid = np.c_[np.linspace(100, 200, 30), np.linspace(50, 260, 30) + rng.normal(0, 3, 30)]
    fid[18:22, 0] += 60  # nose to the right of the jaw: a face looking right
    target, mask = fiducials_to_ibug68(fid, "profile")
    pred = np.where(mask[:, None], target, 1e6)  # unmapped points far off: must not count
    err = photo_errors(pred, fid, "profile")
    assert np.isnan(err[~mask]).all() and np.allclose(err[mask], 0)
    pred = np.where(mask[:, None], target + [3.0, 4.0], 1e6)  # every mapped point 5 px off
    assert np.allclose(photo_errors(pred, fid, "profile")[mask], 5.0 / fiducial_diagonal(fid))


def test_eval_cli_scores_cfp_photos_and_names_absent_folds(real_data, tmp_path):
    import subprocess
    import sys

    root = _tiny_cfp(real_subset(real_data, "cfp"), tmp_path / "cfp")
    repo = Path(__file__).resolve().parents[1]
    model = PREVIOUS_LANDMARKS
    cmd = [sys.executable, "-m", "training.landmarks", "eval", "--model", str(model), "--cfp-root", str(root)]
    out = subprocess.run(cmd + ["--folds", "8"], capture_output=True, text=True, cwd=repo)
    assert out.returncode == 2 and "fold(s) 8 not found" in out.stderr
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=repo)
    assert out.returncode == 2 and "--folds" in out.stderr
    report_path = tmp_path / "cfp.json"
    subprocess.run(cmd + ["--folds", "9", "--json", str(report_path)], check=True, capture_output=True, cwd=repo)
    report = json.loads(report_path.read_text())
    for view in ("frontal", "profile"):
        r = report[view]
        assert r["photos"] == 2 and r["scored"] + r["no_face"] == 2 and r["scored"] >= 1
        assert 0 < r["nme"] < 0.3, r  # a real error, on the scale of the fiducial box
    assert set(report["frontal"]["nme_by_group"]) == {"jaw", "brows", "nose", "eyes", "mouth"}
    assert "jaw" not in report["profile"]["nme_by_group"] or report["profile"]["nme_by_group"]["jaw"] > 0


def test_posecheck_reads_yaw_from_the_fiducials_without_a_model(real_data, tmp_path):
    """`posecheck --fiducials`: the head-pose fit on CFP's hand-marked points, per view; a model and
    --fiducials together are refused."""
    import subprocess
    import sys

    root = _tiny_cfp(real_subset(real_data, "cfp"), tmp_path / "cfp")
    repo = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "training.landmarks", "posecheck", "--cfp-root", str(root), "--folds", "9"]
    out = subprocess.run(cmd + ["--fiducials", "--model", "x.onnx"], capture_output=True, text=True, cwd=repo)
    assert out.returncode == 2 and "not allowed with" in out.stderr
    report_path = tmp_path / "pose.json"
    subprocess.run(cmd + ["--fiducials", "--json", str(report_path)], check=True, capture_output=True, cwd=repo)
    report = json.loads(report_path.read_text())
    assert report["points"].startswith("CFP fiducials")
    assert report["frontal"]["photos"] == 2 and report["frontal"]["no_face"] == 0
    assert 0 <= report["frontal"]["share_abs_yaw_le_20"] <= 1 and 0 <= report["profile"]["share_abs_yaw_ge_45"] <= 1
    frontal, profile = (min(report[v]["abs_yaw_percentiles_10_50_90"]) for v in ("frontal", "profile"))
    assert profile > frontal  # the least turned profile reads more turned than the least turned frontal


def test_cfp_fiducials_train_as_partial_labels(real_data, tmp_path):
    """CFP photos join training with their mapped fiducials only: NaN elsewhere, masked in the
    loss; cropped from the detector's box; fold 9 refused."""
    from training.landmarks import train as tr
    from training.landmarks.data import LandmarkDataset

    with pytest.raises(ValueError, match="fold 9"):
        replace(TINY, cfp_folds=(8, 9))
    _tiny_cfp(real_subset(real_data, "cfp"), tmp_path / "data" / "cfp", people=(1, 2), fold=1)
    cfg = replace(TINY, cfp_folds=(1,), batch_size=2, workers=0, threads=1)
    samples = tr.cfp_fiducial_samples(cfg, tmp_path / "run", tmp_path / "data")
    assert 2 <= len(samples) <= 4 and (tmp_path / "run" / "cfp_boxes.json").exists()
    labelled = {s.name.split("/")[1]: int(np.isfinite(s.points).all(axis=1).sum()) for s in samples}
    assert labelled.get("frontal", 30) == 30 and labelled.get("profile", 21) == 21
    mf = np.mean([apply_affine(s.points, crop_matrix(landmark_crop_box(s.points), 64)) for s in samples], axis=0)
    mf = np.where(np.isfinite(mf), mf, 32.0)
    meta = landmark_meta(cfg, neighbour_table(mf, cfg.num_nb), mf)
    item = LandmarkDataset(samples, meta, np.asarray(meta.extra["neighbours"]), cfg.augment)[0]
    assert int(item["mask"].sum()) == labelled[samples[0].name.split("/")[1]]
    assert torch.isfinite(item["off"]).all() and torch.isfinite(item["nb_off"]).all()
    assert (item["nb_mask"].any(dim=1) <= item["mask"]).all()


def test_stc_pool_keeps_the_validation_fold_out_and_needs_its_teacher(real_data, tmp_path):
    """With CFP fiducials in the recipe, STC pseudo-labels only the training folds' CFP photos
    (the profile validation fold stays unseen); a missing stc.teacher is one clear error."""
    from training.landmarks.stc import STC_CFP_FOLDS, train_stc, unlabeled_pool

    root = tmp_path / "data"
    _tiny_cfp(real_subset(real_data, "cfp"), root / "cfp", people=(1, 351), fold=1)
    (root / "lfw_gray" / "lfw").mkdir(parents=True)
    assert 8 in STC_CFP_FOLDS
    default = unlabeled_pool(root)
    assert {p.parts[-3] for p in default["cfp_frontal"] + default["cfp_profile"]} == {"001", "351"}
    training_folds = unlabeled_pool(root, (1, 2, 3, 4, 5, 6, 7))
    assert {p.parts[-3] for p in training_folds["cfp_frontal"] + training_folds["cfp_profile"]} == {"001"}
    cfg = replace(TINY, stc=replace(TINY.stc, rounds=1, coarse_sizes=(0,), teacher=str(tmp_path / "none.pt")))
    with pytest.raises(FileNotFoundError, match="none.pt"):
        train_stc(cfg, tmp_path / "run", root)


@pytest.mark.parametrize("yaw", [0.0, 30.0, -60.0, 80.0])
def test_pose_probe_fits_read_back_a_known_yaw(yaw):
    """The probe's two camera models recover the yaw of the mean face turned and projected their way."""
    import cv2

    from edge.geometry.headpose import POSE_POINTS, mean_face_3d
    from training.landmarks.pose_probe import orthographic_yaw, pinhole_yaw

    rot = cv2.Rodrigues(np.array([0.0, np.radians(yaw), 0.0]))[0]
    turned = mean_face_3d() @ rot.T
    ortho = 1.5 * turned[:, :2] + 200.0  # scaled orthography
    idx = list(POSE_POINTS)
    assert orthographic_yaw(ortho, idx) == pytest.approx(abs(yaw), abs=0.5)
    size, focal, depth = (400, 400), 400.0, 600.0  # pinhole at focal 1 x the image side
    proj = focal * turned[:, :2] / (turned[:, 2:] + depth) + 199.5
    assert pinhole_yaw(proj, size, 1.0) == pytest.approx(abs(yaw), abs=0.5)


def test_pose_probe_cli_reports_each_camera(real_data, tmp_path):
    import subprocess
    import sys

    root = _tiny_cfp(real_subset(real_data, "cfp"), tmp_path / "cfp")
    repo = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "training.landmarks.pose_probe", "--cfp-root", str(root), "--folds", "9"]
    out = subprocess.run(cmd + ["--fiducials", "--focal", "0"], capture_output=True, text=True, cwd=repo)
    assert out.returncode == 2 and "--focal" in out.stderr
    report_path = tmp_path / "probe.json"
    subprocess.run(
        cmd + ["--fiducials", "--focal", "1", "--json", str(report_path)], check=True, capture_output=True, cwd=repo
    )
    cameras = json.loads(report_path.read_text())["cameras"]
    assert list(cameras) == ["pinhole, focal 1 x image side", "scaled orthography"]
    for r in cameras.values():
        assert r["frontal_photos"] == r["profile_photos"] == 2 and 0 <= r["auc_profile_reads_more_turned"] <= 1


# ------------------------------------------------------------------ face-pretrained trunk, CFP draws, one pass


def test_dlib_trunk_carries_dlibs_weights_and_its_map_size():
    from training.nn.backbones import DLIB_NORMALISATION, build_backbone, feature_size
    from training.nn.dlib_resnet import load_dlib_resnet

    assert feature_size("dlib_resnet", {"levels": 4}, 192) == 5  # unpadded convs: 192 -> 5x5
    assert feature_size("dlib_resnet", {"levels": 4}, 224) == 6
    assert feature_size("mobilenetv2", {"width": 0.25, "last_channels": 0}, 192) == 6
    opts = {"levels": 4, "pretrained": False}
    cfg = LandmarkTrainConfig(backbone="dlib_resnet", backbone_options=opts, input_size=192)
    assert cfg.map_size == 5 and cfg.stride == pytest.approx(38.4)
    meta = landmark_meta(cfg, np.zeros((68, 10), int), np.zeros((68, 2)))
    assert meta.extra["stride"] == pytest.approx(38.4)
    assert tuple(meta.normalisation.mean) == DLIB_NORMALISATION[0] and tuple(meta.normalisation.std) == (256.0,) * 3
    try:
        dlib_net, _ = load_dlib_resnet()
    except FileNotFoundError as err:
        pytest.skip(str(err))
    trunk = build_backbone("dlib_resnet", levels=4, pretrained=True).eval()
    x = torch.randn(1, 3, 192, 192)
    with torch.no_grad():
        torch.testing.assert_close(trunk(x), dlib_net.features(x, 4))  # the registry's init did not overwrite it
        assert trunk(x).shape == (1, 256, 5, 5)
    fresh = build_backbone("dlib_resnet", levels=4, pretrained=False)
    assert not torch.equal(fresh.net.stem_conv.weight, trunk.net.stem_conv.weight)


def test_each_epoch_draws_its_own_cfp_faces_with_the_profile_share():
    from training.landmarks.data import LandmarkSample
    from training.landmarks.train import epoch_indices

    pts = np.zeros((68, 2))
    samples = [LandmarkSample(Path(f"{i}.jpg"), pts, name=f"300w/{i}") for i in range(10)]
    samples += [LandmarkSample(Path("f.jpg"), pts, name=f"cfp:{i:03d}/frontal/01") for i in range(50)]
    samples += [LandmarkSample(Path("p.jpg"), pts, name=f"cfp:{i:03d}/profile/01") for i in range(20)]
    cfg = replace(TINY, cfp_per_epoch=20, cfp_profile_share=0.5)
    a, b = epoch_indices(cfg, samples, 0), epoch_indices(cfg, samples, 1)
    assert a[:10] == list(range(10)) and len(a) == 30 and len(set(a)) == 30
    assert sum("/profile/" in samples[i].name for i in a) == 10
    assert a != b  # drawn afresh
    assert epoch_indices(cfg, samples, 0) == a  # and reproducibly
    assert len(epoch_indices(replace(cfg, cfp_per_epoch=0), samples, 0)) == 80
    with pytest.raises(ValueError, match="cfp_profile_share"):
        replace(TINY, cfp_profile_share=1.5)


def test_init_from_starts_at_a_checkpoints_weights_and_names_a_mismatch(tmp_path, real_data):
    from training.landmarks import train as tr

    if not (real_data / "300w").is_dir():
        pytest.skip("300w absent")
    ckpt = _tiny_checkpoint(tmp_path)
    start = torch.load(ckpt, weights_only=False)["model"]
    cfg = replace(TINY, init_from=str(ckpt), lr=1e-12, backbone_lr_scale=0.0, batch_size=8, workers=0, threads=1)
    samples, val = tr.labelled_300w(cfg, real_data / "300w")
    meta = landmark_meta(cfg, neighbour_table(np.random.default_rng(0).uniform(5, 60, (68, 2)), 10), np.zeros((68, 2)))
    tr.fit(cfg, meta, samples[:8], val[:4], tmp_path / "stage", 1, (1,))
    after = torch.load(tmp_path / "stage" / "last.pt", weights_only=False)["model"]
    trunk = [k for k in start if k.startswith("backbone.") and start[k].dtype.is_floating_point and "running" not in k]
    assert all(torch.allclose(start[k], after[k]) for k in trunk)  # lr 0 on the trunk: still the checkpoint's
    other = replace(cfg, backbone_options={"width": 0.5, "last_channels": 0})
    with pytest.raises(ValueError, match="init_from .*not a checkpoint of this architecture"):
        tr.fit(other, meta, samples[:8], val[:4], tmp_path / "other", 1, (1,))


def test_eval_cli_runs_the_device_chain_from_detector_boxes(real_data, tmp_path):
    import subprocess
    import sys

    w300 = real_subset(real_data, "300w")
    folder = tmp_path / "faces"
    folder.mkdir()
    for pts in sorted((w300 / "train" / "helen").rglob("*.pts"))[:3] if (w300 / "train" / "helen").is_dir() else []:
        for src in (pts, *[p for p in pts.parent.glob(pts.stem + ".*") if p.suffix != ".pts"]):
            (folder / src.name).symlink_to(src)
    if not any(folder.glob("*.pts")):
        pytest.skip("no 300-W HELEN photos found")
    repo = Path(__file__).resolve().parents[1]
    model = PREVIOUS_LANDMARKS
    reports = {}
    for refine in (0, 1):
        out = tmp_path / f"r{refine}.json"
        cmd = [sys.executable, "-m", "training.landmarks", "eval", "--model", str(model), "--images", str(folder)]
        subprocess.run(
            cmd + ["--boxes", "detector", "--refine", str(refine), "--json", str(out)],
            check=True,
            capture_output=True,
            cwd=repo,
        )
        reports[refine] = json.loads(out.read_text())
    for refine, r in reports.items():
        assert r["boxes"] == "detector" and r["refine"] == refine and r["count"] == 3
        assert 0 < r["nme"] <= 1.0 and 0 <= r["no_face"] <= 3
    assert reports[0]["nme"] != reports[1]["nme"]  # the re-crop changes the points


def test_the_device_makes_the_re_crops_the_landmark_model_shipped_with(tmp_path):
    from edge.core.faces import DEVICE_REFINE, device_refine
    from edge.core.pipeline import FacePipeline
    from training.landmarks.export import export_onnx

    ckpt = _tiny_checkpoint(tmp_path)
    old = Landmarker(load_model(export_onnx(ckpt, tmp_path / "old.onnx")))
    assert old.refine == DEVICE_REFINE == device_refine(old)  # no field: the device's old default
    one_pass = Landmarker(load_model(export_onnx(ckpt, tmp_path / "one.onnx", refine=0)))
    assert one_pass.refine == 0 and json.loads((tmp_path / "one.json").read_text())["extra"]["refine"] == 0
    assert FacePipeline(None, None, one_pass).refine == 0
    assert FacePipeline(None, None, one_pass, refine=2).refine == 2  # an explicit choice wins
    with pytest.raises(ValueError, match="refine must be >= 0"):
        export_onnx(ckpt, tmp_path / "bad.onnx", refine=-1)
