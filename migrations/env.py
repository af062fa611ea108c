"""Alembic environment: reuse the caller's connection when given one, else open the configured database."""

from __future__ import annotations

from alembic import context

from plankton_db.models import Base

config = context.config
target_metadata = Base.metadata


def run_offline() -> None:
    """Emit SQL without a server; `make schema` uses this to write sql/schema.sql."""
    context.configure(
        url="postgresql+psycopg://",
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        transaction_per_migration=False,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, target_metadata=target_metadata)
        with context.begin_transaction():
            context.run_migrations()
        return
    # Called as plain `alembic upgrade head`: open the configured database without auto-migrating.
    from plankton_db.config import Settings
    from plankton_db.db import connect

    db = connect(Settings.from_env(), migrate=False)
    try:
        with db.engine.begin() as conn:
            context.configure(connection=conn, target_metadata=target_metadata)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        db.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
