"""Templates encrypted at rest (issue 8): keys, sealing, refusals, erasure, the CLI and the service."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from edge.app import enroll
from edge.app.service import gallery_key
from edge.storage.gallery.records import GalleryError, Template
from edge.storage.gallery.store import Gallery
from edge.storage.keys import KEY_BYTES, KeyFileError, generate_key, load_key

from .test_gallery import DIM, FakeEmbedder, _photos, templates, unit


@pytest.fixture()
def key_file(tmp_path) -> Path:
    return generate_key(tmp_path / "gallery.key")


def _sealed(path: Path, key: bytes, *names: str) -> Path:
    """An encrypted gallery at ``path`` with ``names`` enrolled (templates(1), templates(2), ...)."""
    with Gallery.open(path, key=key) as g:
        for k, name in enumerate(names, start=1):
            g.add_identity(name, templates(k))
    return path


def _files(path: Path) -> bytes:
    return b"".join(p.read_bytes() for p in (path, Path(f"{path}-wal")) if p.exists())


def test_keygen_writes_an_owner_only_key_and_never_overwrites(tmp_path):
    path = generate_key(tmp_path / "k")
    assert (path.stat().st_mode & 0o777) == 0o600
    assert len(load_key(path)) == KEY_BYTES
    before = path.read_bytes()
    with pytest.raises(KeyFileError, match="already there"):
        generate_key(path)
    assert path.read_bytes() == before
    assert load_key(generate_key(tmp_path / "k2")) != load_key(path)


@pytest.mark.parametrize(
    "setup, fragment",
    [
        (lambda p: None, "no key file here"),
        (lambda p: (p.write_text("c2hvcnQ=\n"), p.chmod(0o600)), "32 bytes"),
        (lambda p: (p.write_text("not base64 at all!\n"), p.chmod(0o600)), "base64"),
        (lambda p: (generate_key(p), p.chmod(0o644)), "mode 0644"),
        (lambda p: (generate_key(p), p.chmod(0o640)), "lets others read it"),
        (lambda p: p.mkdir(), "expected a key file"),
    ],
    ids=["missing", "short", "garbage", "world-readable", "group-readable", "a folder"],
)
def test_a_bad_key_file_is_one_line_naming_it(tmp_path, setup, fragment):
    path = tmp_path / "gallery.key"
    setup(path)
    with pytest.raises(KeyFileError) as err:
        load_key(path)
    assert str(path) in str(err.value) and fragment in str(err.value) and "\n" not in str(err.value)


def test_encrypted_gallery_round_trips_and_stores_no_plain_embedding(tmp_path, key_file):
    path = tmp_path / "g.sqlite"
    key = load_key(key_file)
    with Gallery.open(path, key=key) as g:
        assert g.encrypted
        g.add_identity("Ann", templates(1))
        g.add_identity("Bob", templates(2))
        arrays = g.templates()
    with Gallery.open(path, key=key) as g:
        again = g.templates()
        ann = g.identity_templates("Ann")
        assert g.integrity_check().ok
    assert arrays.names == again.names == ["Ann"] * 3 + ["Bob"] * 3
    np.testing.assert_array_equal(arrays.embeddings, again.embeddings)
    np.testing.assert_allclose(ann[0].embedding, unit(templates(1)[0].embedding), atol=1e-6)
    raw = _files(path)
    for t in templates(1) + templates(2):
        stored = unit(t.embedding).astype("<f4").tobytes()
        assert stored not in raw and stored[:16] not in raw  # not even a quarter of one embedding
    # the same embedding sealed twice differs (fresh nonce per template)
    with Gallery.open(path, key=key) as g:
        g.add_templates("Ann", [templates(1)[0]])
    blobs = [b for (b,) in sqlite3.connect(path).execute("SELECT embedding FROM templates WHERE identity_id = 1")]
    assert blobs[0] != blobs[3] and len(blobs[0]) == 4 * DIM + 28


def test_a_copied_gallery_without_its_key_gives_no_embedding(tmp_path, key_file):
    path = tmp_path / "g.sqlite"
    with Gallery.open(path, key=load_key(key_file)) as g:
        g.add_identity("Ann", templates(1))
    with pytest.raises(GalleryError, match="templates are encrypted") as err:
        Gallery.open(path)
    assert str(path) in str(err.value)
    other = load_key(generate_key(tmp_path / "other.key"))
    with pytest.raises(GalleryError, match="does not open the gallery"):
        Gallery.open(path, key=other)
    # Without the key: names can be listed and removed, nothing biometric can be read or added.
    with Gallery.open(path, without_key=True) as g:
        assert [i.name for i in g.list()] == ["Ann"] and g.encrypted
        with pytest.raises(GalleryError, match="needs the gallery key"):
            g.templates()
        with pytest.raises(GalleryError, match="needs the gallery key"):
            g.add_identity("Cy", templates(3))
        assert g.integrity_check().ok
        assert g.remove("Ann") == 3
    with Gallery.open(path, key=load_key(key_file)) as g:
        assert g.list() == []


def test_a_template_moved_to_another_person_or_altered_fails_authentication(tmp_path, key_file):
    key = load_key(key_file)
    path = _sealed(tmp_path / "g.sqlite", key, "Ann", "Bob")
    conn = sqlite3.connect(path)
    ann_blob = conn.execute("SELECT embedding FROM templates WHERE identity_id = 1 LIMIT 1").fetchone()[0]
    bob_first = conn.execute("SELECT min(id) FROM templates WHERE identity_id = 2").fetchone()[0]
    with conn:  # an attacker with write access makes Bob's first template Ann's face
        conn.execute("UPDATE templates SET embedding = ? WHERE id = ?", (ann_blob, bob_first))
    conn.close()
    with Gallery.open(path, key=key) as g:
        with pytest.raises(GalleryError, match=f"template {bob_first} of 'Bob'.*fails authentication"):
            g.templates()
        report = g.integrity_check()
    assert not report.ok and any("fails authentication" in p for p in report.problems)


def test_plain_gallery_refuses_a_key_and_migrates_through_export_import(tmp_path, key_file):
    plain, sealed, export = tmp_path / "plain.sqlite", tmp_path / "sealed.sqlite", tmp_path / "e.jsonl"
    with Gallery.open(plain) as g:
        g.add_identity("Ann", templates(1))
        assert not g.encrypted
        want = g.templates()
    key = load_key(key_file)
    with pytest.raises(GalleryError, match="without encryption.*export"):
        Gallery.open(plain, key=key)
    with Gallery.open(plain) as g:
        g.export(export)
    with Gallery.open(sealed, key=key) as g:
        g.import_(export)
        got = g.templates()
    np.testing.assert_allclose(got.embeddings, want.embeddings, atol=1e-7)
    assert unit(templates(1)[0].embedding).astype("<f4").tobytes() not in _files(sealed)


def test_remove_erases_the_sealed_templates_from_the_files(tmp_path, key_file):
    key = load_key(key_file)
    path = _sealed(tmp_path / "g.sqlite", key, "Ann", "Zed Unique Name")
    blobs = [b for (b,) in sqlite3.connect(path).execute("SELECT embedding FROM templates WHERE identity_id = 2")]
    with Gallery.open(path, key=key) as g:
        g.remove("Zed Unique Name")
    raw = _files(path)
    assert b"Zed Unique Name" not in raw
    assert not any(blob in raw or blob[:16] in raw for blob in blobs)


def test_service_takes_the_credential_before_the_key_file(tmp_path, key_file):
    creds = tmp_path / "creds"
    creds.mkdir()
    cred = generate_key(creds / "gallery.key")
    env = {"CREDENTIALS_DIRECTORY": str(creds)}
    assert gallery_key("gallery.key", key_file, env) == load_key(cred)
    assert gallery_key("gallery.key", key_file, {}) == load_key(key_file)  # systemd < 247: no credentials
    assert gallery_key(None, None, env) is None
    with pytest.raises(KeyFileError, match="no such credential"):
        gallery_key("gallery.key", None, {})
    os.chmod(key_file, 0o644)
    with pytest.raises(KeyFileError, match="mode 0644"):
        gallery_key(None, key_file, {})


def test_enroll_cli_with_a_key(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(enroll, "build_embedder", lambda config: FakeEmbedder())
    g, key = str(tmp_path / "g.sqlite"), str(tmp_path / "k.key")
    photos = _photos(tmp_path / "ann")
    assert enroll.main(["keygen", "--key-file", key]) == 0
    assert enroll.main(["keygen", "--key-file", key]) == 2
    assert enroll.main(["add", "Ann", "--images", str(photos), "--gallery", g, "--key-file", key]) == 0
    capsys.readouterr()
    assert enroll.main(["add", "Bob", "--images", str(photos), "--gallery", g]) == 2  # no key: refused
    assert "templates are encrypted" in capsys.readouterr().err
    assert enroll.main(["list", "--gallery", g]) == 0  # listing needs no key
    assert "1 identities, 2 templates" in capsys.readouterr().out
    assert enroll.main(["check", "--gallery", g, "--key-file", key]) == 0
    assert enroll.main(["remove", "Ann", "--gallery", g]) == 0
    plain = str(tmp_path / "plain.sqlite")
    assert enroll.main(["add", "Cy", "--images", str(photos), "--gallery", plain]) == 0
    assert "is not encrypted" in capsys.readouterr().err


def test_runtime_reads_an_encrypted_gallery_with_the_configured_key(tmp_path, key_file):
    from edge.app.run import GalleryView

    path = tmp_path / "g.sqlite"
    with Gallery.open(path, key=load_key(key_file)) as g:
        g.add_identity("Ann", [Template(np.ones(DIM), 0.0)])
    view = GalleryView(path, load_key(key_file))
    assert view.identities == 1 and view().names == ["Ann"]
    with pytest.raises(GalleryError, match="templates are encrypted"):
        GalleryView(path)


def test_raw_32_byte_key_files_are_keys_too(tmp_path):
    path = tmp_path / "raw.key"
    path.write_bytes(os.urandom(KEY_BYTES))
    path.chmod(0o600)
    assert load_key(path) == path.read_bytes()


def test_a_swapped_name_or_an_edited_yaw_fails_authentication(tmp_path, key_file):
    """The plain columns matching trusts are bound too: a person's name (who is recognised) and a
    template's yaw (which threshold applies)."""
    key = load_key(key_file)
    path = _sealed(tmp_path / "g.sqlite", key, "Alice", "Mallory")
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("UPDATE identities SET name = 'tmp' WHERE name = 'Alice'")
        conn.execute("UPDATE identities SET name = 'Alice' WHERE name = 'Mallory'")
        conn.execute("UPDATE identities SET name = 'Mallory' WHERE name = 'tmp'")
    conn.close()
    with Gallery.open(path, key=key) as g:
        with pytest.raises(GalleryError, match="fails authentication"):
            g.templates()
        assert not g.integrity_check().ok
    conn = sqlite3.connect(path)
    with conn:  # names back as they were: the gallery opens again ...
        conn.execute("UPDATE identities SET name = 'tmp' WHERE name = 'Alice'")
        conn.execute("UPDATE identities SET name = 'Alice' WHERE name = 'Mallory'")
        conn.execute("UPDATE identities SET name = 'Mallory' WHERE name = 'tmp'")
    conn.close()
    with Gallery.open(path, key=key) as g:
        assert g.templates().names == ["Alice"] * 3 + ["Mallory"] * 3
    conn = sqlite3.connect(path)
    with conn:  # ... until one yaw is edited
        conn.execute("UPDATE templates SET yaw_deg = 80.0 WHERE id = 1")
    conn.close()
    with Gallery.open(path, key=key) as g, pytest.raises(GalleryError, match="template 1 of 'Alice'"):
        g.templates()


def test_a_gallery_encrypted_by_another_connection_refuses_plain_writes(tmp_path, key_file):
    path = tmp_path / "g.sqlite"
    plain = Gallery.open(path)  # empty, plain, still open
    with Gallery.open(path, key=load_key(key_file)) as g:  # an empty version-2 gallery becomes encrypted
        assert g.encrypted
    with pytest.raises(GalleryError, match="encrypted since it was opened"):
        plain.add_identity("Eve", templates(5))
    plain.close()
    with Gallery.open(path, key=load_key(key_file)) as g:
        assert g.list() == [] and g.integrity_check().ok
