"""Model commands: list the registered embedding models and delete one."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from plankton_db.cli.common import JsonOut, app, handles_errors, open_db, out

model_app = typer.Typer(help="Registered embedding models: list them, delete one.", no_args_is_help=True)
app.add_typer(model_app, name="model")


@model_app.command("list")
@handles_errors
def model_list(as_json: JsonOut = False) -> None:
    """Every model with its parent, training mode, stored vectors and recorded holdout top1."""
    from plankton_db.modeladmin import list_models

    db = open_db()
    with db.Session() as s:
        rows = list_models(s)
    db.dispose()
    if as_json:
        out.print_json(json.dumps(rows))
        return
    table = Table(title=f"{len(rows)} embedding models")
    for col in ("id", "name", "arch", "dim", "parent", "mode", "embedded", "holdout top1"):
        table.add_column(col)
    for r in rows:
        top1 = f"{r['holdout_top1']:.3f}" if r["holdout_top1"] is not None else "-"
        table.add_row(str(r["id"]), r["name"], r["arch"], str(r["dim"]), r["parent"] or "-", r["mode"] or "-",
                      str(r["embedded"]), top1)
    out.print(table)


@model_app.command("delete")
@handles_errors
def model_delete(
    name: Annotated[str, typer.Argument(help="the model to delete")],
    yes: Annotated[bool, typer.Option("--yes", help="really delete its vectors and indexes")] = False,
) -> None:
    """Delete a model with its vectors, ANN indexes, hash codes and queue jobs (nothing without --yes)."""
    import sqlalchemy as sa

    from plankton_db.embed import require_model
    from plankton_db.errors import InvalidArgument
    from plankton_db.modeladmin import delete_model

    db = open_db()
    try:
        if not yes:
            with db.Session() as s:
                model = require_model(s, name)
                n = s.execute(sa.text("SELECT count(*) FROM embeddings WHERE model_id = :m"),
                              {"m": model.id}).scalar_one()
            raise InvalidArgument(f"this deletes model {name!r} and its {n} vectors; run again with --yes")
        with db.Session.begin() as s:
            done = delete_model(s, name)
    finally:
        db.dispose()
    out.print(f"deleted model {done['model']}: {done['embeddings']} vectors, "
              f"{len(done['indexes'])} ANN indexes", highlight=False)
