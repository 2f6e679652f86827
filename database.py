"""Engine, session factory and the one-transaction session scope."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, make_url, text
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry

from config import Settings


def make_engine(settings: Settings) -> Engine:
    """An engine for `settings.database_url`, pooled and checked for stale connections."""
    url = settings.database_url
    if url.startswith("sqlite"):
        _create_parent_folder(url)
        engine = create_engine(url, connect_args={"timeout": 30})
        event.listen(engine, "connect", _enable_sqlite_wal)
        return engine
    # The threads pool enforces no Celery time limit: the LLM timeout and this one bound an attempt.
    timeout_ms = int(settings.db_statement_timeout_seconds * 1000)
    connect_args = {"options": f"-c statement_timeout={timeout_ms}"} if timeout_ms else {}
    return create_engine(
        url,
        connect_args=connect_args,
        pool_pre_ping=True,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_recycle=1800,
    )


def create_empty_database(server_url: str, name: str) -> str:
    """Drop and create database `name` on the PostgreSQL server at `server_url`; returns its URL.
    For tests and benchmarks, which each want a database of their own."""
    admin = create_engine(f"{server_url}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return f"{server_url}/{name}"


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    # expire_on_commit=False: values read in a scope stay usable after it closes the connection.
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def session_scope(session_factory: sessionmaker[Session]) -> Iterator[Session]:
    """One short transaction: commit on success, roll back on error, always release the connection."""
    with session_factory() as session, session.begin():
        yield session


def _create_parent_folder(sqlite_url: str) -> None:
    # SQLite creates the file on first use, but not the folder it goes in.
    database = make_url(sqlite_url).database
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)


def _enable_sqlite_wal(dbapi_connection: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
    # The demo's client and worker processes share the file; WAL lets them read while one writes.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
