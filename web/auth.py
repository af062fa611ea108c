"""Login, signed-cookie sessions, bearer tokens, CSRF tokens, and the role every route declares."""

from __future__ import annotations

import functools
import hmac
import secrets
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, Flask, abort, g, jsonify, redirect, render_template, request, session, url_for

from plankton_db import users
from web.common import tx

bp = Blueprint("auth", __name__)

PUBLIC = "public"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"


def wants_json() -> bool:
    """API calls get JSON errors; pages get a plain message or a redirect."""
    return request.path.startswith("/api/")


def csrf_token() -> str:
    """This session's CSRF token, created on first use."""
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(32)
    return session["csrf"]


def requires(role: str) -> Callable:
    """Mark a view as needing `role` (or "public") and enforce it before the view runs."""

    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any):
            if role != PUBLIC:
                user = g.get("user")
                if user is None:
                    if wants_json():
                        return jsonify(error="login required: sign in or send Authorization: Bearer TOKEN"), 401
                    return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))
                if not user.can(role):
                    return _error(403, f"this needs the {role} role; {user.name} is {user.role}")
            return fn(*args, **kwargs)

        wrapper.required_role = role  # type: ignore[attr-defined]
        return wrapper

    return decorate


def _error(status: int, message: str):
    if wants_json():
        return jsonify(error=message), status
    return render_template("error.html", status=status, message=message), status


def _load_user() -> Any:
    g.user, g.via_token = None, False
    header = request.headers.get("Authorization", "")
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return _error(401, "the Authorization header must be 'Bearer TOKEN'")
        with tx() as s:
            g.user = users.user_for_token(s, token.strip())
        if g.user is None:
            return _error(401, "invalid API token")
        g.via_token = True
        return None
    uid = session.get("uid")
    if uid is not None:
        with tx() as s:
            g.user = users.get_user(s, uid)
        if g.user is None:
            session.clear()  # the user was removed since this cookie was issued
    return None


def _check_csrf() -> Any:
    # Bearer requests carry no cookie, so a forged cross-site request cannot use them.
    if request.method in SAFE_METHODS or g.via_token or request.endpoint == "static":
        return None
    sent = request.headers.get(CSRF_HEADER) or request.form.get(CSRF_FIELD) or ""
    expected = session.get("csrf") or ""
    if not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
        return _error(403, "missing or wrong CSRF token; reload the page")
    return None


def _security_headers(response):
    # No inline script anywhere, so a stored name can never run even if it reached the page unescaped.
    response.headers.setdefault(
        "Content-Security-Policy",
        "default-src 'self'; img-src 'self' blob: data:; script-src 'self'; style-src 'self'; "
        "object-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    )
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    response.headers.setdefault("X-Frame-Options", "DENY")
    return response


def init_app(app: Flask) -> None:
    """Load the user and check CSRF before every request; add security headers after."""
    app.before_request(_load_user)
    app.before_request(_check_csrf)
    app.after_request(_security_headers)
    app.context_processor(lambda: {"csrf_token": csrf_token, "current_user": g.get("user")})


def check_every_route_has_a_role(app: Flask) -> None:
    """Refuse to start if any view forgot to declare its role."""
    missing = [name for name, fn in app.view_functions.items()
               if name != "static" and not hasattr(fn, "required_role")]
    if missing:
        raise RuntimeError(f"routes without a role check: {', '.join(sorted(missing))}")


def _safe_next(target: str | None) -> str:
    # Only same-site paths, so the login page cannot be used to redirect people elsewhere.
    if not target or not target.startswith("/") or target.startswith("//") or urlsplit(target).netloc:
        return url_for("pages.browse_page")
    return target


@bp.route("/login", methods=["GET", "POST"])
@requires(PUBLIC)
def login():
    """The login form, and checking it."""
    if request.method == "GET":
        csrf_token()
        return render_template("login.html", next=request.args.get("next", ""), message=None)
    name = request.form.get("name", "")[:64]
    password = request.form.get("password", "")[:1024]
    with tx() as s:
        user = users.authenticate(s, name, password)
    if user is None:
        return render_template("login.html", next=request.form.get("next", ""),
                               message="wrong user name or password"), 401
    session.clear()  # a new session id on login, so a planted cookie cannot be reused
    session["uid"] = user.id
    session.permanent = False
    csrf_token()
    return redirect(_safe_next(request.form.get("next")))


@bp.route("/logout", methods=["POST"])
@requires(PUBLIC)
def logout():
    """End the session."""
    session.clear()
    return redirect(url_for("auth.login"))


@bp.route("/api/me")
@requires("viewer")
def me():
    """Who is logged in, and the CSRF token scripts need for cookie sessions."""
    return jsonify(name=g.user.name, role=g.user.role, csrf_token=None if g.via_token else csrf_token())


def forbid(status: int, message: str):
    """Abort the request with a message (JSON for the API)."""
    abort(_error(status, message))
