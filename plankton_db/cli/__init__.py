"""The `plankton` command: parse arguments, open a session, call one core function, print.

Each feature's commands live in their own module and register on the shared Typer app
when imported here.
"""

from __future__ import annotations

from plankton_db.cli import dbcmd, pipeline  # noqa: F401  (registers commands)
from plankton_db.cli import worker as _worker  # noqa: F401  (registers worker and status)
from plankton_db.cli import web as _web  # noqa: F401  (registers serve, user, token, suggest, simulate-labeling)
from plankton_db.cli import ecosystem as _ecosystem  # noqa: F401  (registers import/export-ecotaxa, export-*, taxonomy)
from plankton_db.cli import ann as _ann  # noqa: F401  (registers index, hash and bench)
from plankton_db.cli import ops as _ops  # noqa: F401  (registers db check, backup and restore)
from plankton_db.cli import train as _train  # noqa: F401  (registers train, augment-preview and report)
from plankton_db.cli import model as _model  # noqa: F401  (registers model list and delete)
from plankton_db.cli.common import app


def run() -> None:
    """Console-script entry point."""
    app()


__all__ = ["app", "run"]
