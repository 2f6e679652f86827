"""Alembic environment: migrates the database named by Settings, or a connection handed in."""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context

from agent_service.config import get_settings
from agent_service.database import make_engine
from agent_service.models import Base

if context.config.config_file_name and context.config.attributes.get("configure_logger", True):
    fileConfig(context.config.config_file_name, disable_existing_loggers=False)


def run_migrations_offline() -> None:
    context.configure(url=get_settings().database_url, target_metadata=Base.metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _migrate(connection)
        return
    with make_engine(get_settings()).connect() as connection:
        _migrate(connection)


def _migrate(connection) -> None:
    context.configure(
        connection=connection, target_metadata=Base.metadata, render_as_batch=connection.dialect.name == "sqlite"
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
