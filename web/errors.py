"""Errors become an HTTP status with a plain message: JSON {"error": ...} for the API, a short page otherwise."""

from __future__ import annotations

import logging

import sqlalchemy as sa
from flask import Flask, jsonify, render_template
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from plankton_db.errors import (
    DatabaseUnavailable,
    ImageRejected,
    InvalidArgument,
    PlanktonError,
    UnknownImage,
    UnknownModel,
)
from plankton_db.labels import NothingToUndo
from plankton_db.users import UnknownUser
from web.auth import wants_json

log = logging.getLogger(__name__)

STATUS = {
    InvalidArgument: 400,
    ImageRejected: 400,
    UnknownImage: 404,
    UnknownModel: 404,
    UnknownUser: 404,
    NothingToUndo: 409,
    DatabaseUnavailable: 503,
}


def status_for(exc: PlanktonError) -> int:
    """The HTTP status of a domain error (400 when it has no closer match)."""
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 400


def respond(status: int, message: str):
    """The error response in the form the client asked for."""
    if wants_json():
        return jsonify(error=message), status
    return render_template("error.html", status=status, message=message), status


def init_app(app: Flask) -> None:
    """Register the handlers; nothing ever sends a traceback to the client."""

    @app.errorhandler(PlanktonError)
    def domain_error(exc: PlanktonError):
        return respond(status_for(exc), str(exc))

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(exc: RequestEntityTooLarge):
        limit = app.config["MAX_CONTENT_LENGTH"] // (1024 * 1024)
        return respond(413, f"upload too large: the limit is {limit} MiB")

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        if exc.response is not None:  # abort(response) from a view: send it as it is
            return exc.response
        return respond(exc.code or 500, exc.description or exc.name)

    @app.errorhandler(sa.exc.DataError)
    def bad_value(exc: sa.exc.DataError):
        # A value PostgreSQL refuses (a NUL character, a number out of range) is the client's input, not a fault.
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else "invalid value"
        return respond(400, f"a value in the request was refused by the database: {reason}")

    @app.errorhandler(sa.exc.OperationalError)
    def db_down(exc: sa.exc.OperationalError):
        log.exception("database error")
        if "statement timeout" in str(exc.orig):
            return respond(503, "the query took too long and was cancelled; narrow the filters")
        return respond(503, "the database is unavailable; try again shortly")

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        log.exception("unhandled error")
        return respond(500, "internal server error; the details are in the server log")
