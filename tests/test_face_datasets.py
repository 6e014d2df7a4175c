"""Streamed face datasets (training.identity.data): insightface RecordIO packs read without mxnet,
image folders, the check command, broken-record skipping, the yaw sidecar and the train CLI flags."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")
torch = pytest.importorskip("torch")

from training.identity.data.recordio import (  # noqa: E402
    MAGIC,
    RecordFile,
    RecordIOError,
    RecordWriter,
    pack,
    read_index,
    unpack,
    write_face_pack,
)
from training.identity.data.streamed import (  # noqa: E402
    BrokenRecordWarning,
    FaceAugment,
    FaceDataError,
    FolderFaces,
    RecordFaces,
    build_train_dataset,
    load_yaw,
    yaw_sidecar_path,
)

REPO = Path(__file__).resolve().parents[1]


def _faces(counts=(3, 1, 4), seed=0, size=112):
    """(label, BGR image) grouped by label: random pixels, so any byte that changes shows."""
    rng = np.random.default_rng(seed)
    out = []
    for label, n in enumerate(counts):
        for _ in range(n):
            out.append((label, rng.integers(0, 256, (size, size, 3), dtype=np.uint8)))
    return out


def _png(image) -> bytes:
    ok, buf = cv2.imencode(".png", image)
    assert ok
    return buf.tobytes()


def _pack(tmp_path, faces, header=True, name="train.rec") -> Path:
    return write_face_pack(tmp_path / name, [(label, _png(image)) for label, image in faces], header=header)


def _run_check(argv, capsys):
    from training.identity.data.__main__ import main

    rc = main(["check", *argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


# ---- the RecordIO format, byte for byte ----


def test_record_bytes_match_dmlc_layout(tmp_path):
    """magic 0xced7230a, lrec = flag << 29 | length, payload zero-padded to 4 bytes, little-endian;
    a payload holding the magic at an aligned position is split there (flags 1, 3) without it."""
    rec = tmp_path / "raw.rec"
    magic = struct.pack("<I", MAGIC)
    with RecordWriter(rec) as w:
        w.write(7, b"abcde")
        w.write(8, b"AAAA" + magic + b"BB")
    data = rec.read_bytes()
    assert data[:16] == bytes.fromhex("0a23d7ce") + bytes.fromhex("05000000") + b"abcde\0\0\0"
    second = data[16:]
    assert second[:12] == magic + struct.pack("<I", (1 << 29) | 4) + b"AAAA"
    assert second[12:24] == magic + struct.pack("<I", (3 << 29) | 2) + b"BB\0\0"
    assert len(second) == 24
    assert (tmp_path / "raw.idx").read_text() == "7\t0\n8\t16\n"
    keys, offsets = read_index(tmp_path / "raw.idx")
    assert keys.tolist() == [7, 8] and offsets.tolist() == [0, 16]
    f = RecordFile(rec)
    assert f.read(0, 7) == (b"abcde", 16)
    assert f.read(16, 8) == (b"AAAA" + magic + b"BB", 40)  # joined, the magic put back


def test_irheader_layout():
    """IRHeader = uint32 flag, float32 label, uint64 id, uint64 id2; flag > 0: flag float32 labels follow."""
    raw = struct.pack("<IfQQ", 0, 17.0, 5, 0) + b"IMG"
    head, rest = unpack(raw)
    assert (head.flag, head.label, head.id, head.id2, rest) == (0, 17.0, 5, 0, b"IMG")
    raw = struct.pack("<IfQQ", 2, 0.0, 0, 0) + struct.pack("<2f", 101.0, 140.0) + b"JPG"
    head, rest = unpack(raw)
    assert head.flag == 2 and head.labels.tolist() == [101.0, 140.0] and rest == b"JPG"
    assert pack([101, 140], b"JPG") == raw
    assert pack(17, b"IMG", id=5) == struct.pack("<IfQQ", 0, 17.0, 5, 0) + b"IMG"
    with pytest.raises(RecordIOError, match="r9: header announces 3 labels"):
        unpack(struct.pack("<IfQQ", 3, 0.0, 0, 0) + b"\0" * 8, "r9")


def test_index_errors_name_file_and_line(tmp_path):
    idx = tmp_path / "bad.idx"
    idx.write_text("0\t0\n1\tforty\n")
    with pytest.raises(RecordIOError, match=r"bad\.idx: line 2: expected 'key<TAB>offset'"):
        read_index(idx)
    with pytest.raises(RecordIOError, match="index file not found"):
        read_index(tmp_path / "none.idx")


# ---- the pack reader ----


def test_pack_round_trips_labels_and_images(tmp_path):
    faces = _faces((3, 1, 4))
    rec = _pack(tmp_path, faces)
    ds = RecordFaces(rec, progress=False)
    assert len(ds) == 8 and ds.num_classes == 3 and ds.header == (9, 12)
    assert ds.keys.tolist() == list(range(1, 9))
    for i, (label, image) in enumerate(faces):
        got, got_label, yaw, index = ds[i]
        assert got_label == label and index == i and np.isnan(yaw)
        assert got.dtype == np.uint8 and np.array_equal(got, image)
    assert ds.broken == 0


def test_pack_without_header_counts_classes_from_labels(tmp_path):
    faces = _faces((2, 2, 1, 1), seed=1)
    ds = RecordFaces(_pack(tmp_path, faces, header=False), progress=False)
    assert ds.header is None and len(ds) == 6 and ds.num_classes == 4
    assert [ds[i][1] for i in range(6)] == [label for label, _ in faces]
    assert np.array_equal(ds[5][0], faces[5][1])


def test_pack_images_of_another_size_are_resized(tmp_path):
    faces = _faces((2,), size=96)
    ds = RecordFaces(_pack(tmp_path, faces), size=112, progress=False)
    assert ds[0][0].shape == (112, 112, 3)


def test_pack_reader_opens_lazily_and_pickles_without_its_handle(tmp_path):
    import pickle

    ds = RecordFaces(_pack(tmp_path, _faces((2, 2))), progress=False)
    assert ds.file._fh is None  # nothing open after construction: each worker opens its own
    ds[0]
    clone = pickle.loads(pickle.dumps(ds))
    assert clone.file._fh is None
    assert np.array_equal(clone[3][0], ds[3][0])


# ---- the check command ----


def test_check_reports_a_pack(tmp_path, capsys):
    rec = _pack(tmp_path, _faces((3, 1, 4)))
    out = tmp_path / "report.json"
    rc, stdout, _ = _run_check(["--rec", str(rec), "--json", str(out)], capsys)
    assert rc == 0
    report = json.loads(out.read_text())
    assert json.loads(stdout) == report
    assert report["identities"] == 3 and report["images"] == 8 and report["broken"] == 0
    assert report["image_sizes"] == {"112x112": 8}
    assert report["identity_records"] == 3 and report["label_range_mismatches"] == 0
    assert report["unindexed_bytes"] == 0 and report["header"] == {"images": [1, 8], "identity_records": [9, 11]}


def test_check_counts_an_undecodable_image(tmp_path, capsys):
    faces = [(label, _png(image)) for label, image in _faces((2, 2))]
    faces[2] = (faces[2][0], b"not a png at all")
    rec = write_face_pack(tmp_path / "train.rec", faces)
    rc, stdout, _ = _run_check(["--rec", str(rec)], capsys)
    report = json.loads(stdout)
    assert rc == 0 and report["images"] == 4 and report["broken"] == 1
    assert report["broken_records"] == [{"record": 3, "reason": "the image (16 bytes) does not decode"}]


def _one_line_error(stderr: str, rec: Path, record: int, what: str) -> None:
    """Exactly one error line (tqdm's progress may precede it), naming the file and the record."""
    lines = [line for line in stderr.replace("\r", "\n").splitlines() if line.startswith("training.identity.data")]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("training.identity.data check: ")
    assert str(rec) in lines[0] and f"record {record}" in lines[0] and what in lines[0], lines[0]


def test_check_on_a_truncated_pack_exits_2_naming_file_and_record(tmp_path):
    rec = _pack(tmp_path, _faces((3, 1, 4)))
    _, offsets = read_index(tmp_path / "train.idx")
    data = rec.read_bytes()
    rec.write_bytes(data[: int(offsets[5]) + 100])  # the download stopped inside record 5
    proc = subprocess.run(
        [sys.executable, "-m", "training.identity.data", "check", "--rec", str(rec)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    _one_line_error(proc.stderr, rec, 5, "truncated")
    assert proc.stdout == ""


def test_check_on_a_bad_magic_number_exits_2_naming_file_and_record(tmp_path, capsys):
    rec = _pack(tmp_path, _faces((3, 1, 4)))
    _, offsets = read_index(tmp_path / "train.idx")
    data = bytearray(rec.read_bytes())
    data[int(offsets[4]) : int(offsets[4]) + 4] = b"\xde\xad\xbe\xef"
    rec.write_bytes(bytes(data))
    rc, stdout, stderr = _run_check(["--rec", str(rec)], capsys)
    assert rc == 2 and stdout == ""
    _one_line_error(stderr, rec, 4, "bad magic number 0xefbeadde")


def test_check_on_a_missing_index_exits_2(tmp_path, capsys):
    rec = _pack(tmp_path, _faces((2,)))
    (tmp_path / "train.idx").unlink()
    rc, _, stderr = _run_check(["--rec", str(rec)], capsys)
    assert rc == 2 and "train.idx: index file not found" in stderr.splitlines()[-1]


# ---- broken records while training ----


def _damaged_pack(tmp_path) -> tuple[Path, list]:
    """8 images in 3 classes; record 3's image does not decode, record 6's magic is wrong."""
    faces = _faces((3, 3, 2), seed=3)
    payloads = [(label, _png(image)) for label, image in faces]
    payloads[2] = (payloads[2][0], b"\x89PNG garbage")
    rec = write_face_pack(tmp_path / "train.rec", payloads)
    _, offsets = read_index(tmp_path / "train.idx")
    data = bytearray(rec.read_bytes())
    data[int(offsets[6]) : int(offsets[6]) + 4] = b"\0\0\0\0"
    rec.write_bytes(bytes(data))
    return rec, faces


def test_broken_record_is_skipped_counted_and_warned_once(tmp_path):
    rec, faces = _damaged_pack(tmp_path)
    ds = RecordFaces(rec, progress=False)
    with pytest.warns(BrokenRecordWarning, match=r"train\.rec: record 3: the image \(12 bytes\) does not decode"):
        image, label, _, index = ds[2]  # record 3 -> the next good one, record 4
    assert index == 3 and label == faces[3][0] and np.array_equal(image, faces[3][1])
    assert ds.broken == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # known broken: skipped without reading or warning again
        assert ds[2][3] == 3
    with pytest.warns(BrokenRecordWarning, match="record 6: bad magic number"):
        assert ds[5][3] == 6
    assert ds.broken == 2 and ds.broken_items() == [f"{rec}: record 3", f"{rec}: record 6"]


def test_broken_records_are_counted_across_dataloader_workers(tmp_path):
    # spawned workers: a forked worker can deadlock on locks (OpenMP, threads) that earlier tests in this
    # process left taken
    rec, faces = _damaged_pack(tmp_path)
    ds = RecordFaces(rec, progress=False)
    loader = torch.utils.data.DataLoader(
        ds, batch_size=4, num_workers=2, collate_fn=ds.collate, multiprocessing_context="spawn"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BrokenRecordWarning)
        batches = list(loader)
    index = torch.cat([b["index"] for b in batches]).tolist()
    labels = torch.cat([b["label"] for b in batches]).tolist()
    assert 2 not in index and 5 not in index and len(index) == 8  # each replaced by the next good record
    assert labels == [faces[i][0] for i in index]
    assert ds.broken == 2  # marked in the workers, seen here


def test_a_wholly_broken_source_stops_with_one_line(tmp_path):
    rec = write_face_pack(tmp_path / "train.rec", [(0, b"x"), (0, b"y"), (1, b"z")])
    ds = RecordFaces(rec, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BrokenRecordWarning)
        with pytest.raises(FaceDataError, match=r"train\.rec: items 0\.\.2 .* are all broken"):
            ds[0]


# ---- the folder reader ----


def _folder(tmp_path) -> tuple[Path, dict]:
    root = tmp_path / "faces"
    rng = np.random.default_rng(5)
    images = {}
    for name, files in {"bob": ["2.png", "1.bmp"], "alice": ["a.png"], "carol": ["x.pgm", "y.jpg", "z.PNG"]}.items():
        (root / name).mkdir(parents=True)
        for file in files:
            image = rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)
            if file.endswith(".pgm"):  # gray: read back with three equal channels
                cv2.imwrite(str(root / name / file), image[:, :, 0])
                image = np.repeat(image[:, :, :1], 3, axis=2)
            else:
                cv2.imwrite(str(root / name / file), image)
            images[f"{name}/{file}"] = image
    (root / "empty").mkdir()
    (root / "README.txt").write_text("not a face\n")
    (root / "bob" / "notes.txt").write_text("not a face\n")
    (root / "bob" / ".hidden.png").write_bytes(b"")
    return root, images


def test_folder_reader_labels_sorted_identities(tmp_path):
    root, images = _folder(tmp_path)
    ds = FolderFaces(root, progress=False)
    assert ds.classes == ["alice", "bob", "carol"] and ds.empty == ["empty"]
    names = [p.decode() for p in ds.paths]
    assert names == ["alice/a.png", "bob/1.bmp", "bob/2.png", "carol/x.pgm", "carol/y.jpg", "carol/z.PNG"]
    assert ds.labels.tolist() == [0, 1, 1, 2, 2, 2]
    for i, name in enumerate(names):
        image, label, yaw, index = ds[i]
        assert label == ds.labels[i] and index == i and image.shape == (112, 112, 3)
        if not name.endswith(".jpg"):  # lossless formats round-trip exactly
            assert np.array_equal(image, images[name]), name


def test_folder_reader_resizes_and_skips_undecodable(tmp_path):
    root, _ = _folder(tmp_path)
    cv2.imwrite(str(root / "alice" / "b.png"), np.zeros((120, 90, 3), np.uint8))
    (root / "alice" / "c.jpg").write_bytes(b"\xff\xd8 truncated")
    ds = FolderFaces(root, progress=False)
    assert ds[1][0].shape == (112, 112, 3)
    with pytest.warns(BrokenRecordWarning, match=r"alice/c\.jpg: not an image OpenCV can decode"):
        assert ds[2][3] == 3
    assert ds.broken == 1


def test_check_reports_a_folder(tmp_path, capsys):
    root, _ = _folder(tmp_path)
    (root / "carol" / "broken.jpg").write_bytes(b"nope")
    rc, stdout, _ = _run_check(["--folder", str(root)], capsys)
    report = json.loads(stdout)
    assert rc == 0
    assert report["identities"] == 3 and report["images"] == 7 and report["broken"] == 1
    assert report["broken_images"] == [{"image": "carol/broken.jpg", "reason": "not an image OpenCV can decode"}]
    assert report["image_sizes"] == {"112x112": 6}
    assert report["empty_identity_folders"] == 1 and report["ignored_entries"] == 2


def test_check_on_a_missing_folder_exits_2(tmp_path, capsys):
    rc, _, stderr = _run_check(["--folder", str(tmp_path / "nothing")], capsys)
    assert rc == 2 and str(tmp_path / "nothing") in stderr and len(stderr.strip().splitlines()) == 1


@pytest.fixture
def orl(real_data):
    root = real_data / "orl"
    if not root.is_dir():
        pytest.skip(f"{root} is absent")
    return root


@pytest.mark.real_data
def test_folder_reader_on_real_orl(orl, capsys):
    ds = FolderFaces(orl, progress=False)
    assert len(ds) == 400 and ds.num_classes == 40
    assert ds.classes[:3] == ["s1", "s10", "s11"]  # sorted folder names
    assert np.bincount(ds.labels).tolist() == [10] * 40
    image, label, _, _ = ds[len(ds) - 1]
    assert image.shape == (112, 112, 3) and label == ds.classes.index("s9")
    rc, stdout, _ = _run_check(["--folder", str(orl)], capsys)
    report = json.loads(stdout)
    assert rc == 0 and report["identities"] == 40 and report["images"] == 400 and report["broken"] == 0
    assert report["image_sizes"] == {"92x112": 400} and report["ignored_entries"] == 1  # orl/README


# ---- yaw ----


def test_yaw_sidecar_unknown_yaw_and_the_base_margin(tmp_path):
    from training.identity.config import IdentityAugmentConfig
    from training.identity.losses import ArcFace, PoseAdaptiveArcFace

    rec = _pack(tmp_path, _faces((2, 2)))
    sidecar = yaw_sidecar_path(rec)
    assert sidecar == tmp_path / "train.yaw.npz"
    np.savez(sidecar, key=np.array([1, 3, 99]), yaw=np.array([35.0, -70.0, 5.0], np.float32))
    ds = RecordFaces(rec, progress=False)  # found beside the pack
    assert ds.yaw_file == sidecar
    assert np.array_equal(np.isnan(ds.yaw), [False, True, False, True])
    assert ds.yaw[0] == 35.0 and ds.yaw[2] == -70.0
    batch = ds.collate([ds[i] for i in range(4)])
    assert batch["yaw"].tolist() == [35.0, 0.0, -70.0, 0.0]
    assert batch["yaw_known"].tolist() == [True, False, True, False]
    assert RecordFaces(rec, yaw=False, progress=False).yaw_file is None

    # unknown yaw -> PAA's target logit is exactly ArcFace's (the base margin), never NaN
    torch.manual_seed(0)
    paa, arc = PoseAdaptiveArcFace(8, 2), ArcFace(8, 2)
    arc.weight.data.copy_(paa.weight.data)
    emb, labels = torch.randn(4, 8), batch["label"]
    out, base = paa(emb, labels, batch["yaw"]), arc(emb, labels)
    assert torch.isfinite(out).all()
    assert torch.allclose(out[1], base[1]) and torch.allclose(out[3], base[3])
    assert not torch.allclose(out[2], base[2])  # a measured profile gets the larger margin

    # a mirror flips a known yaw's sign; NaN stays unknown
    flip = FaceAugment(IdentityAugmentConfig(flip=1.0, max_shift_px=0, max_rotate_deg=0, max_log_scale=0))
    image = ds[0][0]
    out_image, yaw = flip(image, 35.0, np.random.default_rng(0))
    assert yaw == -35.0 and out_image.shape == image.shape
    assert np.isnan(flip(image, float("nan"), np.random.default_rng(0))[1])


def test_yaw_sidecar_of_a_folder_and_a_wrong_one(tmp_path):
    root, _ = _folder(tmp_path)
    side = yaw_sidecar_path(root)
    assert side == tmp_path / "faces.yaw.npz"
    np.savez(side, key=np.array(["bob/2.png", "carol/x.pgm"]), yaw=np.array([10.0, -20.0]))
    ds = FolderFaces(root, progress=False)
    assert ds.yaw[2] == 10.0 and ds.yaw[3] == -20.0 and int(np.isfinite(ds.yaw).sum()) == 2
    with pytest.raises(FaceDataError, match="another source's"):
        load_yaw(side, np.array([1, 2], np.int64))
    with pytest.raises(FaceDataError, match="yaw sidecar not found"):
        FolderFaces(root, yaw=tmp_path / "none.npz", progress=False)


@pytest.mark.real_data
def test_yaw_pre_pass_on_real_orl_faces(orl, tmp_path):
    import shutil

    from training.identity.data.yawpass import write_yaw_sidecar

    root = tmp_path / "orl4"
    for subject in ("s1", "s2"):
        (root / subject).mkdir(parents=True)
        for n in ("1", "2"):
            shutil.copy(orl / subject / f"{n}.pgm", root / subject / f"{n}.pgm")
    out = write_yaw_sidecar(root, batch=3, progress=False)
    assert out == tmp_path / "orl4.yaw.npz"
    with np.load(out) as z:
        assert [k.decode() for k in z["key"]] == ["s1/1.pgm", "s1/2.pgm", "s2/1.pgm", "s2/2.pgm"]
        yaw = z["yaw"]
    assert np.isfinite(yaw).all() and (np.abs(yaw) < 45).all()  # ORL is near-frontal
    ds = FolderFaces(root, progress=False)
    assert np.array_equal(ds.yaw, yaw)


# ---- the training recipe and CLI ----


def test_recipe_builds_the_streamed_dataset(tmp_path):
    from training.identity.config import IdentityTrainConfig
    from training.identity.data import identity_meta
    from training.identity.losses import build_head

    rec = _pack(tmp_path, _faces((3, 3, 2)))
    cfg = IdentityTrainConfig(train_source=str(rec), head="paa", batch_size=4, val_cfp_folds=())
    meta = identity_meta(cfg)
    ds = build_train_dataset(cfg, meta, progress=False)
    assert isinstance(ds, RecordFaces) and ds.num_classes == 3 and len(ds) == 8
    loader = torch.utils.data.DataLoader(ds, cfg.batch_size, shuffle=True, drop_last=True, collate_fn=ds.collate)
    batch = next(iter(loader))
    assert batch["image"].shape == (4, 3, 112, 112) and batch["image"].dtype == torch.float32
    head = build_head(cfg.head, 16, ds.num_classes)
    loss = torch.nn.functional.cross_entropy(head(torch.randn(4, 16), batch["label"], batch["yaw"]), batch["label"])
    assert torch.isfinite(loss)


def test_recipe_rejects_cache_only_options_with_a_streamed_source():
    from training.identity.config import IdentityTrainConfig

    with pytest.raises(ValueError, match="train_source: pose_weight, profile_oversample need"):
        IdentityTrainConfig(train_source="x.rec", pose_weight=1.0, profile_oversample=2.0)
    assert IdentityTrainConfig(pose_weight=1.0).train_source == ""


def test_train_cli_flags_set_the_source(tmp_path, monkeypatch, capsys):
    import training.identity.train as train_module
    from training.identity.__main__ import main

    rec = _pack(tmp_path, _faces((2, 2)))
    seen = []
    monkeypatch.setattr(train_module, "train", lambda cfg, out, root: seen.append(cfg) or {"score": 0.5, "epoch": 1})
    monkeypatch.setattr(train_module, "STREAMED_SOURCES", True, raising=False)
    assert main(["train", "--out", str(tmp_path / "run"), "--train-rec", str(rec)]) == 0
    assert seen[-1].train_source == str(rec)
    root, _ = _folder(tmp_path)
    assert main(["train", "--out", str(tmp_path / "run"), "--train-folder", str(root)]) == 0
    assert seen[-1].train_source == str(root)
    capsys.readouterr()
    assert main(["train", "--out", str(tmp_path / "run"), "--train-rec", str(tmp_path / "none.rec")]) == 2
    assert "--train-rec" in capsys.readouterr().err and len(seen) == 2
    with pytest.raises(SystemExit):  # one source at a time
        main(["train", "--out", "x", "--train-rec", str(rec), "--train-folder", str(root)])
    # a trainer that does not read streamed sources must refuse them, never train on the cache instead
    monkeypatch.setattr(train_module, "STREAMED_SOURCES", False)
    capsys.readouterr()
    assert main(["train", "--out", str(tmp_path / "run"), "--train-rec", str(rec)]) == 2
    assert "does not read streamed sources yet" in capsys.readouterr().err and len(seen) == 2
