"""EcoTaxa TSV import and export against a real database: a realistic table, malformed rows, and a round trip."""

from __future__ import annotations

import csv
import io
import zipfile
from datetime import datetime, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st
from typer.testing import CliRunner

from conftest import drop_database, new_database
from images import blob, png_bytes
from plankton_db.cli import app
from plankton_db.config import Settings
from plankton_db.db import connect
from plankton_db.ecotaxa import parse_tsv
from plankton_db.ecotaxa_import import import_ecotaxa
from plankton_db.errors import InvalidArgument
from plankton_db.exports import export_csv, export_dwc, export_ecotaxa
from plankton_db.store import ContentStore

runner = CliRunner()

# Built from EcoTaxa's "How to prepare data" page and the tables in ecotaxa_back's QA data: level-prefixed
# columns, a [t]/[f] type row, annotation columns, a name disambiguated by its parent ("other<living"),
# a sub-folder image, DDD°MM SSS latitude, a time with its leading zero dropped, and a [t] column of digits.
HEADER = ["img_file_name", "img_rank", "object_id", "object_lat", "object_lon", "object_date", "object_time",
          "object_depth_min", "object_depth_max", "object_annotation_status", "object_annotation_person_name",
          "object_annotation_person_email", "object_annotation_date", "object_annotation_time",
          "object_annotation_category", "object_annotation_hierarchy", "object_area", "object_esd", "object_link",
          "sample_id", "sample_ship", "sample_volconc", "process_id", "process_software", "acq_id",
          "acq_instrument", "acq_cell_type", "complement_info"]
TYPES = ["[t]", "[f]", "[t]", "[f]", "[f]", "[f]", "[f]", "[f]", "[f]", "[t]", "[t]", "[t]", "[t]", "[t]", "[t]",
         "[t]", "[f]", "[f]", "[t]", "[t]", "[t]", "[t]", "[t]", "[t]", "[t]", "[t]", "[t]", "[t]"]
GOOD = [
    ["m106_409.png", "0", "m106_409", "18.0", "-24.4166666666667", "20140420", "420", "600.0", "1000.0",
     "validated", "Élise Dupont", "elise@example.org", "20151111", "153100", "Oithona", "living>Copepoda>Oithona",
     "516", "2.5", "", "m106_n1", "meteor", "13.125", "zp_n1", "zooprocess 7.23", "acq_n1", "zooscan", "200-500",
     "internal"],
    ["sub1/m106_821.png", "0", "m106_821", "43°41 30", "7.3", "20140420", "042000", "600.0", "1000.0",
     "predicted", "classifier", "", "20151112", "080910", "other<living", "living>other",
     "1401,5", "", "http://example.org/821", "m106_n1", "meteor", "13.125", "zp_n1", "zooprocess 7.23", "acq_n1",
     "zooscan", "200-500", ""],
    ["m106_822.jpg", "0", "m106_822", "18.0", "-24.4", "20140421", "", "300", "600", "dubious", "Élise Dupont",
     "", "20151113", "", "Copepoda", "living>Copepoda", "733", "", "", "m106_n2", "meteor", "9.75", "zp_n2",
     "zooprocess 7.23", "acq_n2", "zooscan", "200-500", ""],
    ["m106_850.png", "1", "m106_850", "", "", "", "", "", "", "", "", "", "", "", "", "", "1583", "", "", "m106_n2",
     "meteor", "9.75", "zp_n2", "zooprocess 7.23", "acq_n2", "zooscan", "", ""],
]
BAD = {  # line number in the file -> (row, expected message)
    7: (["bad_lat.png", "0", "o7", "95", "0"], "object_lat: 95 is outside -90..90"),
    8: (["missing.png", "0", "o8"], "image 'missing.png' not found next to the TSV"),
    9: (["bad_status.png", "0", "o9", "", "", "", "", "", "", "approved", "", "", "", "", "Oithona"],
        "object_annotation_status 'approved' is not one of predicted, validated, dubious"),
    10: (["bad_date.png", "0", "o10", "", "", "20141340"], "object_date/time: month must be in 1..12"),
    11: (["bad_depth.png", "0", "o11", "", "", "", "", "50", "10"],
         "object_depth_min (50) is greater than object_depth_max (10)"),
    12: (["bad_area.png", "0", "o12"] + [""] * 13 + ["big"], "object_area: could not convert string to float: 'big'"),
    13: (["too_many.png"] + [""] * 30, "31 fields but the header has 28"),
}


