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
        if url and not url.startswith(("postgresql://", "postgres://", "postgresql+psycopg://")):
            raise ConfigError(f"{ENV_DATABASE_URL} must start with postgresql://, got {url.split(':', 1)[0]}://...")
        return cls(home=home, database_url=url, store_dir=store, max_pixels=max_pixels)
