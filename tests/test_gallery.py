"""The gallery (SQLite), pose-aware matching, and the enrolment CLI and embedding chain."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edge.app import enroll
from edge.core.matching import MatchResult, ThresholdsError, YawThresholds, identity_scores, match
from edge.storage.gallery.exchange import GalleryImportError
from edge.storage.gallery.records import GalleryError, Template, validate_name
from edge.storage.gallery.schema import APPLICATION_ID, SCHEMA_VERSION
from edge.storage.gallery.store import Gallery

from .conftest import real_subset

REPO = Path(__file__).resolve().parents[1]
DIM = 16


def vec(seed: int, dim: int = DIM) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=dim)


def unit(v: np.ndarray) -> np.ndarray:
    return (np.asarray(v, dtype=np.float64) / np.linalg.norm(v)).astype(np.float32)


def templates(seed: int, yaws=(0.0, 40.0, -70.0), dim: int = DIM) -> list[Template]:
    return [Template(vec(seed * 100 + k, dim) * (k + 2), yaw, f"photo{k}.jpg") for k, yaw in enumerate(yaws)]


@pytest.fixture()
def gallery(tmp_path):
    g = Gallery.open(tmp_path / "gallery.sqlite")
    yield g
    g.close()


# ----------------------------------------------------------------------------- opening


def test_open_creates_a_private_wal_gallery_with_versioned_schema(tmp_path):
    path = tmp_path / "g.sqlite"
    with Gallery.open(path, dim=DIM) as g:
        assert g.dim == DIM
        conn = g._conn  # the connection settings are per connection: check the gallery's own
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert conn.execute("PRAGMA secure_delete").fetchone()[0] == 1
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert path.stat().st_mode & 0o777 == 0o600  # biometric data: owner only
    raw = sqlite3.connect(str(path))
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"  # persistent in the file
    assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert raw.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    tables = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"identities", "templates"} <= tables
    raw.close()
    with Gallery.open(path) as g:  # reopening reads the dim back
        assert g.dim == DIM


def _other_sqlite(path: Path) -> None:
    conn = sqlite3.connect(str(path))
    conn.execute("CREATE TABLE notes (x TEXT)")
    conn.commit()
    conn.close()


def _newer_gallery(path: Path) -> None:
    Gallery.open(path, dim=DIM).close()
    conn = sqlite3.connect(str(path))
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda p: p.write_bytes(os.urandom(4096)), "not a gallery (not an SQLite database)"),
        (lambda p: p.write_text("name,embedding\nann,0.1\n" * 100), "not a gallery (not an SQLite database)"),
        (_other_sqlite, "not a gallery (an SQLite database of another application)"),
        (lambda p: Gallery.open(p, dim=8).close(), "gallery holds 8-d embeddings, expected 16-d"),
        (_newer_gallery, f"gallery schema version {SCHEMA_VERSION + 1}"),
        (lambda p: p.mkdir(), "is a directory"),
    ],
)
def test_open_refuses_what_is_not_a_matching_gallery(tmp_path, make, expected):
    path = tmp_path / "thing.sqlite"
    make(path)
    before = path.read_bytes() if path.is_file() else None
    with pytest.raises(GalleryError) as err:
        Gallery.open(path, dim=DIM)
    message = str(err.value)
    assert message.startswith(str(path)) and expected in message and "\n" not in message
    if before is not None and "not a gallery" in expected:
        assert path.read_bytes() == before  # refused, never modified


def test_open_without_create_does_not_make_a_file(tmp_path):
    with pytest.raises(GalleryError, match="no gallery file here"):
        Gallery.open(tmp_path / "missing.sqlite", create=False)
    assert not (tmp_path / "missing.sqlite").exists()
    with pytest.raises(GalleryError, match="does not exist"):
        Gallery.open(tmp_path / "no" / "such" / "g.sqlite")


# ----------------------------------------------------------------------------- writes and reads


def test_add_list_and_templates_round_trip(gallery):
    ann = gallery.add_identity("Ann", templates(1), metadata={"team": "night"})
    assert (ann.name, ann.template_count, ann.yaw_min, ann.yaw_max) == ("Ann", 3, -70.0, 40.0)
    assert ann.metadata == {"team": "night"}
    gallery.add_identity("Bob", templates(2, yaws=(5.0,)))
    assert gallery.add_templates("Bob", templates(3, yaws=(-20.0, 88.0))) == 2
    assert gallery.dim == DIM

    listed = gallery.list()
    assert [(i.name, i.template_count, i.yaw_min, i.yaw_max) for i in listed] == [
        ("Ann", 3, -70.0, 40.0),
        ("Bob", 3, -20.0, 88.0),
    ]
    names, embeddings, yaws = gallery.templates()
    assert names == ["Ann"] * 3 + ["Bob"] * 3
    assert embeddings.shape == (6, DIM) and embeddings.dtype == np.float32
    assert np.allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-6)  # stored normalised
    assert np.allclose(embeddings[0], unit(templates(1)[0].embedding), atol=1e-7)
    assert yaws.tolist() == [0.0, 40.0, -70.0, 5.0, -20.0, 88.0]
    stored = gallery.identity_templates("Ann")
    assert [t.source for t in stored] == ["photo0.jpg", "photo1.jpg", "photo2.jpg"]
    assert "Ann" in gallery and "Nobody" not in gallery and "" not in gallery
    assert gallery.integrity_check().ok


def test_refused_writes_leave_the_gallery_unchanged(gallery):
    gallery.add_identity("Ann", templates(1))
    before = gallery.templates()
    bad = templates(2)
    cases = [
        (lambda: gallery.add_identity("Ann", templates(3)), "already enrolled"),
        (lambda: gallery.add_identity("Cy", bad[:2] + [Template(np.full(DIM, np.nan), 0.0)]), "NaN or infinity"),
        (lambda: gallery.add_identity("Cy", bad[:1] + [Template(np.ones(DIM + 1), 0.0)]), f"expected {DIM} values"),
        (lambda: gallery.add_identity("Cy", [Template(np.zeros(DIM), 0.0)]), "zero length"),
        (lambda: gallery.add_identity("Cy", [Template(np.ones((2, DIM)), 0.0)]), "expected shape (D,)"),
        (lambda: gallery.add_identity("Cy", [Template(np.ones(DIM), float("inf"))]), "yaw_deg"),
        (lambda: gallery.add_identity("Cy", [Template(np.ones(DIM), 181.0)]), "[-180, 180]"),
        (lambda: gallery.add_identity("Cy", [Template(np.ones(DIM), 0.0, source=3)]), "source"),
        (lambda: gallery.add_identity("Cy", []), "at least one template"),
        (lambda: gallery.add_identity("Cy", [np.ones(DIM)]), "expected a Template"),
        (lambda: gallery.add_identity("Cy", bad, metadata=["x"]), "metadata"),
        (lambda: gallery.add_templates("Nobody", bad), "not enrolled"),
        (lambda: gallery.remove("Nobody"), "not enrolled"),
    ]
    for action, expected in cases:
        with pytest.raises(GalleryError) as err:
            action()
        assert expected in str(err.value), str(err.value)
    after = gallery.templates()
    assert after.names == before.names and np.array_equal(after.embeddings, before.embeddings)
    assert [i.name for i in gallery.list()] == ["Ann"]


def test_a_failure_midway_through_the_insert_rolls_back_every_template(gallery, monkeypatch):
    gallery.add_identity("Ann", templates(1))
    import edge.storage.gallery.store as module

    calls = {"n": 0}
    real = module._embedding_bytes

    def fail_on_third(u):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk pulled out")
        return real(u)

    monkeypatch.setattr(module, "_embedding_bytes", fail_on_third)
    with pytest.raises(OSError):
        gallery.add_identity("Cy", templates(2, yaws=(0, 10, 20, 30)))  # the identity row is inserted first
    with pytest.raises(OSError):
        calls["n"] = 0
        gallery.add_templates("Ann", templates(3, yaws=(0, 10, 20)))
    monkeypatch.undo()
    assert "Cy" not in gallery
    assert gallery.identity("Ann").template_count == 3
    assert not gallery._conn.in_transaction
    gallery.add_identity("Cy", templates(2))  # the connection is still usable
    assert gallery.integrity_check().ok


HOSTILE_NAMES = [
    "O'Brien",
    'Robert"); DROP TABLE identities;--',
    "'; DROP TABLE templates; --",
    "../../etc/passwd",
    "C:\\Users\\x\\gallery.sqlite",
    "100% _match_ %",
    "😀 family 👨‍👩‍👧",  # ZWJ sequence: format characters are allowed
    "名前 이름 اسم",
    "Zoë",
    "x" * 128,
]


def test_hostile_names_are_just_names(tmp_path, gallery):
    for k, name in enumerate(HOSTILE_NAMES):
        gallery.add_identity(name, templates(k + 1))
    assert sorted(i.name for i in gallery.list()) == sorted(HOSTILE_NAMES)
    tables = {r[0] for r in gallery._conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"identities", "templates", "settings"} <= tables
    assert not (tmp_path / "etc").exists()

    export = tmp_path / "export.jsonl"
    assert gallery.export(export) == len(HOSTILE_NAMES)
    for name in HOSTILE_NAMES[:3]:
        assert gallery.remove(name) == 3
    with Gallery.open(tmp_path / "copy.sqlite") as copy:
        assert copy.import_(export).added == len(HOSTILE_NAMES)
        assert sorted(i.name for i in copy.list()) == sorted(HOSTILE_NAMES)
    assert sorted(i.name for i in gallery.list()) == sorted(HOSTILE_NAMES[3:])
    assert gallery.integrity_check().ok


def test_names_are_nfc_so_one_spelling_is_one_identity(gallery):
    gallery.add_identity("Zoe\u0308", templates(1))  # e + combining diaeresis
    assert "Zo\u00eb" in gallery
    with pytest.raises(GalleryError, match="already enrolled"):
        gallery.add_identity("Zo\u00eb", templates(2))


@pytest.mark.parametrize(
    "name, expected",
    [
        ("", "non-empty"),
        ("   ", "non-empty"),
        (" Ann", "whitespace"),
        ("x" * 129, "at most 128"),
        ("Ann\nBob", "U+000A"),
        ("tab\there", "U+0009"),
        ("nul\x00", "U+0000"),
        ("bell\x07", "U+0007"),
        ("line\u2028sep", "U+2028"),
        (None, "expected a string"),
        (b"Ann", "expected a string"),
    ],
)
def test_bad_names_are_refused_with_the_reason(name, expected):
    with pytest.raises(GalleryError) as err:
        validate_name(name)
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_remove_really_erases_the_name_and_embeddings_from_the_files(tmp_path):
    path = tmp_path / "g.sqlite"
    secret_name = "Zelda Quux-Ærøskøbing"
    secret = templates(7, yaws=(1.0, 2.0, 3.0, 4.0))
    with Gallery.open(path) as g:
        g.add_identity("Keeper One", templates(1))
        g.add_identity(secret_name, secret)
        g.add_identity("Keeper Two", templates(2))
        needles = [secret_name.encode("utf-8")] + [unit(t.embedding).astype("<f4").tobytes() for t in secret]
        files = [path, Path(f"{path}-wal"), Path(f"{path}-shm")]

        def haystack() -> bytes:
            return b"".join(p.read_bytes() for p in files if p.exists())

        # The control: before removal the bytes are on disk, so the search below can find them.
        assert all(n in haystack() for n in needles)
        assert g.remove(secret_name) == 4
        data = haystack()
        assert [n for n in needles if n in data] == []
        assert [i.name for i in g.list()] == ["Keeper One", "Keeper Two"]  # the others survive intact
        assert g.integrity_check().ok
    # And after the last connection closes (SQLite checkpoints and deletes the WAL).
    data = haystack()
    assert [n for n in needles if n in data] == []


def test_export_is_atomic_versioned_json_lines_and_import_round_trips(tmp_path, gallery):
    gallery.add_identity("Ann", templates(1), metadata={"k": "v"})
    gallery.add_identity("Bob", templates(2))
    out = tmp_path / "out" / "gallery.jsonl"
    out.parent.mkdir()
    out.write_text("old contents\n")
    assert gallery.export(out) == 2
    assert sorted(p.name for p in out.parent.iterdir()) == ["gallery.jsonl"]  # no temporary left
    assert out.stat().st_mode & 0o777 == 0o600
    lines = out.read_text(encoding="utf-8").splitlines()
    header = json.loads(lines[0])
    assert header["format"] == "poseface.gallery" and header["version"] == 1
    assert header["dim"] == DIM and header["identities"] == 2 and len(lines) == 3

    with Gallery.open(tmp_path / "b.sqlite") as other:
        assert other.import_(out).added == 2
        a, b = gallery.templates(), other.templates()
        assert a.names == b.names and np.array_equal(a.embeddings, b.embeddings) and np.array_equal(a.yaws, b.yaws)
        assert other.list() == gallery.list()  # created times and metadata are kept
        assert other.identity_templates("Ann")[1].created == gallery.identity_templates("Ann")[1].created


def test_import_conflicts_skip_replace_error(tmp_path, gallery):
    gallery.add_identity("Ann", templates(1))
    gallery.add_identity("Bob", templates(2))
    out = tmp_path / "x.jsonl"
    gallery.export(out)
    with Gallery.open(tmp_path / "b.sqlite") as other:
        other.add_identity("Ann", templates(9, yaws=(12.0,)))
        old = unit(templates(9, yaws=(12.0,))[0].embedding)
        with pytest.raises(GalleryImportError, match=r"line 2: identity 'Ann' is already enrolled"):
            other.import_(out, on_conflict="error")
        assert [i.name for i in other.list()] == ["Ann"]  # nothing written, Bob included
        r = other.import_(out, on_conflict="skip")
        assert (r.added, r.replaced, r.skipped) == (1, 0, 1)
        assert other.identity("Ann").template_count == 1
        r = other.import_(out, on_conflict="replace")
        assert (r.added, r.replaced, r.skipped) == (0, 2, 0)
        assert other.identity("Ann").template_count == 3
        # Replaced templates are erased like removed ones.
        assert old.astype("<f4").tobytes() not in (tmp_path / "b.sqlite").read_bytes()
        with pytest.raises(GalleryError, match="on_conflict"):
            other.import_(out, on_conflict="merge")


def _mutate_line(n: int, change):
    def apply(lines: list[str]) -> list[str]:
        record = json.loads(lines[n - 1])
        change(record)
        lines[n - 1] = json.dumps(record)
        return lines

    return apply


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda ls: ls[:3] + ["{not json"], "line 4: not valid JSON"),
        (lambda ls: ls[:3] + ["[1, 2]"], "line 4: expected a JSON object"),
        (_mutate_line(1, lambda h: h.update(format="other")), "line 1: format"),
        (_mutate_line(1, lambda h: h.update(version=2)), "line 1: version"),
        (_mutate_line(1, lambda h: h.update(identities=5)), "line 1: identities"),
        (_mutate_line(1, lambda h: h.update(dim=8)), "line 2: templates[0].embedding: expected 32 bytes"),
        (_mutate_line(4, lambda r: r["templates"][0].update(embedding="%%%")), "line 4: templates[0].embedding"),
        (_mutate_line(4, lambda r: r["templates"][1].update(yaw_deg="left")), "line 4: templates[1]: yaw_deg"),
        (_mutate_line(4, lambda r: r["templates"][1].update(yaw_deg=400)), "line 4: templates[1]: yaw_deg"),
        (_mutate_line(4, lambda r: r["templates"][0].pop("source")), "line 4: templates[0]: expected an object"),
        (_mutate_line(4, lambda r: r.update(templates=[])), "line 4: templates: expected a non-empty list"),
        (_mutate_line(4, lambda r: r.update(name="Ann")), "line 4: identity 'Ann' appears twice (first on line 2)"),
        (_mutate_line(4, lambda r: r.update(name="bad\nname")), "line 4: name: "),
        (_mutate_line(4, lambda r: r.pop("created")), "line 4: missing field 'created'"),
        (_mutate_line(4, lambda r: r.update(photo="x.jpg")), "line 4: unknown field 'photo'"),
        (_mutate_line(4, lambda r: r.update(metadata=[1])), "line 4: metadata"),
        (lambda ls: ls[:3] + [ls[3].replace('"yaw_deg": 0.0', '"yaw_deg": NaN')], "line 4: not valid JSON"),
        (lambda ls: [], "empty file"),
    ],
)
def test_a_malformed_export_is_refused_whole_with_file_and_line(tmp_path, gallery, mutate, expected):
    for k, name in enumerate(["Ann", "Bob", "Cy"]):
        gallery.add_identity(name, templates(k + 1))
    good = tmp_path / "good.jsonl"
    gallery.export(good)
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(line + "\n" for line in mutate(good.read_text().splitlines())))
    with Gallery.open(tmp_path / "target.sqlite") as target:
        target.add_identity("Zed", templates(9))
        with pytest.raises(GalleryImportError) as err:
            target.import_(bad, on_conflict="replace")
        message = str(err.value)
        assert message.startswith(f"{bad}: ") and expected in message and "\n" not in message
        # Lines 2 and 3 were fine, but nothing from the file was written.
        assert [i.name for i in target.list()] == ["Zed"]
    with pytest.raises(GalleryImportError, match="no such export file"):
        gallery.import_(tmp_path / "missing.jsonl")


def test_integrity_check_reports_what_is_wrong(tmp_path):
    path = tmp_path / "g.sqlite"
    with Gallery.open(path) as g:
        g.add_identity("Ann", templates(1))
        g.add_identity("Bob", templates(2))
        assert g.integrity_check().ok
    raw = sqlite3.connect(str(path))
    raw.execute("UPDATE templates SET embedding = ? WHERE id = 1", (np.full(DIM, 0.9, "<f4").tobytes(),))
    raw.execute("PRAGMA foreign_keys = OFF")
    raw.execute(
        "INSERT INTO templates (identity_id, embedding, dim, yaw_deg, created, source) VALUES (99, ?, ?, 0, 'x', 'y')",
        (unit(vec(5)).astype("<f4").tobytes(), DIM),
    )
    raw.execute("INSERT INTO identities (name, created, metadata) VALUES ('Empty', 'x', '{}')")
    raw.commit()
    raw.close()
    with Gallery.open(path) as g:
        report = g.integrity_check()
    assert not report.ok
    text = "\n".join(report.problems)
    assert "embedding norm 3.6000, expected 1" in text
    assert "foreign_key_check: templates row 7 points at a missing identities row" in text
    assert "identity 'Empty': has no templates" in text


# ----------------------------------------------------------------------------- crash safety

CRASH_DIM = 64
CRASH_TEMPLATES = 12

CRASH_CHILD = r"""
import sys
from edge.storage.gallery.store import Gallery
from tests.test_gallery import crash_templates, CRASH_DIM

