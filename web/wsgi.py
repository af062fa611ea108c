"""WSGI entry point for production servers: `waitress-serve --port 8080 web.wsgi:app`.

Everything comes from the environment: PLANKTON_DATABASE_URL / PLANKTON_HOME (as for the CLI),
PLANKTON_SECRET_KEY (optional; else a key kept in PLANKTON_HOME) and PLANKTON_COOKIE_SECURE=1 behind TLS.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

from flask import Flask

from plankton_db.config import Settings
from web import create_app

ENV_SECRET_KEY = "PLANKTON_SECRET_KEY"
ENV_COOKIE_SECURE = "PLANKTON_COOKIE_SECURE"


def from_env(environ: Mapping[str, str] | None = None, announce: Callable[[str], None] = print) -> Flask:
    """Build the app from PLANKTON_* variables (os.environ when none are given)."""
    env = os.environ if environ is None else environ
    return create_app(
        Settings.from_env(env),
        secret_key=env.get(ENV_SECRET_KEY) or None,
        cookie_secure=env.get(ENV_COOKIE_SECURE, "").lower() in ("1", "true", "yes"),
        announce=announce,
    )


_app: Flask | None = None


def __getattr__(name: str) -> Flask:
    # `web.wsgi:app` is built on first access, so importing from_env (as `plankton serve` does) connects nothing.
    global _app
    if name != "app":
        raise AttributeError(name)
    if _app is None:
        _app = from_env()
    return _app
