"""The Flask app factory for the labeling UI; no global app, everything comes in through create_app."""

from __future__ import annotations

import os
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from flask import Flask

from plankton_db.config import Settings
from plankton_db.db import Database, connect
from plankton_db.store import ContentStore
from plankton_db.thumbnails import ThumbnailCache

MAX_UPLOAD_BYTES = 20 * 1024 * 1024
STATEMENT_TIMEOUT_MS = 30_000


@dataclass
class WebState:
    """What every request needs: the database, the stores, and the encoders loaded so far."""

    settings: Settings
    db: Database
    store: ContentStore
    thumbs: ThumbnailCache
    encoders: dict = field(default_factory=dict)
    # Upload queries embedded recently, by sha256, so "load more" does not run the CNN again.
    vectors: OrderedDict = field(default_factory=OrderedDict)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _secret_key(settings: Settings) -> str:
    """The cookie-signing key kept in PLANKTON_HOME, made once, readable by the owner only."""
    path = Path(settings.home) / "web-secret"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        key = secrets.token_hex(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(key)
        return key


def create_app(
    settings: Settings,
    *,
    db: Database | None = None,
    secret_key: str | None = None,
    cookie_secure: bool = False,
    max_upload_bytes: int = MAX_UPLOAD_BYTES,
    announce: Callable[[str], None] = print,
) -> Flask:
    """Build the app: connect (and migrate), create the first admin if there are no users, register blueprints."""
    from plankton_db.users import ensure_first_admin

    from web import api, auth, errors, images, pages, suggestions

    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=secret_key or _secret_key(settings),
        MAX_CONTENT_LENGTH=max_upload_bytes,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=cookie_secure,
        JSON_SORT_KEYS=False,
    )
    database = db or connect(settings)
    store = ContentStore(settings.store)
    app.extensions["plankton"] = WebState(settings, database, store, ThumbnailCache(store, settings.home / "thumbs"))

    with database.Session.begin() as s:
        password = ensure_first_admin(s)
    if password:
        announce(f"first start: created user 'admin' with password {password}  (shown only this once)")

    auth.init_app(app)
    errors.init_app(app)
    for bp in (auth.bp, pages.bp, images.bp, api.bp, suggestions.bp):
        app.register_blueprint(bp)
    auth.check_every_route_has_a_role(app)
    return app