def write_table(folder: Path, name: str = "ecotaxa_m106.tsv", bad: bool = True) -> Path:
    """The TSV and its images in `folder`."""
    (folder / "sub1").mkdir(parents=True, exist_ok=True)
    for i, row in enumerate(GOOD):
        fmt = "JPEG" if row[0].endswith(".jpg") else "PNG"
        (folder / row[0]).write_bytes(png_bytes(blob(seed=i + 1), fmt))
    rows = [HEADER, TYPES, *GOOD]
    if bad:
        for i, (row, _) in sorted(BAD.items()):
            if row[0] != "missing.png":
                (folder / row[0]).write_bytes(png_bytes(blob(seed=i + 50)))
            rows.append(row + [""] * max(0, len(HEADER) - len(row)) if len(row) <= len(HEADER) else row)
    buf = io.StringIO()
    csv.writer(buf, delimiter="\t", lineterminator="\n").writerows(rows)
    path = folder / name
    path.write_text(buf.getvalue(), encoding="utf-8")
    return path


def snapshot(db) -> dict[str, dict]:
    """Everything the EcoTaxa format carries, per image sha256."""
    with db.engine.connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT v.sha256, v.sample, v.instrument, v.latitude, v.longitude, v.depth_min, v.depth_max, "
            "v.captured_at, v.metadata, v.taxon, v.status, v.annotator, v.annotated_at, p.path "
            "FROM images_with_labels v LEFT JOIN taxon_paths p ON p.id = v.taxon_id")).mappings().all()
    return {r["sha256"]: {k: v for k, v in r.items() if k != "sha256"} for r in rows}


def test_import_realistic_table_with_malformed_rows(db, tmp_path: Path) -> None:
    path = write_table(tmp_path / "bundle")
    summary = import_ecotaxa(db.Session, db.settings, path)
    assert [(p.line, p.message) for p in summary.problems] == [(line, msg) for line, (_, msg) in sorted(BAD.items())]
    assert str(summary.problems[0]) == "ecotaxa_m106.tsv, line 7: object_lat: 95 is outside -90..90"
    assert (summary.rows, summary.images_added, summary.annotations_added) == (11, 4, 3)
    assert summary.ignored_columns == {"ecotaxa_m106.tsv": ["complement_info"]}
    snap = {r["metadata"]["object_id"]: r for r in snapshot(db).values()}
    first = snap["m106_409"]
    assert first["captured_at"] == datetime(2014, 4, 20, 4, 20, tzinfo=timezone.utc)
    assert (first["sample"], first["instrument"], first["depth_min"], first["depth_max"]) == ("m106_n1", "zooscan",
                                                                                              600.0, 1000.0)
    assert (first["taxon"], first["status"], first["annotator"]) == ("Oithona", "validated", "Élise Dupont")
    assert first["annotated_at"] == datetime(2015, 11, 11, 15, 31, tzinfo=timezone.utc)
    assert first["path"] == "living>Copepoda>Oithona"
    assert first["metadata"]["sample_volconc"] == "13.125" and first["metadata"]["object_area"] == 516.0
    assert "sample_id" not in first["metadata"] and "object_lat" not in first["metadata"]
    second = snap["m106_821"]
    assert second["latitude"] == pytest.approx(43.691666666) and second["metadata"]["object_area"] == 1401.5
    assert (second["taxon"], second["path"], second["status"]) == ("other<living", "living>other<living", "predicted")
    assert snap["m106_822"]["status"] == "dubious" and snap["m106_822"]["captured_at"].hour == 0
    assert snap["m106_850"]["taxon"] is None and snap["m106_850"]["latitude"] is None


def test_reimport_adds_nothing(db, tmp_path: Path) -> None:
    path = write_table(tmp_path / "bundle", bad=False)
    import_ecotaxa(db.Session, db.settings, path)
    again = import_ecotaxa(db.Session, db.settings, path.parent)
    assert (again.images_added, again.already_present, again.annotations_added, again.problems) == (0, 4, 0, [])


