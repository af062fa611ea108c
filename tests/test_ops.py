"""`plankton db check`, `plankton backup` and `plankton restore` against a real server and a real store."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from conftest import drop_database, new_database
from images import blob, png_bytes
from integrity import fingerprint, store_digests
from plankton_db import labels
from plankton_db.cli import app
from plankton_db.config import Settings
from plankton_db.db import connect
from plankton_db.embed import write_embeddings
from plankton_db.ingest import ingest_paths
from plankton_db.models import EmbeddingModel
from plankton_db.store import ContentStore, sha256_bytes
from plankton_db.users import add_user, create_token

runner = CliRunner()


def plankton(env: dict[str, str], *args: str):
    return runner.invoke(app, list(args), env=env, catch_exceptions=False)


def error_line(result) -> str:
    """The last line on stderr (a progress bar may come before it)."""
    return result.stderr.strip().splitlines()[-1]


def two_classes(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir())[:2]


def test_check_finds_every_kind_of_difference_and_fixes_only_orphans(db, cli_env, image_folder, tmp_path) -> None:
    ingest_paths(db.Session, db.settings, two_classes(image_folder), labels_from_folders=True)
    r = plankton(cli_env, "db", "check")
    assert r.exit_code == 0, r.output
    assert r.stdout.strip() == (f"12 rows, 12 files in {db.settings.store}: 0 missing, 0 corrupt, 0 orphan, 0 stray; "
                                "12 hashes verified")
    store = ContentStore(db.settings.store)
    with db.engine.connect() as c:
        rows = c.execute(sa.text("SELECT id, sha256 FROM images ORDER BY id")).all()
    (gone_id, gone), (flip_id, flip), (cut_id, cut) = rows[0], rows[1], rows[2]
    store.path_for(gone).unlink()
    data = bytearray(store.path_for(flip).read_bytes())
    data[-1] ^= 0xFF  # same size, other bytes: only re-hashing finds it
    store.path_for(flip).write_bytes(bytes(data))
    cut_size = store.path_for(cut).stat().st_size
    store.path_for(cut).write_bytes(store.path_for(cut).read_bytes()[:-10])
    orphan = store.put(png_bytes(blob(seed=99)))
    (store.path_for(orphan).parent / ".incoming-crashed").write_bytes(b"half a file")
    (db.settings.store / "notes.txt").write_text("not an image")
    orphan_rel = f"{orphan[:2]}/{orphan[2:4]}/{orphan}"
    stray_rel = f"{orphan[:2]}/{orphan[2:4]}/.incoming-crashed"

    r = plankton(cli_env, "db", "check", "--json")
    assert r.exit_code == 1
    report = json.loads(r.stdout)
    assert report["ok"] is False and (report["rows"], report["files"], report["verified"]) == (12, 14, 11)
    assert report["missing"] == [{"image_id": gone_id, "sha256": gone, "reason": "file missing from the store"}]
    assert sorted((p["image_id"], p["reason"]) for p in report["corrupt"]) == sorted([
        (flip_id, f"content hashes to {sha256_bytes(bytes(data))}"),
        (cut_id, f"size {cut_size - 10} bytes, the row says {cut_size}")])
    assert report["orphans"] == [orphan_rel]
    assert sorted(report["strays"]) == sorted([stray_rel, "notes.txt"])

    quick = json.loads(plankton(cli_env, "db", "check", "--quick", "--json").stdout)
    assert [p["image_id"] for p in quick["corrupt"]] == [cut_id] and quick["verified"] == 0  # sizes only

    kept = plankton(cli_env, "db", "check", "--fix-orphans", "--json")
    assert kept.exit_code == 1 and json.loads(kept.stdout)["removed"] == []
    assert sorted(json.loads(kept.stdout)["kept_recent"]) == sorted([orphan_rel, stray_rel, "notes.txt"])
    r = plankton(cli_env, "db", "check", "--fix-orphans", "--grace", "0")
    assert r.exit_code == 1  # the missing and corrupt files are reported, never "fixed" by deleting rows
    assert "0 orphan, 0 stray" not in r.stdout and "; 3 removed" in r.stdout
    assert f"missing image {gone_id} ({gone}): file missing from the store" in r.stderr
    assert not store.path_for(orphan).exists() and not (db.settings.store / "notes.txt").exists()
    after = json.loads(plankton(cli_env, "db", "check", "--json").stdout)
    assert (after["orphans"], after["strays"], len(after["missing"]), len(after["corrupt"])) == ([], [], 1, 2)


def test_a_fine_tuned_models_checkpoint_is_not_an_orphan(db, cli_env) -> None:
    # plankton train stores the checkpoint in the content store; db check must never offer to delete it.
    store = ContentStore(db.settings.store)
    sha = store.put(b"a torch.save()d checkpoint")
    with db.Session.begin() as s:
        s.execute(sa.text("INSERT INTO embedding_models (name, arch, weights_sha256, dim, preprocess, params) "
                          "VALUES ('tuned', 'test', :sha, 8, '{}', CAST(:params AS jsonb))"),
                  {"sha": sha, "params": json.dumps({"checkpoint_sha256": sha})})
    old = time.time() - 7200
    os.utime(store.path_for(sha), (old, old))
    report = json.loads(plankton(cli_env, "db", "check", "--fix-orphans", "--grace", "0", "--json").stdout)
    assert (report["orphans"], report["removed"]) == ([], [])
    assert store.path_for(sha).exists()


def test_fix_orphans_keeps_a_file_an_ingest_just_reused(db, tmp_path) -> None:
    # An old orphan that an ingest stores again is touched, so the grace period starts over for it.
    from plankton_db.check import check_store

    data = png_bytes(blob(seed=5))
    store = ContentStore(db.settings.store)
    sha = store.put(data)
    old = time.time() - 7200
    os.utime(store.path_for(sha), (old, old))
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "again.png").write_bytes(data)
    store.put(data)  # what prepare() does before the row is committed
    with db.Session() as s:
        report = check_store(s, store, fix_orphans=True, grace_seconds=3600)
    assert report.orphans == [f"{sha[:2]}/{sha[2:4]}/{sha}"] and report.removed == []
    assert store.path_for(sha).read_bytes() == data


def _fill(db, folder: Path) -> None:
    """Images, folder labels, a relabel and an undo, a model with vectors, users and a token."""
    ingest_paths(db.Session, db.settings, two_classes(folder), labels_from_folders=True, sample="cruise-1")
    with db.Session.begin() as s:
        ids = list(s.execute(sa.text("SELECT id FROM images ORDER BY id")).scalars())
        labels.label_images(s, ids[:3], "Oithona", annotator="anna", create_taxon=True)
        labels.label_images(s, ids[3:5], "Oithona", annotator="anna")
        labels.undo_last(s, "anna")
        model = EmbeddingModel(name="m", arch="test", weights_sha256="0" * 64, dim=8, preprocess={})
        s.add(model)
        s.flush()
        write_embeddings(s, model.id, ids, np.random.default_rng(0).random((len(ids), 8), np.float32))
        add_user(s, "anna", "annotator", "anna-password-1")
        create_token(s, "anna")


def test_backup_and_restore_round_trip(db, cli_env, admin_url, image_folder, tmp_path) -> None:
    _fill(db, image_folder)
    before = fingerprint(db.engine, db.settings.store)
    r = plankton(cli_env, "backup", str(tmp_path / "bk"))
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith(f"backup {tmp_path / 'bk'}: schema ") and "12 images, 17 annotations, 12 embeddings" \
        in r.stdout
    manifest = json.loads((tmp_path / "bk" / "manifest.json").read_text())
    assert manifest["counts"] == {"images": 12, "annotations": 17, "taxa": 3, "embeddings": 12, "users": 1}
    assert manifest["files"] == 12 and manifest["missing"] == [] and manifest["corrupt"] == []
    assert store_digests(tmp_path / "bk" / "store") == before["store"]

    # Into a new, completely empty database (no schema, no extension) and an empty store.
    name, url = new_database(admin_url, template=None)
    try:
        env = {"PLANKTON_DATABASE_URL": url, "PLANKTON_HOME": str(tmp_path / "home2")}
        r = plankton(env, "restore", str(tmp_path / "bk"))
        assert r.exit_code == 0, r.output
        assert "restored" in r.stdout and "12 images, 17 annotations, 12 embeddings, 12 files checked" in r.stdout
        restored = connect(Settings(home=tmp_path / "home2", database_url=url))
        assert fingerprint(restored.engine, restored.settings.store) == before
        assert plankton(env, "db", "check").exit_code == 0
        with restored.Session.begin() as s:  # the triggers came back too: labels still follow annotations
            image_id = s.execute(sa.text("SELECT min(id) FROM images")).scalar_one()
            labels.label_images(s, [image_id], "Oithona", annotator="bob")
            assert s.execute(sa.text("SELECT annotator FROM current_labels WHERE image_id = :i"),
                             {"i": image_id}).scalar_one() == "bob"
        with pytest.raises(sa.exc.DBAPIError, match="append-only|not allowed|forbid"):
            with restored.engine.begin() as c:
                c.execute(sa.text("DELETE FROM annotations"))
        restored.dispose()
        r = plankton(env, "restore", str(tmp_path / "bk"))
        assert r.exit_code == 1
        assert error_line(r) == ("error: the database already holds 12 images; restore into an empty database, "
                                    "or pass --replace to overwrite it")
        r = plankton(env, "restore", str(tmp_path / "bk"), "--replace")
        assert r.exit_code == 0, r.output
        again = connect(Settings(home=tmp_path / "home2", database_url=url))
        assert fingerprint(again.engine, again.settings.store) == before  # bob's label is gone with --replace
        again.dispose()
    finally:
        drop_database(admin_url, name)


def test_damaged_or_partial_backups_are_refused_and_change_nothing(db, cli_env, admin_url, image_folder,
                                                                    tmp_path) -> None:
    ingest_paths(db.Session, db.settings, two_classes(image_folder)[:1])
    assert plankton(cli_env, "backup", str(tmp_path / "bk")).exit_code == 0
    r = plankton(cli_env, "backup", str(tmp_path / "bk"))
    assert r.exit_code == 1
    assert error_line(r) == f"error: {tmp_path / 'bk'} already exists and is not an empty folder; choose a new one"
    name, url = new_database(admin_url)
    try:
        env = {"PLANKTON_DATABASE_URL": url, "PLANKTON_HOME": str(tmp_path / "home2")}
        victim = next(p for p in sorted((tmp_path / "bk" / "store").rglob("*")) if p.is_file())
        victim.write_bytes(victim.read_bytes()[::-1])
        r = plankton(env, "restore", str(tmp_path / "bk"))
        assert r.exit_code == 1
        assert error_line(r) == (f"error: the backup is damaged: 1 files do not match their sha256 (first: "
                                    f"{victim.name}); the database was not changed")
        (tmp_path / "bk" / "database.dump").write_bytes(b"PGDMP truncated")
        r = plankton(env, "restore", str(tmp_path / "bk"))
        assert r.exit_code == 1 and error_line(r) == (
            f"error: {tmp_path / 'bk' / 'database.dump'} is missing or damaged (its sha256 differs from the manifest)")
        (tmp_path / "bk" / "manifest.json").unlink()
        r = plankton(env, "restore", str(tmp_path / "bk"))
        assert r.exit_code == 1 and error_line(r) == (
            f"error: {tmp_path / 'bk'} is not a plankton-db backup (no manifest.json; an interrupted backup has none)")
        check = connect(Settings(home=tmp_path / "home2", database_url=url))
        with check.engine.connect() as c:
            assert c.execute(sa.text("SELECT count(*) FROM images")).scalar_one() == 0
        assert not list((tmp_path / "home2" / "store").rglob(victim.name))  # the bad copy never landed
        check.dispose()
    finally:
        drop_database(admin_url, name)