path, start = sys.argv[1], int(sys.argv[2])
gallery = Gallery.open(path, dim=CRASH_DIM)
print("opened", flush=True)
i = start
while True:
    name = f"person-{i:07d}"
    gallery.add_identity(name, crash_templates(i))
    print("added", name, flush=True)
    if i % 4 == 3:  # removals too: they VACUUM and checkpoint, the riskiest writes
        victim = f"person-{i - 1:07d}"
        print("removing", victim, flush=True)
        gallery.remove(victim)
        print("removed", victim, flush=True)
    i += 1
"""


def crash_templates(i: int) -> list[Template]:
    rng = np.random.default_rng(i)
    return [
        Template(rng.normal(size=CRASH_DIM), float(rng.uniform(-90, 90)), f"{i}/{k}.jpg")
        for k in range(CRASH_TEMPLATES)
    ]


def test_kill_9_at_random_moments_leaves_a_consistent_gallery(tmp_path):
    path = tmp_path / "crash.sqlite"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    env["OMP_NUM_THREADS"] = "1"
    rng = random.Random(6)
    added, removing, removed, unreported = set(), set(), set(), set()
    kills = 0
    for round_ in range(5):
        start = round_ * 100_000
        proc = subprocess.Popen(
            [sys.executable, "-c", CRASH_CHILD, str(path), str(start)],
            cwd=str(REPO),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        first = proc.stdout.readline()
        assert first == "opened\n", proc.stderr.read() if proc.poll() is not None else first
        time.sleep(rng.uniform(0.0, 0.6))
        assert proc.poll() is None, proc.stderr.read()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        kills += proc.returncode == -signal.SIGKILL
        last = start - 1
        for line in proc.stdout.read().splitlines():
            verb, name = line.split(" ", 1)
            {"added": added, "removing": removing, "removed": removed}[verb].add(name)
            if verb == "added":
                last = int(name.split("-")[1])
        proc.stdout.close()
        proc.stderr.close()
        # The one add in flight at the kill may have committed without being reported.
        unreported.add(f"person-{last + 1:07d}")

        with Gallery.open(path) as g:
            report = g.integrity_check()
            assert report.ok, report.problems
            present = {i.name: i for i in g.list()}
            missing = sorted(added - removing - set(present))
            assert missing == [], f"committed but lost after kill {round_}: {missing[:5]}"
            assert not (removed & set(present)), "a reported removal came back"
            assert set(present) <= added | unreported, "an identity appeared that was never added"
            for name in present:
                stored = g.identity_templates(name)
                expected = crash_templates(int(name.split("-")[1]))
                assert len(stored) == CRASH_TEMPLATES, f"{name}: {len(stored)} templates (partial write)"
                assert all(np.allclose(s.embedding, unit(e.embedding), atol=1e-6) for s, e in zip(stored, expected))
    assert kills == 5
    assert len(added) >= 5  # the loop really ran between the kills


# ----------------------------------------------------------------------------- matching


def test_yaw_thresholds_bins_and_dict_round_trip():
    t = YawThresholds((15, 30, 45), (0.5, 0.45, 0.4, 0.3))
    assert [t.bin_index(y) for y in (0, 14.99, 15, -29, 30, -44.9, 45, 90, -180)] == [0, 0, 1, 1, 2, 2, 3, 3, 3]
    assert t.threshold_for(-50) == 0.3
    assert t.bin_labels() == ["0-15", "15-30", "30-45", "45+"]
    assert YawThresholds.from_dict(json.loads(json.dumps(t.to_dict()))) == t
    assert YawThresholds.uniform(0.4).thresholds == (0.4,) * 4
    custom = YawThresholds((20, 60), (0.5, 0.4, 0.35))
    assert custom.bin_labels() == ["0-20", "20-60", "60+"] and custom.bin_index(59) == 1
    with pytest.raises(ValueError, match="finite"):
        t.bin_index(float("nan"))


@pytest.mark.parametrize(
    "data, field",
    [
        ({"version": 1, "edges_deg": [30, 15], "thresholds": [0.1, 0.2, 0.3]}, "edges_deg"),
        ({"version": 1, "edges_deg": [0, 15], "thresholds": [0.1, 0.2, 0.3]}, "edges_deg"),
        ({"version": 1, "edges_deg": [15, 30], "thresholds": [0.1, 0.2]}, "thresholds"),
        ({"version": 1, "edges_deg": [15], "thresholds": [0.1, 1.5]}, "thresholds"),
        ({"version": 1, "edges_deg": [15], "thresholds": [0.1, "x"]}, "thresholds"),
        ({"version": 2, "edges_deg": [15], "thresholds": [0.1, 0.2]}, "version"),
        ({"version": 1, "edges_deg": [15], "thresholds": [0.1, 0.2], "far": 0.001}, "far"),
    ],
)
def test_yaw_thresholds_refuse_bad_records(data, field):
    with pytest.raises(ThresholdsError) as err:
        YawThresholds.from_dict(data, source="model.json")
    assert str(err.value).startswith("model.json: ") and field in str(err.value)


def grid_thresholds():
    return YawThresholds(
        (15, 30, 45),
        (0.6, 0.55, 0.5, 0.45),
        (1e-2, 1e-3, 1e-4),
        ((0.5, 0.6, 0.7), (0.45, 0.55, 0.65), (0.4, 0.5, 0.6), (0.35, 0.45, 0.45)),
    )


def test_stranger_rate_divides_the_rate_among_the_templates_in_log_far():
    t = grid_thresholds()
    assert YawThresholds.from_dict(json.loads(json.dumps(t.to_dict()))) == t
    # 10 templates at a 1 % stranger rate: each pair at 1e-3, the grid's middle column
    assert t.for_stranger_rate(10, 0.01).thresholds == pytest.approx((0.6, 0.55, 0.5, 0.45))
    # 1 template: 1e-2; 100 templates: 1e-4; halfway in log-FAR (sqrt(10) * 1e-4) lands halfway
    assert t.for_stranger_rate(1, 0.01).thresholds == pytest.approx((0.5, 0.45, 0.4, 0.35))
    assert t.for_stranger_rate(100, 0.01).thresholds == pytest.approx((0.7, 0.65, 0.6, 0.45))
    assert t.for_stranger_rate(100, 0.01 * 10**0.5).thresholds[0] == pytest.approx(0.65)
    # beyond the grid: its strictest (or loosest) measured threshold, never an extrapolation
    assert t.for_stranger_rate(10**6, 0.01).thresholds == t.for_stranger_rate(100, 0.01).thresholds
    assert t.for_stranger_rate(0, 0.5).thresholds == t.for_stranger_rate(1, 0.01).thresholds
    # more templates never loosen a threshold
    rows = [t.for_stranger_rate(n, 0.01).thresholds for n in (1, 3, 10, 30, 100, 300)]
    assert all(all(b >= a for a, b in zip(r1, r2)) for r1, r2 in zip(rows, rows[1:]))
    with pytest.raises(ThresholdsError, match="FAR grid"):
        YawThresholds.uniform(0.5).for_stranger_rate(10, 0.01)
    with pytest.raises(ValueError, match="stranger_rate"):
        t.for_stranger_rate(10, 1.5)


@pytest.mark.parametrize(
    "change, field",
    [
        ({"far_grid": None}, "far_grid"),  # one of the pair alone
        ({"far_grid": [1e-4, 1e-3, 1e-2]}, "far_grid"),  # not descending
        ({"grid_thresholds": [[0.5, 0.6, 0.7]]}, "grid_thresholds"),  # one row, four bins
        ({"grid_thresholds": [[0.7, 0.6, 0.5]] * 4}, "grid_thresholds"),  # looser as the rate falls
    ],
)
def test_yaw_thresholds_refuse_bad_grids(change, field):
    data = grid_thresholds().to_dict()
    for key, value in change.items():
        if value is None:
            data.pop("grid_thresholds")
        else:
            data[key] = value
    with pytest.raises(ThresholdsError) as err:
        YawThresholds.from_dict(data, source="model.json")
    assert str(err.value).startswith("model.json: ") and field in str(err.value)


def test_match_takes_each_identitys_best_template_and_the_probe_yaws_threshold(gallery):
    base = {name: unit(vec(seed)) for seed, name in enumerate(["Ann", "Bob", "Cy"], start=1)}
    for name, v in base.items():
        other = unit(vec(hash(name) % 1000 + 50))
        gallery.add_identity(name, [Template(other, 0.0, "front"), Template(v, 60.0, "profile")])
    arrays = gallery.templates()
    noise = unit(vec(99))
    probe = unit(base["Bob"] + 0.9 * noise)
    score = float(probe @ base["Bob"])
    ranked = identity_scores(probe, arrays)
    assert ranked[0][0] == "Bob" and ranked[0][1] == pytest.approx(score, abs=1e-6) and ranked[0][2] == 60.0
    assert sorted(n for n, _, _ in ranked) == ["Ann", "Bob", "Cy"]  # one entry per identity

    # The same score is accepted from a profile probe but rejected from a frontal one.
    thresholds = YawThresholds((15, 30, 45), (score + 0.05, score + 0.05, score + 0.05, score - 0.05))
    frontal = match(probe, 5.0, arrays, thresholds)
    profile = match(probe * 3, -70.0, arrays, thresholds)  # the probe need not be normalised
    assert frontal.name is None and frontal.candidate == "Bob" and frontal.score == pytest.approx(score, abs=1e-6)
    assert profile.name == "Bob" and profile.template_yaw == 60.0 and profile.threshold == thresholds.thresholds[3]

    empty = match(probe, 0.0, Gallery.open(gallery.path.parent / "empty.sqlite").templates(), thresholds)
    assert empty == MatchResult(
        name=None, score=None, template_yaw=None, candidate=None, threshold=thresholds.thresholds[0]
    )
    with pytest.raises(ValueError, match=f"expected {DIM} values"):
        match(np.ones(DIM + 2), 0.0, arrays, thresholds)
    with pytest.raises(ValueError, match="NaN"):
        match(np.full(DIM, np.nan), 0.0, arrays, thresholds)


# ----------------------------------------------------------------------------- enrolment


class FakeEmbedder:
    """A FaceEmbedder that 'finds' faces from the photo's mean colour, for the CLI plumbing."""

    def embed_photo(self, image_bgr):
        mean = image_bgr.reshape(-1, 3).mean(axis=0)
        if mean.max() < 10:
            return []  # a black photo has no face
        big = enroll.FaceTemplate(unit(np.resize(mean, DIM) + np.arange(DIM)), 12.5, np.array([0, 0, 50, 50]), 0.9)
        small = enroll.FaceTemplate(unit(np.ones(DIM)), -3.0, np.array([0, 0, 5, 5]), 0.95)
        return [small, big]


