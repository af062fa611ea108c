"""Migrations go up and down on a real server, match the models, and regenerate sql/schema.sql."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from conftest import drop_database, new_database
from plankton_db.config import Settings
from plankton_db.db import REPO_ROOT, connect, head_revision
from plankton_db.models import Base

TABLES = {"images", "taxa", "annotations", "image_labels", "embedding_models", "embeddings"}


def _tables(db) -> set[str]:
    with db.engine.connect() as conn:
        return set(sa.inspect(conn).get_table_names())


def test_upgrade_downgrade_upgrade(admin_url: str, template_url: str, tmp_path: Path) -> None:
    name, url = new_database(admin_url, template=None)
    try:
        db = connect(Settings(home=tmp_path, database_url=url), migrate=False)
        assert db.revision() is None
        db.upgrade()
        assert db.revision() == head_revision()
        assert TABLES <= _tables(db)
        with db.engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM current_labels")).scalar_one() == 0
            assert conn.execute(sa.text("SELECT extname FROM pg_extension WHERE extname='vector'")).scalar() == "vector"
        db.downgrade("base")
        assert db.revision() is None
        assert not (TABLES & _tables(db))
        db.upgrade()
        assert TABLES <= _tables(db)
        db.dispose()
    finally:
        drop_database(admin_url, name)


def test_connect_migrates_an_empty_database(admin_url: str, template_url: str, tmp_path: Path) -> None:
    name, url = new_database(admin_url, template=None)
    try:
        db = connect(Settings(home=tmp_path, database_url=url))
        assert db.revision() == head_revision()
        db.dispose()
    finally:
        drop_database(admin_url, name)


def test_models_match_migrations(db) -> None:
    with db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_schema_sql_is_generated_from_migrations() -> None:
    generated = subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", "head", "--sql"],
        cwd=REPO_ROOT, capture_output=True, text=True, check=True,
    ).stdout
    committed = (REPO_ROOT / "sql" / "schema.sql").read_text()
    assert generated == committed, "sql/schema.sql is stale: run `make schema`"


def test_head_revision_is_single() -> None:
    from alembic.script import ScriptDirectory

    from plankton_db.db import alembic_config

    assert len(ScriptDirectory.from_config(alembic_config()).get_heads()) == 1


@pytest.mark.parametrize("url", ["mysql://x@y/z", "sqlite:///tmp/x.db"])
def test_non_postgres_url_is_refused(url: str) -> None:
    from plankton_db.errors import ConfigError

    with pytest.raises(ConfigError, match="must start with postgresql://"):
        Settings.from_env({"PLANKTON_DATABASE_URL": url})
