"""`plankton serve`, `plankton user add`, `plankton token create`, `plankton suggest` and `plankton simulate-labeling`."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from plankton_db.cli.common import JsonOut, ModelOpt, app, err, handles_errors, open_db, out, progress
from plankton_db.errors import InvalidArgument

user_app = typer.Typer(help="Web UI users.", no_args_is_help=True)
token_app = typer.Typer(help="API tokens for scripts.", no_args_is_help=True)
app.add_typer(user_app, name="user")
app.add_typer(token_app, name="token")


@app.command()
@handles_errors
def serve(
    host: Annotated[str, typer.Option(help="address to listen on", envvar="PLANKTON_WEB_HOST")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="port", envvar="PLANKTON_WEB_PORT")] = 5000,
    threads: Annotated[int, typer.Option(min=1, max=64, help="request threads")] = 8,
) -> None:
    """Serve the labeling UI with waitress; on first start an admin with a random password is created."""
    import waitress

    from web.wsgi import from_env

    flask_app = from_env(announce=lambda line: out.print(line, highlight=False, markup=False))
    shown = "localhost" if host in ("127.0.0.1", "0.0.0.0") else host
    out.print(f"plankton-db UI on http://{shown}:{port}/  (Ctrl+C stops)", highlight=False)
    waitress.serve(flask_app, host=host, port=port, threads=threads, ident="plankton-db")


@user_app.command("add")
@handles_errors
def user_add(
    name: Annotated[str, typer.Argument(help="user name")],
    role: Annotated[str, typer.Option(help="viewer, annotator or admin")] = "annotator",
    password_stdin: Annotated[bool, typer.Option("--password-stdin", help="read the password from stdin")] = False,
) -> None:
    """Create a user; the password is read from stdin (never from the command line, where ps can see it)."""
    from plankton_db.users import add_user, check_name, check_role

    check_name(name)
    check_role(role)
    if not password_stdin:
        raise InvalidArgument("pass --password-stdin and pipe the password in")
    password = sys.stdin.readline().rstrip("\r\n")
    db = open_db()
    try:
        with db.Session.begin() as s:
            user = add_user(s, name, role, password)
    finally:
        db.dispose()
    out.print(f"user {user.name} created with role {user.role}", highlight=False, markup=False)


@token_app.command("create")
@handles_errors
def token_create(user: Annotated[str, typer.Argument(help="the user the token acts as")]) -> None:
    """Create an API token for `Authorization: Bearer ...`; it is printed once and only its hash is kept."""
    from plankton_db.users import create_token

    db = open_db()
    try:
        with db.Session.begin() as s:
            token = create_token(s, user)
    finally:
        db.dispose()
    out.print(token, highlight=False, markup=False, soft_wrap=True)


@app.command()
@handles_errors
def suggest(model: ModelOpt = None, rebuild: Annotated[bool, typer.Option(help="recompute the whole neighbour graph")] = False,
            as_json: JsonOut = False) -> None:
    """Refresh kNN suggestions (predicted annotations, source knn) from the validated labels."""
    from plankton_db import suggest as sg
    from plankton_db.embed import require_model

    db = open_db()
    try:
        with db.Session.begin() as s:
            row = require_model(s, model)
            with progress() as bar:
                task = bar.add_task("neighbour graph", total=None)
                sg.build_graph(s, row.id, rebuild=rebuild, on_progress=lambda n: bar.advance(task, n))
            summary = sg.refresh(s, row.id, build=False)
    finally:
        db.dispose()
    if as_json:
        out.print_json(json.dumps(summary.__dict__))
    else:
        out.print(f"{summary.predicted_images} images have a prediction; {summary.predictions_written} written now")


@app.command("simulate-labeling")
@handles_errors
def simulate_labeling(
    page_size: Annotated[int, typer.Option(min=1, max=500, help="images per page, as in the UI")] = 50,
    model: ModelOpt = None,
    as_json: JsonOut = False,
) -> None:
    """Replay the UI workflow with the validated labels as the oracle; nothing is kept (one rolled-back transaction)."""
    from plankton_db.embed import require_model
    from plankton_db.simulate import simulate
    from plankton_db.suggest import build_graph

    db = open_db()
    try:
        # The neighbour graph is ordinary derived data, so it is kept; the simulated labels are not.
        with db.Session.begin() as s:
            row = require_model(s, model)
            build_graph(s, row.id)
        with db.Session() as s, progress() as bar:
            task = bar.add_task(f"simulate ({row.name}, page {page_size})", total=None)
            try:
                result = simulate(s, row.id, page_size=page_size,
                                  on_progress=lambda done, total: bar.update(task, completed=done, total=total))
            finally:
                s.rollback()
    finally:
        db.dispose()
    if as_json:
        out.print_json(json.dumps(result.to_json()))
        return
    out.print(f"{result.images} images in {result.actions} actions: {result.images_per_action} images per action "
              f"({result.similar_actions} similar, {result.accept_actions} accept, {result.correction_actions} "
              f"corrections)", highlight=False)
    out.print(f"simulated {result.simulated_hours} h vs {result.manual_hours} h one image per action: "
              f"{result.speedup}x", highlight=False)
    err.print("the cost model is in docs/WEB.md", highlight=False)
