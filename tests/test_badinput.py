"""The bad-input matrix: every case gets an exact outcome, and nothing already stored is lost or changed.

Cases already proven elsewhere are not repeated here (docs/RELIABILITY.md lists them with their tests):
corrupt, truncated, empty, text-as-.png and the 20000x20000 bomb are in test_imageio.py and test_ingest.py,
EcoTaxa header and row errors in test_ecotaxa.py, taxonomy CSV errors in test_taxonomy.py, most API
parameters in test_web_api.py, worker arguments in test_worker.py.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from PIL import Image
from typer.testing import CliRunner

from images import blob, png_bytes, write_bad_files
from integrity import fingerprint
from plankton_db.cli import app
from plankton_db.ingest import ingest_paths
from web_support import WebEnv

runner = CliRunner()
NOT_REGULAR = "cannot read: not a regular file (a FIFO, device or socket)"


@pytest.fixture
def stocked(db, image_folder):
    """A database that already holds 12 labelled images: what every bad input must leave alone."""
    folders = sorted(p for p in image_folder.iterdir() if p.is_dir())[:2]
    ingest_paths(db.Session, db.settings, folders, labels_from_folders=True)
    return db


def unchanged(db) -> dict:
    return fingerprint(db.engine, db.settings.store)


def frames(fmt: str) -> bytes:
    buf = io.BytesIO()
    first, *rest = [blob(seed=i) for i in range(3)]
    first.save(buf, fmt, save_all=True, append_images=rest)
    return buf.getvalue()


def test_bad_files_are_each_rejected_with_their_reason(stocked, tmp_path) -> None:
    before = unchanged(stocked)
    d = tmp_path / "bad"
    prefixes = write_bad_files(d)  # empty, truncated, corrupt, text as .png, the bomb, GIF bytes as .png
    expected = dict(prefixes)
    (d / "animated.png").write_bytes(frames("PNG"))
    (d / "pages.tif").write_bytes(frames("TIFF"))
    os.symlink(d / "loop_b.png", d / "loop_a.png")
    os.symlink(d / "loop_a.png", d / "loop_b.png")
    os.symlink(d / "nowhere.png", d / "dangling.png")
    os.mkfifo(d / "fifo.png")  # reading it would block for ever
    os.symlink("/dev/zero", d / "zero.png")  # reading it would never end
    (d / "animated.gif").write_bytes(frames("GIF"))
    expected.update({
        "animated.png": "multi-frame PNG (3 frames); store one frame per file",
        "pages.tif": "multi-frame TIFF (3 frames); store one frame per file",
        "loop_a.png": "cannot read: Too many levels of symbolic links",
        "loop_b.png": "cannot read: Too many levels of symbolic links",
        "dangling.png": "cannot read: No such file or directory",
        "fifo.png": NOT_REGULAR,
        "zero.png": NOT_REGULAR,
    })
    summary = ingest_paths(stocked.Session, stocked.settings, [d, d / "animated.gif", d / "loop_a.png"])
    got: dict[str, list[str]] = {}
    for r in summary.rejected:
        got.setdefault(Path(r.path).name, []).append(r.reason)
    exact = {n: r for n, r in expected.items() if n not in prefixes}
    exact["animated.gif"] = "unsupported format GIF (accepted: JPEG, PNG, TIFF, BMP)"
    for name, reason in exact.items():
        assert got[name][0] == reason, name
    for name, prefix in prefixes.items():  # the shared helper gives fragments; Pillow's own wording follows
        assert got[name][0].startswith(prefix), got[name]
    assert got["loop_a.png"] == ["cannot read: Too many levels of symbolic links"] * 2  # in the folder and by name
    assert (summary.added, summary.ignored, len(summary.rejected)) == (0, 2, len(expected) + 2)
    assert unchanged(stocked) == before


def test_unusual_but_valid_files_are_stored_exactly(stocked, tmp_path) -> None:
    with stocked.engine.connect() as c:
        old = c.execute(sa.text("SELECT md5(string_agg(i::text, '|' ORDER BY id)) FROM images i")).scalar_one()
    d = tmp_path / "odd"
    (d / "Cop\udce9pode").mkdir(parents=True)  # a Latin-1 folder name on a UTF-8 system
    arr = np.zeros((20, 30), np.uint16)
    arr[5:15, 10:20] = 4000
    Image.fromarray(arr).save(d / "sixteen.tif")
    blob(seed=7).convert("CMYK").save(d / "cmyk.jpg", "JPEG")
    (d / "Cop\udce9pode" / "caf\udce9.png").write_bytes(png_bytes(blob(seed=8)))
    locked = d / "locked.png"
    locked.write_bytes(png_bytes(blob(seed=9)))
    locked.chmod(0)
    summary = ingest_paths(stocked.Session, stocked.settings, [d], labels_from_folders=True)
    with stocked.engine.connect() as c:
        rows = dict(c.execute(sa.text(
            "SELECT original_name, format || ':' || mode FROM images WHERE id > 12")).all())
        labels = dict(c.execute(sa.text(
            "SELECT i.original_name, l.taxon FROM images i JOIN current_labels l ON l.image_id = i.id "
            "WHERE i.id > 12")).all())
        assert c.execute(sa.text("SELECT md5(string_agg(i::text, '|' ORDER BY id)) FROM images i "
                                 "WHERE id <= 12")).scalar_one() == old
    assert rows["sixteen.tif"] == "TIFF:I;16" and rows["cmyk.jpg"] == "JPEG:CMYK"
    assert rows["caf\\xe9.png"] == "PNG:RGB" and labels["caf\\xe9.png"] == "Cop\\xe9pode"
    if os.geteuid() == 0:
        # Root ignores file permissions, so chmod 000 cannot make a file unreadable to it (CI runs as root).
        assert rows["locked.png"] == "PNG:RGB" and summary.rejected == []
    else:
        assert "locked.png" not in rows
        assert [(Path(r.path).name, r.reason) for r in summary.rejected] == [("locked.png",
                                                                              "cannot read: Permission denied")]


def _tsv(folder: Path, rows: list[list[str]], encoding: str = "utf-8") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(3):
        (folder / f"a{i}.png").write_bytes(png_bytes(blob(seed=40 + i)))
    buf = io.StringIO()
    csv.writer(buf, delimiter="\t", lineterminator="\n").writerows(rows)
    (folder / "ecotaxa_x.tsv").write_bytes(buf.getvalue().encode(encoding))
    return folder / "ecotaxa_x.tsv"


HEADER = ["img_file_name", "object_id", "object_lat", "object_annotation_category", "object_annotation_status"]
TYPES = ["[t]", "[t]", "[f]", "[t]", "[t]"]


@pytest.mark.parametrize(("rows", "encoding", "code", "stdout", "last_err"), [
    pytest.param([HEADER, TYPES, ["a0.png", "o1", "north", "", ""]], "utf-8", 1,
                 "1 rows in 1 table(s): 0 images added, 0 already present, 0 annotations added, 1 rows with problems",
                 "ecotaxa_x.tsv, line 3: object_lat: could not convert string to float: 'north'", id="wrong-type"),
    pytest.param([["object_id"], ["[t]"], ["o1"]], "utf-8", 1, "",
                 "error: ecotaxa_x.tsv: the header has no img_file_name column", id="missing-column"),
    pytest.param([HEADER, TYPES, ["a0.png", "o1", "", "", ""]], "utf-16", 1, "",
                 "error: ecotaxa_x.tsv: the header has no img_file_name column", id="utf-16-not-read-as-latin-1"),
])
def test_refused_tables_store_nothing(stocked, cli_env, tmp_path, rows, encoding, code, stdout, last_err) -> None:
    before = unchanged(stocked)
    r = runner.invoke(app, ["import-ecotaxa", str(_tsv(tmp_path / "t", rows, encoding))], env=cli_env)
    assert r.exit_code == code and r.stdout.strip() == stdout
    assert r.stderr.strip().splitlines()[-1] == last_err
    assert unchanged(stocked) == before


def test_accepted_tables_unknown_taxa_duplicate_ids_latin_1(stocked, cli_env, tmp_path) -> None:
    before = unchanged(stocked)["tables"]["annotations"]
    rows = [HEADER, TYPES, ["a0.png", "o1", "", "Copépode nouveau", "validated"],
            ["a1.png", "o1", "", "", ""],  # the same object id again: EcoTaxa allows several images per object
            ["a0.png", "o2", "", "", ""]]  # the same file again: content-addressed, so already present
    r = runner.invoke(app, ["import-ecotaxa", str(_tsv(tmp_path / "t", rows, "latin-1"))], env=cli_env)
    assert r.exit_code == 0, r.output
    assert r.stdout.strip() == ("3 rows in 1 table(s): 2 images added, 1 already present, 1 annotations added, "
                                "0 rows with problems")
    with stocked.engine.connect() as c:
        got = c.execute(sa.text("SELECT i.original_name, i.metadata->>'object_id', l.taxon FROM images i "
                                "LEFT JOIN current_labels l ON l.image_id = i.id WHERE i.id > 12 ORDER BY i.id")).all()
        old = c.execute(sa.text("SELECT count(*), md5(string_agg(a::text, '|' ORDER BY a::text)) FROM annotations a "
                                "WHERE id <= 12")).one()
    # An unknown taxon in a table is created (EcoTaxa's categories are open); Latin-1 is read as Latin-1.
    assert got == [("a0.png", "o1", "Copépode nouveau"), ("a1.png", "o1", None)]
    assert tuple(old) == before
    bad = tmp_path / "tax.csv"
    bad.write_bytes("name,parent\nCopépode,\n".encode("latin-1"))
    r = runner.invoke(app, ["taxonomy", "import", str(bad)], env=cli_env)
    assert r.exit_code == 1 and r.stderr.strip() == f"error: {bad}: not UTF-8 text"


@pytest.mark.parametrize(("args", "code", "message"), [
    (["search", "--id", "999999"], 1, "error: no embeddings yet: run `plankton embed` first"),
    (["eval"], 1, "error: no embeddings yet: run `plankton embed` first"),
    (["suggest"], 1, "error: no embeddings yet: run `plankton embed` first"),
    (["simulate-labeling"], 1, "error: no embeddings yet: run `plankton embed` first"),
    (["taxonomy", "move", "Nope", "Other"], 1, "error: unknown taxon 'Nope'"),
    (["token", "create", "nobody"], 1, "error: no user named 'nobody'"),
    (["user", "add", "bad name!", "--password-stdin"], 1, "error: user names are 1-64 letters, digits or _ . @ -"),
    (["restore", "/nonexistent-backup"], 1,
     "error: /nonexistent-backup is not a plankton-db backup (no manifest.json; an interrupted backup has none)"),
    (["db", "check", "--grace", "-1"], 2, None),
    (["search", "--id", "abc"], 2, None),
])
def test_cli_on_an_empty_database(cli_env, db, args, code, message) -> None:
    before = unchanged(db)
    r = runner.invoke(app, args, env=cli_env)
    assert r.exit_code == code
    if message:
        assert r.stderr.strip().splitlines()[-1] == message and "Traceback" not in r.output
    assert unchanged(db) == before


def test_cli_unknown_ids_and_models(stocked, cli_env) -> None:
    from seed import seed

    with stocked.Session.begin() as s:
        seed(s, np.random.default_rng(0).random((4, 8), np.float32))
    before = unchanged(stocked)
    for args, message in [
        (["search", "--id", "999999"], "error: no image with id 999999"),
        (["search", "--id", "1", "--model", "nope"], "error: unknown model 'nope' (registered: test-model)"),
        (["search", "--id", "1", "-k", "100000"], "error: k must be between 1 and 10000, got 100000"),
        (["index", "build", "--kind", "magic"], "error: unknown index kind 'magic'; choose one of: hnsw, ivfflat"),
        (["hash", "build", "--bits", "7"], "error: bits must be a multiple of 8 between 8 and 4096, got 7"),
    ]:
        r = runner.invoke(app, args, env=cli_env)
        assert (r.exit_code, r.stderr.strip().splitlines()[-1]) == (1, message), args
    assert unchanged(stocked) == before


@pytest.mark.parametrize(("method", "path", "kw", "status", "message"), [
    ("POST", "/api/annotations", {"data": '{"image_ids": [1,', "content_type": "application/json"}, 400,
     "the request body must be a JSON object (Content-Type: application/json)"),
    ("POST", "/api/annotations", {"data": {"image_ids": "1", "taxon": "copepod"}}, 400,
     "the request body must be a JSON object (Content-Type: application/json)"),
    ("POST", "/api/suggestions/accept", {"data": "[1, 2]", "content_type": "application/json"}, 400,
     "the request body must be a JSON object (Content-Type: application/json)"),
    ("POST", "/api/search", {"json": {"file": "x.png"}}, 400, "send the image as a multipart form field named 'file'"),
    ("POST", "/api/annotations", {"data": b'{"taxon": "' + b"x" * (21 << 20) + b'"}',
                                  "content_type": "application/json"}, 413, "upload too large: the limit is 20 MiB"),
    ("POST", "/api/annotations", {"json": {"image_ids": [0], "taxon": "copepod"}}, 400,
     "image_ids must be positive integers"),
    ("POST", "/api/annotations", {"json": {"image_ids": [2**63], "taxon": "copepod"}}, 404,
     "no image with id 9223372036854775808"),
    ("POST", "/api/annotations", {"json": {"image_ids": list(range(1, 5002)), "taxon": "copepod"}}, 400,
     "at most 5000 images per action, got 5001"),
    ("POST", "/api/annotations", {"json": {"image_ids": [1], "taxon": "cope\x00pod"}}, 400,
     "a value in the request was refused by the database: PostgreSQL text fields cannot contain NUL (0x00) bytes"),
    ("GET", "/api/images/0", {}, 404, "no image with id 0"),
    ("GET", "/api/images/99999999999999999999", {}, 404, "no image with id 99999999999999999999"),
    ("GET", "/api/images/99999999999999999999/similar", {}, 404, "no image with id 99999999999999999999"),
    ("GET", "/api/images?ref=99999999999999999999&sort=similarity", {}, 400,
     "ref must be between 1 and 4611686018427387904, got 99999999999999999999"),
    ("GET", "/api/images?taxon=cope%00pod", {}, 400, "taxon must not contain NUL characters"),
    ("GET", "/api/images?offset=1e3", {}, 400, "offset must be an integer, got '1e3'"),
    ("GET", "/api/images/1/similar?k=99999", {}, 400, "k must be between 1 and 500, got 99999"),
    ("DELETE", "/api/annotations", {}, 405, "The method is not allowed for the requested URL."),
])
def test_http_bad_requests(web: WebEnv, method, path, kw, status, message) -> None:
    client, csrf = web.login("anna")
    engine = web.app.extensions["plankton"].db.engine
    before = fingerprint(engine, web.seeded.store)
    resp = client.open(path, method=method, headers={"X-CSRF-Token": csrf}, **kw)
    assert resp.status_code == status
    assert resp.get_json() == {"error": message}
    assert fingerprint(engine, web.seeded.store) == before
