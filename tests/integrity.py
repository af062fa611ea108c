"""A fingerprint of everything stored (every table's rows and every store file), to prove nothing changed."""

from __future__ import annotations

import hashlib
from pathlib import Path

import sqlalchemy as sa

# Rows that change on every request by design, not stored decisions.
VOLATILE = {"api_tokens": "last_used_at"}


def table_digests(engine: sa.Engine) -> dict[str, tuple[int, str]]:
    """(row count, md5 of the rows in text form) for every table in the public schema."""
    with engine.connect() as conn:
        tables = conn.execute(sa.text(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename")).scalars().all()
        out = {}
        for t in tables:
            row = "(t.*)::text"
            if t in VOLATILE:
                cols = [c for c in conn.execute(sa.text(
                    "SELECT column_name FROM information_schema.columns WHERE table_schema = 'public' "
                    "AND table_name = :t ORDER BY ordinal_position"), {"t": t}).scalars() if c != VOLATILE[t]]
                row = "row(" + ", ".join(f"t.{c}" for c in cols) + ")::text"
            n, digest = conn.execute(sa.text(
                f"SELECT count(*), md5(coalesce(string_agg({row}, '|' ORDER BY {row}), '')) FROM {t} t")).one()
            out[t] = (n, digest)
    return out


def store_digests(root: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under the store root."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def fingerprint(engine: sa.Engine, store: Path) -> dict:
    """Everything stored: the tables' digests and the store's files."""
    return {"tables": table_digests(engine), "store": store_digests(store)}
