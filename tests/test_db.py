"""The embedded server: starts on demand, keeps data across stop/start, and reports its status."""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest
import sqlalchemy as sa

from plankton_db.admin import database_status
from plankton_db.config import Settings
from plankton_db.db import connect, display_url, embedded_memory_settings, sqlalchemy_url, stop_embedded
from plankton_db.errors import DatabaseUnavailable


def test_embedded_server_persists_across_restart(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    db = connect(settings)
    try:
        with db.Session.begin() as s:
            s.execute(sa.text("INSERT INTO taxa (name) VALUES ('Oithona')"))
        status = database_status(db)
        assert status["embedded"] is True and status["data_dir"] == str(settings.pgdata)
        assert status["revision"] is not None and status["pgvector_version"] >= "0.7"
        db.dispose()
        assert stop_embedded(settings) is True
        assert stop_embedded(settings) is False  # already stopped
        db = connect(settings)
        with db.engine.connect() as conn:
            assert conn.execute(sa.text("SELECT name FROM taxa")).scalar_one() == "Oithona"
            # The first start sized shared_buffers for the machine (initdb's 128 MB is too small for HNSW).
            want = embedded_memory_settings(psutil.virtual_memory().total)["shared_buffers"]
            assert conn.execute(sa.text("SHOW shared_buffers")).scalar_one() == want
        # An administrator's own value survives restarts.
        with db.engine.execution_options(isolation_level="AUTOCOMMIT").connect() as conn:
            conn.execute(sa.text("ALTER SYSTEM SET shared_buffers = '160MB'"))
        db.dispose()
        stop_embedded(settings)
        db = connect(settings)
        with db.engine.connect() as conn:
            assert conn.execute(sa.text("SHOW shared_buffers")).scalar_one() == "160MB"
    finally:
        db.dispose()
        stop_embedded(settings)


def test_embedded_memory_settings_follow_the_machine() -> None:
    gib = 2**30
    assert embedded_memory_settings(24 * gib) == {"shared_buffers": "6144MB", "effective_cache_size": "12288MB"}
    assert embedded_memory_settings(256 * gib)["shared_buffers"] == "8192MB"  # capped
    assert embedded_memory_settings(256 * 2**20)["shared_buffers"] == "128MB"  # never below initdb's default


def test_settings_from_env_defaults_and_overrides(tmp_path: Path) -> None:
    s = Settings.from_env({"PLANKTON_HOME": str(tmp_path), "PLANKTON_MAX_PIXELS": "5000"})
    assert s.embedded and s.pgdata == tmp_path / "pgdata" and s.store == tmp_path / "store"
    assert s.max_pixels == 5000
    s = Settings.from_env({"PLANKTON_DATABASE_URL": "postgresql://u:secret@h/db", "PLANKTON_STORE": str(tmp_path)})
    assert not s.embedded and s.store == tmp_path


def test_urls_are_normalised_and_passwords_hidden() -> None:
    assert sqlalchemy_url("postgres://u@h/d") == "postgresql+psycopg://u@h/d"
    assert "secret" not in display_url("postgresql+psycopg://u:secret@h/d")


def test_unreachable_server_is_a_clear_error(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, database_url="postgresql://nobody@127.0.0.1:1/none")
    with pytest.raises(DatabaseUnavailable, match=r"cannot connect to postgresql\+psycopg://nobody@127.0.0.1:1/none"):
        connect(settings)
