"""`plankton db ...`: the server and the schema."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from plankton_db.cli.common import JsonOut, app, handles_errors, open_db, out
from plankton_db.config import Settings
from plankton_db.errors import PlanktonError

db_app = typer.Typer(help="Database server and schema.", no_args_is_help=True)
app.add_typer(db_app, name="db")

@db_app.command("status")
@handles_errors
def db_status(as_json: JsonOut = False) -> None:
    """Which server is in use, where its data is, the schema revision and row counts."""
    from plankton_db.admin import database_status

    db = open_db(migrate=False)
    try:
        info = database_status(db)
    finally:
        db.dispose()
    if as_json:
        out.print_json(json.dumps(info))
        return
    for key, value in info.items():
        out.print(f"{key:>16}: {value}", highlight=False)


@db_app.command("upgrade")
@handles_errors
def db_upgrade(revision: Annotated[str, typer.Argument(help="target revision")] = "head") -> None:
    """Apply migrations."""
    db = open_db(migrate=False)
    try:
        before = db.revision()
        db.upgrade(revision)
        out.print(f"schema: {before or 'empty'} -> {db.revision()}")
    finally:
        db.dispose()


@db_app.command("downgrade")
@handles_errors
def db_downgrade(revision: Annotated[str, typer.Argument(help="target revision, or 'base' to remove everything")]) -> None:
    """Revert migrations (data in removed tables is lost)."""
    db = open_db(migrate=False)
    try:
        before = db.revision()
        db.downgrade(revision)
        out.print(f"schema: {before or 'empty'} -> {db.revision() or 'empty'}")
    finally:
        db.dispose()


@db_app.command("stop")
@handles_errors
def db_stop() -> None:
    """Stop the embedded PostgreSQL server."""
    from plankton_db.db import stop_embedded

    settings = Settings.from_env()
    if not settings.embedded:
        raise PlanktonError("PLANKTON_DATABASE_URL is set: the external server is not ours to stop")
    out.print("stopped" if stop_embedded(settings) else "the embedded server was not running")
