"""Users, roles, hashed passwords and API tokens for the web UI and scripts."""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.orm import Session
from werkzeug.security import check_password_hash, generate_password_hash

from plankton_db.errors import InvalidArgument, PlanktonError

# Ordered: each role can do everything the roles before it can.
ROLES = ("viewer", "annotator", "admin")
FIRST_ADMIN = "admin"
MIN_PASSWORD = 8
TOKEN_PREFIX = "pdb_"
_NAME = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
# A hash to compare against when the user does not exist, so a wrong name costs as long as a wrong password.
_DUMMY_HASH = generate_password_hash("not-a-real-password")


class UnknownUser(PlanktonError):
    """A user name that does not exist."""


@dataclass(frozen=True)
class User:
    """Who is making a request, and what they may do."""

    id: int
    name: str
    role: str

    def can(self, role: str) -> bool:
        """Whether this user's role includes `role`."""
        return ROLES.index(self.role) >= ROLES.index(role)


def check_role(role: str) -> str:
    """Return `role` if it is one of ROLES, else raise InvalidArgument."""
    if role not in ROLES:
        raise InvalidArgument(f"unknown role {role!r}; choose one of: {', '.join(ROLES)}")
    return role


def check_name(name: str) -> str:
    """Return `name` if it is a valid user name, else raise InvalidArgument."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidArgument("user names are 1-64 letters, digits or _ . @ -")
    return name


def add_user(session: Session, name: str, role: str, password: str) -> User:
    """Create a user with a hashed password; InvalidArgument if the name is taken or the password short."""
    check_name(name)
    check_role(role)
    if len(password) < MIN_PASSWORD:
        raise InvalidArgument(f"the password must have at least {MIN_PASSWORD} characters")
    exists = session.execute(sa.text("SELECT 1 FROM users WHERE name = :n"), {"n": name}).first()
    if exists:
        raise InvalidArgument(f"user {name!r} already exists")
    uid = session.execute(
        sa.text("INSERT INTO users (name, password_hash, role) VALUES (:n, :h, :r) RETURNING id"),
        {"n": name, "h": generate_password_hash(password), "r": role},
    ).scalar_one()
    return User(uid, name, role)


def count_users(session: Session) -> int:
    """How many users exist."""
    return session.execute(sa.text("SELECT count(*) FROM users")).scalar_one()


def ensure_first_admin(session: Session) -> str | None:
    """With no users at all, create `admin` with a random password and return it (once); else None."""
    # The lock makes two processes starting at once create one admin, not two errors.
    session.execute(sa.text("LOCK TABLE users IN SHARE ROW EXCLUSIVE MODE"))
    if count_users(session):
        return None
    password = secrets.token_urlsafe(12)
    add_user(session, FIRST_ADMIN, "admin", password)
    return password


def authenticate(session: Session, name: str, password: str) -> User | None:
    """The user if name and password match, else None."""
    row = session.execute(sa.text("SELECT id, name, role, password_hash FROM users WHERE name = :n"),
                          {"n": name}).first()
    if row is None:
        check_password_hash(_DUMMY_HASH, password)
        return None
    return User(row[0], row[1], row[2]) if check_password_hash(row[3], password) else None


def get_user(session: Session, user_id: int) -> User | None:
    """The user with this id, if it still exists."""
    row = session.execute(sa.text("SELECT id, name, role FROM users WHERE id = :i"), {"i": user_id}).first()
    return User(*row) if row else None


def list_users(session: Session) -> list[User]:
    """Every user, by name."""
    return [User(*r) for r in session.execute(sa.text("SELECT id, name, role FROM users ORDER BY name"))]


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(session: Session, name: str) -> str:
    """A new API token for the user; only its sha256 is stored, so it is shown once."""
    uid = session.execute(sa.text("SELECT id FROM users WHERE name = :n"), {"n": name}).scalar()
    if uid is None:
        raise UnknownUser(f"no user named {name!r}")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    session.execute(sa.text("INSERT INTO api_tokens (user_id, token_sha256) VALUES (:u, :h)"),
                    {"u": uid, "h": _digest(token)})
    return token


def user_for_token(session: Session, token: str) -> User | None:
    """The user a bearer token belongs to, or None; records when it was last used."""
    if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
        return None
    # last_used_at is refreshed at most once a minute: writing it on every request serialised all requests
    # of one token on its row lock and a WAL flush (p95 222 ms at 20 clients, bench/load.py).
    row = session.execute(
        sa.text(
            """
            WITH t AS (SELECT t.id, t.last_used_at, u.id AS uid, u.name, u.role
                         FROM api_tokens t JOIN users u ON u.id = t.user_id WHERE t.token_sha256 = :h),
                 touched AS (UPDATE api_tokens a SET last_used_at = now() FROM t
                              WHERE a.id = t.id AND (t.last_used_at IS NULL
                                                     OR t.last_used_at < now() - interval '1 minute'))
            SELECT uid, name, role FROM t
            """
        ),
        {"h": _digest(token)},
    ).first()
    return User(*row) if row else None
