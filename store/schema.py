"""The database schema: applying the Alembic migrations under migrations/."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

ROOT = Path(__file__).resolve().parent.parent


def init_db(database_url: str | None = None) -> None:
    """Apply every migration to the configured database (or to `database_url`)."""
    config = Config(str(ROOT / "alembic.ini"))
    config.attributes["configure_logger"] = False
    if database_url:
        engine = create_engine(database_url, poolclass=NullPool)  # nothing left connected afterwards
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
        engine.dispose()
        return
    command.upgrade(config, "head")
