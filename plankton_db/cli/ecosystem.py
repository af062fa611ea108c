"""Commands that connect plankton-db to the plankton ecosystem: EcoTaxa import/export, CSV, Darwin Core, taxonomy."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from plankton_db.cli.common import JsonOut, app, err, handles_errors, open_db, out, progress

StatusOpt = Annotated[str | None, typer.Option("--status", help="only labels with this status: predicted, "
                                                                  "validated or dubious")]
TaxonOpt = Annotated[str | None, typer.Option("--taxon", help="only this taxon and its whole subtree")]

taxonomy_app = typer.Typer(help="The taxonomy tree: import it, move labels between taxa.", no_args_is_help=True)
app.add_typer(taxonomy_app, name="taxonomy")


@app.command("import-ecotaxa")
@handles_errors
def import_ecotaxa_cmd(
    path: Annotated[Path, typer.Argument(help="an EcoTaxa .tsv, a folder of them (ecotaxa*.tsv), or a .zip")],
    sample_from_column: Annotated[str, typer.Option(
        "--sample-from-column", help="the TSV column whose value becomes each image's sample")] = "sample_id",
    as_json: JsonOut = False,
) -> None:
    """Import EcoTaxa tables with their images and annotations; bad rows are listed with line numbers."""
    from plankton_db.ecotaxa_import import import_ecotaxa

    db = open_db()
    try:
        with progress() as bar:
            task = bar.add_task("import-ecotaxa", total=None)
            s = import_ecotaxa(db.Session, db.settings, path, sample_column=sample_from_column,
                               on_rows=lambda n: bar.update(task, total=n), on_progress=lambda n: bar.advance(task, n))
    finally:
        db.dispose()
    if as_json:
        out.print_json(json.dumps({"tables": s.tables, "rows": s.rows, "images_added": s.images_added,
                                   "already_present": s.already_present, "annotations_added": s.annotations_added,
                                   "problems": [str(p) for p in s.problems], "ignored_columns": s.ignored_columns}))
    else:
        out.print(f"{s.rows} rows in {len(s.tables)} table(s): {s.images_added} images added, {s.already_present} "
                  f"already present, {s.annotations_added} annotations added, {len(s.problems)} rows with problems",
                  highlight=False, soft_wrap=True)
        for table, cols in s.ignored_columns.items():
            err.print(f"{table}: ignored columns without an EcoTaxa prefix: {', '.join(cols)}", highlight=False,
                      markup=False, soft_wrap=True)
        for table in s.inferred_types:
            err.print(f"{table}: no [t]/[f] type row; numeric columns were recognised from their values",
                      highlight=False, markup=False, soft_wrap=True)
        for p in s.problems:
            err.print(str(p), highlight=False, markup=False, soft_wrap=True)
    if s.problems:
        raise typer.Exit(1)


def _export(kind: str, path: Path, status: str | None, taxon: str | None, what: str, **kw) -> None:
    """Check the filters, open a read session, run one exporter, and print what it wrote."""
    from plankton_db import exports

    exports.check_status(status)
    db = open_db()
    try:
        with db.Session() as s:
            if kind == "ecotaxa":
                from plankton_db.store import ContentStore

                kw["store"] = ContentStore(db.settings.store)
            summary = getattr(exports, f"export_{kind}")(s, out=path, status=status, taxon=taxon, **kw)
    finally:
        db.dispose()
    out.print(f"{summary.images} images written to {summary.path} ({what})", highlight=False, soft_wrap=True)
    for w in summary.warnings:
        err.print(f"warning: {w}", highlight=False, markup=False, soft_wrap=True)


@app.command("export-ecotaxa")
@handles_errors
def export_ecotaxa_cmd(
    out_zip: Annotated[Path, typer.Argument(metavar="OUT.zip", help="the zip to write")],
    status: StatusOpt = None,
    taxon: TaxonOpt = None,
) -> None:
    """Write a zip EcoTaxa can import: the TSV with its type row, and the images."""
    _export("ecotaxa", out_zip, status, taxon, "EcoTaxa TSV + images")


@app.command("export-csv")
@handles_errors
def export_csv_cmd(
    out_csv: Annotated[Path, typer.Argument(metavar="OUT.csv", help="the CSV file to write")],
    status: StatusOpt = None,
    taxon: TaxonOpt = None,
) -> None:
    """Write one CSV row per image: metadata, current label and lineage."""
    _export("csv", out_csv, status, taxon, "CSV")


@app.command("export-dwc")
@handles_errors
def export_dwc_cmd(
    out_csv: Annotated[Path, typer.Argument(metavar="OUT.csv", help="the Darwin Core occurrence CSV to write")],
    status: StatusOpt = None,
    taxon: TaxonOpt = None,
    dataset: Annotated[str, typer.Option(help="the name used in occurrenceID URNs")] = "plankton-db",
) -> None:
    """Write a Darwin Core occurrence table; identificationVerificationStatus says predicted, validated or dubious."""
    _export("dwc", out_csv, status, taxon, "Darwin Core occurrences", dataset=dataset)


@taxonomy_app.command("import")
@handles_errors
def taxonomy_import(
    csv_file: Annotated[Path, typer.Argument(metavar="FILE.csv", help="columns: name, parent, aphia_id, rank")],
) -> None:
    """Create or update taxa from a CSV; all or nothing, refusing unknown parents and cycles."""
    from plankton_db.errors import InvalidArgument
    from plankton_db.taxonomy import import_taxonomy, parse_taxonomy_csv

    try:
        text = csv_file.read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise InvalidArgument(f"cannot read {csv_file}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise InvalidArgument(f"{csv_file}: not UTF-8 text") from None
    rows = parse_taxonomy_csv(text, csv_file.name)
    db = open_db()
    try:
        with db.Session.begin() as s:
            summary = import_taxonomy(s, rows, csv_file.name)
    finally:
        db.dispose()
    out.print(f"{summary.rows} taxa read: {summary.added} added, {summary.updated} updated", highlight=False,
              soft_wrap=True)


@taxonomy_app.command("move")
@handles_errors
def taxonomy_move(
    source: Annotated[str, typer.Argument(metavar="FROM", help="the taxon whose labels move")],
    target: Annotated[str, typer.Argument(metavar="TO", help="the taxon they move to")],
    annotator: Annotated[str | None, typer.Option(help="who is recorded on the new annotations")] = None,
) -> None:
    """Relabel every image now labelled FROM as TO; the old annotations stay in the history."""
    from plankton_db.taxonomy import move_labels

    db = open_db()
    try:
        with db.Session.begin() as s:
            moved = move_labels(s, source, target, annotator=annotator)
    finally:
        db.dispose()
    out.print(f"{moved} labels moved from {source} to {target}", highlight=False, soft_wrap=True)