def test_export_then_import_into_empty_database_loses_nothing(db, admin_url: str, tmp_path: Path) -> None:
    import_ecotaxa(db.Session, db.settings, write_table(tmp_path / "bundle"))
    out = tmp_path / "export.zip"
    with db.Session() as s:
        summary = export_ecotaxa(s, ContentStore(db.settings.store), out)
    assert summary.images == 4 and summary.warnings == []
    with zipfile.ZipFile(out) as z:
        assert sorted(z.namelist()) == ["ecotaxa_export.tsv", "m106_409.png", "m106_822.jpg", "m106_850.png",
                                        "sub1/m106_821.png"]
        lines = z.read("ecotaxa_export.tsv").decode().splitlines()
    header, types = lines[0].split("\t"), lines[1].split("\t")
    assert header[:2] == ["img_file_name", "object_id"] and set(types) == {"[t]", "[f]"}
    assert types[header.index("object_area")] == "[f]" and types[header.index("sample_volconc")] == "[t]"

    name, url = new_database(admin_url, template=None)  # empty: connect() migrates it
    try:
        other = connect(Settings(home=tmp_path / "other", database_url=url))
        back = import_ecotaxa(other.Session, other.settings, out)
        assert (back.images_added, back.problems, back.ignored_columns) == (4, [], {})
        assert snapshot(other) == snapshot(db)
        other.dispose()
    finally:
        drop_database(admin_url, name)


def test_export_filters_csv_and_darwin_core(db, tmp_path: Path) -> None:
    import_ecotaxa(db.Session, db.settings, write_table(tmp_path / "bundle", bad=False))
    with db.Session() as s:
        assert export_ecotaxa(s, ContentStore(db.settings.store), tmp_path / "v.zip", status="validated").images == 1
        assert export_ecotaxa(s, ContentStore(db.settings.store), tmp_path / "c.zip", taxon="Copepoda").images == 2
        assert export_csv(s, tmp_path / "all.csv").images == 4
        dwc = export_dwc(s, tmp_path / "dwc.csv")
    assert dwc.images == 3  # the unlabelled image is not an occurrence
    rows = {r["catalogNumber"]: r for r in csv.DictReader((tmp_path / "dwc.csv").open(encoding="utf-8"))}
    assert rows["m106_409"]["identificationVerificationStatus"] == "validated"
    assert rows["m106_821"]["identificationVerificationStatus"] == "predicted"
    assert rows["m106_821"]["scientificName"] == "other" and rows["m106_409"]["higherClassification"] == "living | Copepoda"
    assert rows["m106_409"]["eventDate"] == "2014-04-20T04:20:00Z"
    table = list(csv.DictReader((tmp_path / "all.csv").open(encoding="utf-8")))
    assert {r["taxon_path"] for r in table} == {"living>Copepoda>Oithona", "living>other<living", "living>Copepoda", ""}


def test_sample_from_column(db, tmp_path: Path) -> None:
    import_ecotaxa(db.Session, db.settings, write_table(tmp_path / "bundle", bad=False), sample_column="acq_id")
    with db.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT sample, metadata->>'sample_id' FROM images ORDER BY id")).all()
    assert rows[0] == ("acq_n1", "m106_n1")


@pytest.mark.parametrize("text, message", [
    ("", "x.tsv: empty file; expected a header row, a type row and data rows"),
    ("object_id\n[t]\no1\n", "x.tsv: the header has no img_file_name column"),
    ("img_file_name\tobject_id\n[t]\t[x]\n", "x.tsv: line 2 must be the type row ([t] or [f] for each column), found '[x]'"),
    ("img_file_name\tIMG_FILE_NAME\n", "x.tsv: column 'img_file_name' appears more than once in the header"),
])
def test_bad_files_are_refused_with_a_message(text: str, message: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        parse_tsv(text.encode(), "x.tsv")
    assert str(exc.value) == message


def test_ecotaxa_doi_export_without_type_row_is_read() -> None:
    # EcoTaxa's DOI exports have no type row, quote text, and name columns by table (obj_field_, samples_).
    text = ('"object_id"\t"img_file_name"\t"obj_field_area"\t"samples_ship"\t"objid"\n'
            '"o1"\t"images/a.jpg"\t516.0\t"meteor"\t1\n"o2"\t"images/b.jpg"\t9.5\t"meteor"\t2\n')
    table = parse_tsv(text.encode(), "ecotaxa_export.tsv")
    assert not table.had_type_row and table.ignored_columns == ["objid"]
    assert [r.metadata for r in table.records] == [{"object_id": "o1", "object_area": 516.0, "sample_ship": "meteor"},
                                                   {"object_id": "o2", "object_area": 9.5, "sample_ship": "meteor"}]


@hsettings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12), max_size=8),
                max_size=6))
