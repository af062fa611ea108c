"""Helpers every blueprint uses: the app state, one transaction per call, and strict request parsing."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

import sqlalchemy as sa
from flask import current_app, request
from sqlalchemy.orm import Session

from plankton_db.errors import InvalidArgument

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def state():
    """The WebState of the running app."""
    return current_app.extensions["plankton"]


@contextmanager
def tx() -> Iterator[Session]:
    """A session in one transaction, committed on success, with the app's statement time limit."""
    from web import STATEMENT_TIMEOUT_MS

    with state().db.Session.begin() as s:
        # One place sets the time limit, so no request can hold a connection for ever.
        s.execute(sa.text(f"SET LOCAL statement_timeout = {int(STATEMENT_TIMEOUT_MS)}"))
        yield s


def int_arg(name: str, default: int | None, lo: int, hi: int) -> int | None:
    """An integer query parameter within [lo, hi], or InvalidArgument with the parameter's name."""
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidArgument(f"{name} must be an integer, got {raw[:40]!r}") from None
    if not lo <= value <= hi:
        raise InvalidArgument(f"{name} must be between {lo} and {hi}, got {value}")
    return value


def float_arg(name: str) -> float | None:
    """A float query parameter, or None when absent."""
    raw = request.args.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        raise InvalidArgument(f"{name} must be a number, got {raw[:40]!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise InvalidArgument(f"{name} must be a finite number")
    return value


def bool_arg(name: str) -> bool:
    """A yes/no query parameter (1/0, true/false, yes/no, on/off)."""
    raw = request.args.get(name, "").lower()
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise InvalidArgument(f"{name} must be true or false, got {raw[:40]!r}")


def date_arg(name: str) -> datetime | None:
    """An ISO date or date-time query parameter."""
    raw = request.args.get(name)
    if raw is None or raw == "":
        return None
    try:
        return datetime.fromisoformat(raw)
    except ValueError:
        raise InvalidArgument(f"{name} must be an ISO date like 2024-05-31, got {raw[:40]!r}") from None


def str_arg(name: str, max_length: int = 200) -> str | None:
    """A text query parameter, or None when absent or empty."""
    raw = request.args.get(name)
    if raw is None or raw == "":
        return None
    if len(raw) > max_length:
        raise InvalidArgument(f"{name} is longer than {max_length} characters")
    if "\x00" in raw:  # PostgreSQL text cannot hold NUL; refused here with the parameter's name
        raise InvalidArgument(f"{name} must not contain NUL characters")
    return raw


def choice_arg(name: str, default: str, choices: tuple[str, ...]) -> str:
    """A query parameter that must be one of `choices`."""
    raw = request.args.get(name) or default
    if raw not in choices:
        raise InvalidArgument(f"unknown {name} {raw[:40]!r}; choose one of: {', '.join(choices)}")
    return raw


def json_body() -> dict:
    """The request's JSON object, or InvalidArgument."""
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise InvalidArgument("the request body must be a JSON object (Content-Type: application/json)")
    return body
