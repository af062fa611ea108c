"""Ingest: idempotent by content, every bad file listed with its reason, nothing else lost."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import sqlalchemy as sa
from PIL import Image

from images import blob, png_bytes, write_bad_files
from plankton_db.ingest import ingest_paths
from plankton_db.store import ContentStore, sha256_bytes


def _count(db, sql: str) -> int:
    with db.engine.connect() as conn:
        return conn.execute(sa.text(sql)).scalar_one()


def test_ingest_twice_adds_nothing_the_second_time(db, image_folder: Path) -> None:
    first = ingest_paths(db.Session, db.settings, [image_folder], labels_from_folders=True, sample="s1")
    assert (first.seen, first.added, first.already_present, first.labels_added) == (30, 30, 0, 30)
    assert first.rejected == []
    second = ingest_paths(db.Session, db.settings, [image_folder], labels_from_folders=True, sample="s1")
    assert (second.added, second.already_present, second.labels_added) == (0, 30, 0)
    assert _count(db, "SELECT count(*) FROM images") == 30
    assert _count(db, "SELECT count(*) FROM annotations") == 30
    assert _count(db, "SELECT count(DISTINCT taxon) FROM current_labels WHERE status = 'validated'") == 5
    assert _count(db, "SELECT count(*) FROM images WHERE sample = 's1'") == 30


def test_store_keeps_images_after_source_is_deleted(db, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    data = png_bytes(blob(seed=3))
    (src / "a.png").write_bytes(data)
    (src / "copy_of_a.png").write_bytes(data)  # identical content is stored once
    summary = ingest_paths(db.Session, db.settings, [src])
    assert (summary.added, summary.already_present) == (1, 1)
    shutil.rmtree(src)
    store = ContentStore(db.settings.store)
    with db.engine.connect() as conn:
        sha, n_bytes, path = conn.execute(sa.text("SELECT sha256, n_bytes, original_path FROM images")).one()
    assert sha == sha256_bytes(data) and n_bytes == len(data)
    assert store.read(sha) == data
    assert path.endswith("/src/a.png")
    assert len([p for p in db.settings.store.rglob("*") if p.is_file()]) == 1


def test_bad_files_are_rejected_with_reasons_and_good_ones_kept(db, tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    expected = write_bad_files(folder)
    for i in range(3):
        Image.fromarray(np.full((20, 25), 40 * i + 50, np.uint8)).save(folder / f"good_{i}.png")
    (folder / "README.txt").write_text("not an image suffix: ignored, not rejected")
    summary = ingest_paths(db.Session, db.settings, [folder, tmp_path / "missing-dir"])
    reasons = {Path(r.path).name: r.reason for r in summary.rejected}
    assert set(reasons) == set(expected) | {"missing-dir"}
    for name, fragment in expected.items():
        assert fragment in reasons[name]
    assert reasons["missing-dir"] == "no such file or directory"
    assert summary.added == 3
    assert summary.ignored == 2  # README.txt and picture.gif
    assert _count(db, "SELECT count(*) FROM images") == 3


def test_greyscale_16_bit_and_every_format(db, tmp_path: Path) -> None:
    folder = tmp_path / "formats"
    folder.mkdir()
    arr16 = (np.arange(600, dtype=np.uint16).reshape(20, 30) * 50).astype(np.uint16)
    Image.fromarray(arr16).save(folder / "sixteen.tif")
    Image.fromarray(arr16).save(folder / "sixteen.png")
    blob(seed=1).convert("L").save(folder / "grey.png")
    blob(seed=2).save(folder / "colour.jpg")
    blob(seed=4).save(folder / "colour.bmp")
    blob(seed=5).save(folder / "upper.JPEG")
    summary = ingest_paths(db.Session, db.settings, [folder])
    assert summary.rejected == [] and summary.added == 6
    with db.engine.connect() as conn:
        rows = dict(conn.execute(sa.text("SELECT original_name, format || ':' || mode FROM images")).all())
    assert rows["sixteen.tif"].startswith("TIFF:I;16")
    assert rows["sixteen.png"].startswith("PNG:I")
    assert rows["grey.png"] == "PNG:L"
    assert rows["colour.jpg"] == "JPEG:RGB" and rows["colour.bmp"] == "BMP:RGB"


def test_same_bytes_in_two_class_folders_keeps_both_decisions(db, tmp_path: Path) -> None:
    data = png_bytes(blob(seed=9))
    for cls in ("Calanus", "Copepod"):
        (tmp_path / "set" / cls).mkdir(parents=True)
        (tmp_path / "set" / cls / "x.png").write_bytes(data)
    summary = ingest_paths(db.Session, db.settings, [tmp_path / "set"], labels_from_folders=True)
    assert summary.added == 1 and summary.labels_added == 2
    assert _count(db, "SELECT count(*) FROM annotations") == 2
    assert _count(db, "SELECT count(*) FROM image_labels") == 1