def test_parser_never_crashes_on_arbitrary_rows(rows: list[list[str]]) -> None:
    body = "\n".join("\t".join(r) for r in rows)
    text = "img_file_name\tobject_lat\tobject_date\tobject_area\tobject_annotation_status\n[t]\t[f]\t[t]\t[f]\t[t]\n" + body
    table = parse_tsv(text.encode(), "fuzz.tsv")  # never raises: a bad row is a Problem
    physical_lines = body.count("\n") + body.count("\r") + 1
    assert len(table.records) + len(table.problems) <= physical_lines + 1  # +1: "unreadable from here on"
    assert all(p.line is not None and p.line >= 3 for p in table.problems)


def test_cli_import_and_export(cli_env: dict[str, str], tmp_path: Path) -> None:
    path = write_table(tmp_path / "bundle")
    r = runner.invoke(app, ["import-ecotaxa", str(path)], env=cli_env, catch_exceptions=False)
    assert r.exit_code == 1  # some rows were bad
    assert "11 rows in 1 table(s): 4 images added, 0 already present, 3 annotations added, 7 rows with problems" in r.stdout
    assert "ecotaxa_m106.tsv, line 8: image 'missing.png' not found next to the TSV" in r.stderr
    r = runner.invoke(app, ["export-ecotaxa", str(tmp_path / "out.zip"), "--status", "validated"], env=cli_env)
    assert r.exit_code == 0 and "1 images written to" in r.stdout
    r = runner.invoke(app, ["export-ecotaxa", str(tmp_path / "out.zip"), "--status", "approved"], env=cli_env)
    assert r.exit_code == 1
    assert "error: unknown status 'approved'; choose one of: predicted, validated, dubious" in r.stderr
    r = runner.invoke(app, ["export-dwc", str(tmp_path / "d.csv"), "--taxon", "Nope"], env=cli_env)
    assert r.exit_code == 1 and "error: unknown taxon 'Nope'" in r.stderr
    r = runner.invoke(app, ["import-ecotaxa", str(tmp_path / "nothing-here")], env=cli_env)
    assert r.exit_code == 1 and f"error: {tmp_path / 'nothing-here'}: no such file or directory" in r.stderr
    r = runner.invoke(app, ["import-ecotaxa", str(path), "--sample-from-column", "station"], env=cli_env)
    assert r.exit_code == 1
    assert ("error: --sample-from-column must name an EcoTaxa column such as sample_id, got 'station'"
            in r.stderr)
    r = runner.invoke(app, ["export-ecotaxa", str(tmp_path / "out.tar")], env=cli_env)
    assert r.exit_code == 1 and "the EcoTaxa export is a .zip file" in r.stderr
    r = runner.invoke(app, ["export-csv", str(tmp_path / "o.csv"), "--status", "maybe"], env=cli_env)
    assert r.exit_code == 1 and "error: unknown status 'maybe'; choose one of: predicted, validated, dubious" in r.stderr
    with zipfile.ZipFile(tmp_path / "empty.zip", "w") as z:
        z.writestr("notes.txt", "no table here")
    r = runner.invoke(app, ["import-ecotaxa", str(tmp_path / "empty.zip")], env=cli_env)
    assert r.exit_code == 1
    assert (f"error: {tmp_path / 'empty.zip'}: no EcoTaxa table found (files named ecotaxa*.tsv or ecotaxa*.txt)"
            in r.stderr)
    (tmp_path / "photo.jpg").write_bytes(b"x")
    r = runner.invoke(app, ["import-ecotaxa", str(tmp_path / "photo.jpg")], env=cli_env)
    assert r.exit_code == 1
    assert f"error: {tmp_path / 'photo.jpg'}: expected an EcoTaxa .tsv file, a folder or a .zip" in r.stderr
