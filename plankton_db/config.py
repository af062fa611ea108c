"""Settings, built once from the environment and passed down explicitly."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import platformdirs

from plankton_db.errors import ConfigError

ENV_DATABASE_URL = "PLANKTON_DATABASE_URL"
ENV_HOME = "PLANKTON_HOME"
ENV_STORE = "PLANKTON_STORE"
ENV_MAX_PIXELS = "PLANKTON_MAX_PIXELS"
ENV_REPLICA_URLS = "PLANKTON_REPLICA_URLS"  # comma-separated streaming replicas for read-only queries (issue 7)
_URL_PREFIXES = ("postgresql://", "postgres://", "postgresql+psycopg://")

DEFAULT_MAX_PIXELS = 100_000_000


def default_home() -> Path:
    """The per-user data folder used when PLANKTON_HOME is unset."""
    return Path(platformdirs.user_data_dir("plankton-db", appauthor=False))


@dataclass(frozen=True)
class Settings:
    """Where the database and the image store live, and the limits ingest enforces."""

    home: Path = field(default_factory=default_home)
    database_url: str | None = None
    store_dir: Path | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    replica_urls: tuple[str, ...] = ()  # read-only routing; empty means every query goes to the primary

    @property
    def embedded(self) -> bool:
        """True when no external server is configured and the embedded PostgreSQL is used."""
        return not self.database_url

    @property
    def pgdata(self) -> Path:
        """Data folder of the embedded PostgreSQL server."""
        return self.home / "pgdata"

    @property
    def store(self) -> Path:
        """Root folder of the content-addressed image store."""
        return self.store_dir or (self.home / "store")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from PLANKTON_* variables (os.environ when none are given)."""
        env = os.environ if environ is None else environ
        home = Path(env[ENV_HOME]).expanduser() if env.get(ENV_HOME) else default_home()
        store = Path(env[ENV_STORE]).expanduser() if env.get(ENV_STORE) else None
        max_pixels = DEFAULT_MAX_PIXELS
        if env.get(ENV_MAX_PIXELS):
            try:
                max_pixels = int(env[ENV_MAX_PIXELS])
            except ValueError:
                raise ConfigError(f"{ENV_MAX_PIXELS} must be an integer, got {env[ENV_MAX_PIXELS]!r}") from None
            if max_pixels <= 0:
                raise ConfigError(f"{ENV_MAX_PIXELS} must be positive, got {max_pixels}")
        url = env.get(ENV_DATABASE_URL) or None
        if url and not url.startswith(_URL_PREFIXES):
            raise ConfigError(f"{ENV_DATABASE_URL} must start with postgresql://, got {url.split(':', 1)[0]}://...")
        replicas = tuple(u.strip() for u in env.get(ENV_REPLICA_URLS, "").split(",") if u.strip())
        for r in replicas:
            if not r.startswith(_URL_PREFIXES):
                raise ConfigError(f"{ENV_REPLICA_URLS} entries must start with postgresql://, got {r.split(':', 1)[0]}://...")
        return cls(home=home, database_url=url, store_dir=store, max_pixels=max_pixels, replica_urls=replicas)
