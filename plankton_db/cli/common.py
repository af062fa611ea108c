"""Shared pieces of the CLI: the Typer app, consoles, error handling and option types."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import sqlalchemy as sa
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from plankton_db.config import Settings
from plankton_db.errors import DatabaseUnavailable, PlanktonError

app = typer.Typer(help="plankton-db: label and search plankton images with CNN embeddings in PostgreSQL.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)

out = Console()
err = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])

Metric = Annotated[str, typer.Option("--metric", help="cosine or l2")]
ModelOpt = Annotated[str | None, typer.Option("--model", help="embedding model name (default: the default model)")]
Device = Annotated[str, typer.Option("--device", help="auto, cpu or cuda")]
JsonOut = Annotated[bool, typer.Option("--json", help="print one JSON object")]


def print_error(message: str) -> None:
    """One red `error:` line on stderr; the message is never parsed as markup."""
    err.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)


def handles_errors(fn: F) -> F:
    """Print domain errors as one line and exit 1, without a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except PlanktonError as exc:
            print_error(str(exc))
            raise typer.Exit(1) from None
        except sa.exc.OperationalError as exc:
            msg = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
            print_error(str(DatabaseUnavailable(f"database connection lost: {msg}")))
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err.print("interrupted; work committed so far is kept")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def open_db(migrate: bool = True):
    """Settings from the environment, then a connected (and migrated) database."""
    from plankton_db.db import connect

    return connect(Settings.from_env(), migrate=migrate)


def progress() -> Progress:
    """A progress bar on stderr, so stdout stays clean for --json."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=err, transient=False)


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="log what happens")] = False) -> None:
    """plankton-db command line."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
