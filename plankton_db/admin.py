"""Facts about the database for `plankton db status`."""

from __future__ import annotations

import sqlalchemy as sa

from plankton_db.db import Database, display_url


def database_status(db: Database) -> dict:
    """Which server, where its data lives, the schema revision and row counts."""
    revision = db.revision()
    counts = {"images": None, "embeddings": None, "annotations": None}
    if revision is not None:
        with db.engine.connect() as conn:
            for table in counts:
                counts[table] = conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one()
    with db.engine.connect() as conn:
        version = conn.execute(sa.text("SHOW server_version")).scalar_one()
        vector = conn.execute(sa.text("SELECT extversion FROM pg_extension WHERE extname = 'vector'")).scalar()
    return {
        "url": display_url(db.url),
        "embedded": db.embedded,
        "data_dir": str(db.settings.pgdata) if db.embedded else None,
        "store_dir": str(db.settings.store),
        "revision": revision,
        "server_version": version,
        "pgvector_version": vector,
        **counts,
    }
