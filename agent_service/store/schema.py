"""The database schema: applying the Alembic migrations under migrations/."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def init_db(database_url: str | None = None) -> None:
    """Apply every migration to the configured database (or to `database_url`); the package carries them, so
    this works from an installed package as from the checkout (whose alembic.ini serves the `alembic` CLI)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["configure_logger"] = False
    if database_url:
        engine = create_engine(database_url, poolclass=NullPool)  # nothing left connected afterwards
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
        engine.dispose()
        return
    command.upgrade(config, "head")