def _photos(folder: Path) -> Path:
    import cv2

    folder.mkdir(parents=True)
    cv2.imwrite(str(folder / "a.png"), np.full((20, 20, 3), 120, np.uint8))
    (folder / "sub").mkdir()
    cv2.imwrite(str(folder / "sub" / "b.png"), np.full((20, 20, 3), 200, np.uint8))
    cv2.imwrite(str(folder / "dark.png"), np.zeros((20, 20, 3), np.uint8))
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    return folder


def test_enrol_photos_takes_the_largest_face_per_photo_and_relative_sources(tmp_path):
    assert isinstance(FakeEmbedder(), enroll.FaceEmbedder)
    found, notes = enroll.enrol_photos(FakeEmbedder(), _photos(tmp_path / "ann"))
    assert [t.source for t in found] == ["a.png", "sub/b.png"]
    assert all(t.yaw_deg == 12.5 for t in found)  # the big face, not the higher-scored small one
    assert any("dark.png: no face found" in n for n in notes)
    assert any("broken.jpg" in n and "not a decodable image" in n for n in notes)
    assert any("a.png: 2 faces, used the largest" in n for n in notes)


def test_enroll_cli_without_an_identity_model_says_what_to_pass(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(enroll, "DEFAULT_EMBEDDER_MODEL", None)  # as on an install without the shipped model
    photos = _photos(tmp_path / "ann")
    code = enroll.main(["add", "Ann", "--images", str(photos), "--gallery", str(tmp_path / "g.sqlite")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err == f"edge.enroll: error: {enroll.NO_MODEL_MESSAGE}"
    assert "pass --embedder-model FILE" in err
    with pytest.raises(enroll.EmbedderUnavailableError):
        enroll.build_embedder({})


def test_enroll_cli_commands_with_a_fake_embedder(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(enroll, "build_embedder", lambda config: FakeEmbedder())
    g = str(tmp_path / "g.sqlite")
    photos = _photos(tmp_path / "ann")
    assert enroll.main(["add", "Ann O'Neil", "--images", str(photos), "--gallery", g]) == 0
    assert 'enrolled "Ann O\'Neil": 2 new template(s)' in capsys.readouterr().out
    assert enroll.main(["add", "Ann O'Neil", "--images", str(photos), "--gallery", g]) == 2
    assert "pass --append" in capsys.readouterr().err
    assert enroll.main(["add", "Ann O'Neil", "--images", str(photos), "--append", "--gallery", g]) == 0
    assert enroll.main(["add", "Bob", "--images", str(photos), "--gallery", g]) == 0
    capsys.readouterr()
    assert enroll.main(["list", "--json", "--gallery", g]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(i["name"], i["templates"]) for i in listed["identities"]] == [("Ann O'Neil", 4), ("Bob", 2)]
    assert enroll.main(["list", "--gallery", g]) == 0
    assert "2 identities, 6 templates, dim 16" in capsys.readouterr().out
    export = tmp_path / "e.jsonl"
    assert enroll.main(["export", str(export), "--gallery", g]) == 0
    assert enroll.main(["remove", "Bob", "--gallery", g]) == 0
    assert enroll.main(["remove", "Bob", "--gallery", g]) == 2
    assert "identity 'Bob' is not enrolled" in capsys.readouterr().err
    assert enroll.main(["import", str(export), "--on-conflict", "skip", "--gallery", g]) == 0
    assert "1 added, 0 replaced, 1 skipped" in capsys.readouterr().out
    assert enroll.main(["check", "--gallery", g]) == 0
    assert enroll.main(["list", "--gallery", str(tmp_path / "none.sqlite")]) == 2
    assert enroll.main(["add", "bad\nname", "--images", str(photos), "--gallery", g]) == 2
    assert enroll.main(["add", "Cy", "--images", str(tmp_path / "nothing"), "--gallery", g]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("edge.enroll: error: ") for line in err)


# ----------------------------------------------------------------------------- the real model chain


@pytest.fixture(scope="module")
def tiny_embedder(tmp_path_factory):
    """A 16-d embedding model: 28x28 average pooling to a 4x4x3 grid, then a fixed matmul."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    from edge.runtime import ModelMeta, Normalisation, file_sha256, meta_path_for, save_meta

    path = tmp_path_factory.mktemp("model") / "tiny_embedder.onnx"
    weights = np.random.default_rng(0).normal(size=(48, DIM)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("AveragePool", ["x"], ["pooled"], kernel_shape=[28, 28], strides=[28, 28]),
            helper.make_node("Reshape", ["pooled", "shape"], ["flat"]),
            helper.make_node("MatMul", ["flat", "w"], ["embedding"]),
        ],
        "tiny_embedder",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 112, 112])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [1, DIM])],
        initializer=[numpy_helper.from_array(weights, "w"), numpy_helper.from_array(np.array([1, 48]), "shape")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    meta = ModelMeta(
        name="tiny-embedder",
        version="test",
        task="embedding",
        format="onnx",
        precision="fp32",
        input_size=(112, 112),
        input_layout="NCHW",
        color_order="RGB",
        normalisation=Normalisation((127.5,) * 3, (127.5,) * 3),
        input_name="x",
        output_names=("embedding",),
        sha256=file_sha256(path),
    )
    save_meta(meta, meta_path_for(path))
    return path


def test_embed_face_runs_the_whole_chain_on_real_photos(real_data, tiny_embedder):
    person = real_subset(real_data, "cfp") / "Data" / "Images" / "001"
    if not person.is_dir():
        pytest.skip(f"{person} is absent")
    from edge.imageio import read_image_bgr

    embedder = enroll.build_embedder({"embedder_model": str(tiny_embedder)})
    assert isinstance(embedder, enroll.FaceEmbedder)
    faces = {kind: embedder.embed_photo(read_image_bgr(person / kind / "01.jpg"))[0] for kind in ("frontal", "profile")}
    for face in faces.values():
        assert face.embedding.shape == (DIM,) and face.embedding.dtype == np.float32
        assert np.linalg.norm(face.embedding) == pytest.approx(1.0, abs=1e-5)
        assert face.box.shape == (4,) and face.area > 0 and 0 < face.score <= 1
    # a profile reads well past the frontal photo (the shipped landmarks' yaw under-reads profiles'
    # angle, see the landmark card's pose check, so the check is the separation, not 45 degrees)
    assert abs(faces["frontal"].yaw_deg) < 20
    assert abs(faces["profile"].yaw_deg) > 30 and abs(faces["profile"].yaw_deg) > abs(faces["frontal"].yaw_deg) + 20
    assert embedder.embed_photo(np.zeros((120, 120, 3), np.uint8)) == []


def test_enroll_cli_add_with_a_model_file_on_real_photos(real_data, tiny_embedder, tmp_path, capsys):
    person = real_subset(real_data, "cfp") / "Data" / "Images" / "002"
    if not person.is_dir():
        pytest.skip(f"{person} is absent")
    photos = tmp_path / "photos"
    photos.mkdir()
    for kind in ("frontal", "profile"):
        shutil.copy(person / kind / "01.jpg", photos / f"{kind}.jpg")
    g = tmp_path / "g.sqlite"
    code = enroll.main(
        ["add", "Person 002", "--images", str(photos), "--embedder-model", str(tiny_embedder), "--gallery", str(g)]
    )
    assert code == 0, capsys.readouterr().err
    with Gallery.open(g) as gallery:
        assert gallery.dim == DIM
        stored = {t.source: t for t in gallery.identity_templates("Person 002")}
    assert sorted(stored) == ["frontal.jpg", "profile.jpg"]
    # each template keeps its photo's yaw; the head-pose fit reads profiles low (about 30 degrees
    # for this one, see the landmark card), so the check is that the profile reads well apart
    frontal, profile = abs(stored["frontal.jpg"].yaw_deg), abs(stored["profile.jpg"].yaw_deg)
    assert frontal < 20 and profile > frontal + 15, (frontal, profile)


def test_two_connections_see_each_others_writes_and_dim(tmp_path):
    path = tmp_path / "g.sqlite"
    with Gallery.open(path) as reader, Gallery.open(path) as writer:
        assert reader.dim is None and reader.templates().embeddings.shape == (0, 0)
        writer.add_identity("Ann", templates(1))  # fixes the dim from the writer's side
        assert reader.dim == DIM and reader.templates().embeddings.shape == (3, DIM)
        with pytest.raises(GalleryError, match=f"expected {DIM} values"):
            reader.add_identity("Bob", [Template(np.ones(DIM * 2), 0.0)])
