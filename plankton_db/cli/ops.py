"""`plankton db check`, `plankton backup` and `plankton restore`: keeping the database and the store whole."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from plankton_db.cli.common import JsonOut, app, err, handles_errors, open_db, out, progress, print_error
from plankton_db.cli.dbcmd import db_app

PgBin = Annotated[Path | None, typer.Option("--pg-bin", envvar="PLANKTON_PG_BIN",
                                            help="folder with pg_dump/pg_restore (default: the embedded server's)")]
SHOWN = 20  # problem lines printed per kind; --json lists them all


def _show(kind: str, items: list, fmt) -> None:
    for item in items[:SHOWN]:
        err.print(f"{kind} {fmt(item)}", highlight=False, markup=False, soft_wrap=True)
    if len(items) > SHOWN:
        err.print(f"... and {len(items) - SHOWN} more {kind} (--json lists all)", highlight=False, markup=False)


@db_app.command("check")
@handles_errors
def db_check(
    quick: Annotated[bool, typer.Option("--quick", help="compare sizes only; skip re-hashing every file")] = False,
    fix_orphans: Annotated[bool, typer.Option("--fix-orphans",
                                              help="delete files no row refers to, once older than --grace")] = False,
    grace: Annotated[float, typer.Option("--grace", min=0,
                                         help="seconds a file must be old before --fix-orphans removes it")] = 3600,
    as_json: JsonOut = False,
) -> None:
    """Verify that the image store and the database agree: every row has its file, every file its row, hashes match."""
    from plankton_db.check import check_store
    from plankton_db.store import ContentStore

    db = open_db()
    try:
        with db.ReadSession() as s, progress() as bar:
            task = bar.add_task("check" + (" (sizes)" if quick else " (sha256)"), total=None)
            report = check_store(s, ContentStore(db.settings.store), hashes=not quick, fix_orphans=fix_orphans,
                                 grace_seconds=grace, on_total=lambda n: bar.update(task, total=n),
                                 on_progress=lambda n: bar.advance(task, n))
    finally:
        db.dispose()
    if as_json:
        out.print_json(json.dumps(report.to_json()))
    else:
        left = report.remaining
        out.print(f"{report.rows} rows, {report.files} files in {report.store}: {len(report.missing)} missing, "
                  f"{len(report.corrupt)} corrupt, {len(report.orphans)} orphan, {len(report.strays)} stray"
                  + (f"; {len(report.removed)} removed" if fix_orphans else "")
                  + (f"; {report.verified} hashes verified" if not quick else "; sizes only"),
                  highlight=False, soft_wrap=True)
        _show("missing", report.missing, lambda p: f"image {p.image_id} ({p.sha256}): {p.reason}")
        _show("corrupt", report.corrupt, lambda p: f"image {p.image_id} ({p.sha256}): {p.reason}")
        _show("orphan", [p for p in report.orphans if p in left], str)
        _show("stray", [p for p in report.strays if p in left], str)
        if report.kept_recent:
            err.print(f"{len(report.kept_recent)} files kept: younger than the grace period of {grace:g} s",
                      highlight=False)
    if not report.ok:
        raise typer.Exit(1)


@app.command("backup")
@handles_errors
def backup_cmd(
    out_dir: Annotated[Path, typer.Argument(metavar="OUT", help="a new folder for the backup")],
    pg_bin: PgBin = None,
) -> None:
    """Back up the database (pg_dump, custom format) and the image store into a new folder."""
    from plankton_db.backup import backup

    db = open_db()
    try:
        with progress() as bar:
            task = bar.add_task("backup: copying images", total=None)
            summary = backup(db, out_dir, pg_bin=pg_bin, on_total=lambda n: bar.update(task, total=n),
                             on_progress=lambda n: bar.advance(task, n))
    finally:
        db.dispose()
    c = summary.counts
    out.print(f"backup {summary.path}: schema {summary.revision}, {c['images']} images, {c['annotations']} "
              f"annotations, {c['embeddings']} embeddings; {summary.files} files ({summary.bytes / 2**20:.1f} MiB) "
              f"in {summary.seconds:.1f} s", highlight=False, soft_wrap=True)
    problems = [("missing from the store", summary.missing), ("corrupt in the store", summary.corrupt)]
    for what, shas in problems:
        _show(what, shas, str)
    if summary.missing or summary.corrupt:
        print_error(f"{len(summary.missing)} files missing and {len(summary.corrupt)} corrupt: the backup lacks "
                    "them; run `plankton db check`")
        raise typer.Exit(1)


@app.command("restore")
@handles_errors
def restore_cmd(
    in_dir: Annotated[Path, typer.Argument(metavar="IN", help="a folder written by `plankton backup`")],
    replace: Annotated[bool, typer.Option("--replace", help="overwrite a database that already holds images")]
    = False,
    pg_bin: PgBin = None,
) -> None:
    """Restore the database and the image store from a backup folder; all or nothing for the database."""
    from plankton_db.backup import restore

    db = open_db(migrate=False)
    try:
        with progress() as bar:
            task = bar.add_task("restore: checking and copying images", total=None)
            summary = restore(db, in_dir, replace=replace, pg_bin=pg_bin,
                              on_total=lambda n: bar.update(task, total=n), on_progress=lambda n: bar.advance(task, n))
    finally:
        db.dispose()
    c = summary.counts
    out.print(f"restored {summary.path}: {c['images']} images, {c['annotations']} annotations, {c['embeddings']} "
              f"embeddings, {summary.files} files checked in {summary.seconds:.1f} s", highlight=False, soft_wrap=True)
