"""Database: the URL SQLAlchemy connects to, its connection pool and the time a statement may take."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, field_validator

# The embedded defaults (SQLite files, the filesystem broker) live in `.local` of the directory a command runs
# from, as `.env` is read from there: a checkout's root for `make demo`, a project's own folder once installed.
LOCAL_DATA_DIR = Path.cwd().resolve() / ".local"
# One PostgreSQL driver, psycopg2 (pinned in requirements.txt), whichever of these a URL names: SQLAlchemy
# maps a bare `postgresql://` to psycopg 3, and the libpq options a URL carries mean the same to both.
POSTGRES_DRIVER = "postgresql+psycopg2"
POSTGRES_SCHEMES = ("postgresql", "postgres", "postgresql+psycopg2", "postgresql+psycopg")
SQLITE_SCHEMES = ("sqlite", "sqlite+pysqlite")


class DatabaseSettings(BaseModel):
    """Database: where task rows live, PostgreSQL in production and a SQLite file with no configuration."""

    database_url: str = Field(
        f"sqlite:///{LOCAL_DATA_DIR / 'agent_service.sqlite3'}",
        description="postgresql://user:password@host:5432/name (postgres://, postgresql+psycopg2:// and "
        "postgresql+psycopg:// too, all run on psycopg2), or sqlite:///path for the embedded set-up",
    )
    db_pool_size: int = Field(5, ge=1, description="connections each worker process keeps open to PostgreSQL")
    db_max_overflow: int = Field(10, ge=0, description="connections opened beyond DB_POOL_SIZE at busy moments")
    db_statement_timeout_seconds: float = Field(
        30.0, ge=0, description="PostgreSQL statement_timeout; bounds a batch's queries (0: none)"
    )

    @field_validator("database_url")
    @classmethod
    def _database_url_has_a_driver_we_ship(cls, url: str) -> str:
        """PostgreSQL URLs in any of the usual spellings, normalised to psycopg2; SQLite URLs as they are.
        The message names only the scheme: the rest of the URL may hold a password."""
        scheme, separator, rest = url.strip().partition("://")
        if not separator:
            raise ValueError("DATABASE_URL is not a URL; expected postgresql://user:password@host:5432/name")
        scheme = scheme.lower()
        if scheme in SQLITE_SCHEMES:
            return url.strip()
        if scheme not in POSTGRES_SCHEMES:
            raise ValueError(
                f"DATABASE_URL has scheme {scheme!r}; expected postgresql:// (also postgres://, "
                "postgresql+psycopg2://, postgresql+psycopg://) or sqlite:///path"
            )
        try:
            urlsplit(f"{POSTGRES_DRIVER}://{rest}").port  # noqa: B018  (raises ValueError on a bad port)
        except ValueError:
            raise ValueError("DATABASE_URL has an invalid port; expected host:5432 or host alone") from None
        return f"{POSTGRES_DRIVER}://{rest}"
