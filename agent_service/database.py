"""Engine, session factory and the one-transaction session scope."""

from __future__ import annotations

import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import URL, Engine, create_engine, event, make_url, text
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry, NullPool

from agent_service.config import Settings
from agent_service.errors import ConfigurationError

MAINTENANCE_DATABASE = "postgres"
CONNECT_TIMEOUT_SECONDS = 10


def make_engine(settings: Settings) -> Engine:
    """An engine for `settings.database_url`, pooled and checked for stale connections."""
    url = settings.database_url
    if url.startswith("sqlite"):
        _create_parent_folder(url)
        engine = create_engine(url, connect_args={"timeout": 30})
        event.listen(engine, "connect", _enable_sqlite_wal)
        return engine
    return create_engine(
        url,
        connect_args=_postgres_connect_args(settings),
        pool_pre_ping=True,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_recycle=1800,
    )


def make_lease_engine(settings: Settings) -> Engine:
    """An engine of its own for renewing a liveness lease, with no pool: a renewal never waits behind the tasks'
    connections, and each one opens a fresh connection, so none is left half-open by a network cut. On
    PostgreSQL a renewal that hears nothing back for WORKER_LEASE_SECONDS fails (TCP user timeout), to be
    tried again, rather than waiting for TCP to give up (minutes)."""
    url = settings.database_url
    if url.startswith("sqlite"):
        return create_engine(url, poolclass=NullPool, connect_args={"timeout": 30})
    connect_args = _postgres_connect_args(settings)
    connect_args["tcp_user_timeout"] = int(settings.worker_lease_seconds * 1000)
    return create_engine(url, poolclass=NullPool, connect_args=connect_args)


def _postgres_connect_args(settings: Settings) -> dict[str, object]:
    # The threads pool enforces no Celery time limit: the LLM timeout and this one bound an attempt. A session
    # left idle in a transaction that long (its worker cut off mid-transaction) is ended by the server, so the
    # row locks it holds do not keep its tasks from being taken over.
    timeout_ms = int(settings.db_statement_timeout_seconds * 1000)
    timeouts = f"-c statement_timeout={timeout_ms} -c idle_in_transaction_session_timeout={timeout_ms}"
    connect_args: dict[str, object] = {"options": timeouts} if timeout_ms else {}
    if "connect_timeout" not in make_url(settings.database_url).query:
        # libpq waits for a host that drops packets as long as TCP does (minutes) unless told otherwise.
        connect_args["connect_timeout"] = CONNECT_TIMEOUT_SECONDS
    return connect_args


def create_empty_database(server_url: str, name: str) -> str:
    """Drop and create database `name` on the PostgreSQL server at `server_url`; returns its URL.
    For tests and benchmarks, which each want a database of their own."""
    admin = create_engine(f"{server_url}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return f"{server_url}/{name}"


def create_database_if_missing(database_url: str) -> str | None:
    """Create the PostgreSQL database `database_url` names when the server does not have it yet, from the
    server's `postgres` maintenance database; returns its name when it was created. SQLite needs nothing:
    it creates its file on first use.
    Raises: ConfigurationError, with the command an administrator can run, when this role may not create
    it; OperationalError when the database cannot be reached for any other reason."""
    url = make_url(database_url)
    if url.get_backend_name() != "postgresql":
        return None
    try:
        _connect_once(url)
        return None
    except OperationalError as unreachable:
        if _database_exists(url.set(database=MAINTENANCE_DATABASE), url.database) is not False:
            raise unreachable  # the server is down, or the database is there and refuses us: nothing to create
    _create_database(url)
    return url.database


def _connect_once(url: URL) -> None:
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect():
            pass
    finally:
        engine.dispose()


def _database_exists(maintenance_url: URL, name: str | None) -> bool | None:
    """Whether the server has database `name`; None when its maintenance database does not answer either."""
    engine = create_engine(maintenance_url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            return bool(connection.scalar(text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": name}))
    except OperationalError:
        return None
    finally:
        engine.dispose()


def _create_database(url: URL) -> None:
    name = url.database or ""
    engine = create_engine(url.set(database=MAINTENANCE_DATABASE), poolclass=NullPool, isolation_level="AUTOCOMMIT")
    quote = engine.dialect.identifier_preparer.quote
    try:
        with engine.connect() as connection:
            connection.execute(text(f"CREATE DATABASE {quote(name)}"))
    except DBAPIError as exc:
        reason = str(exc.orig).strip().splitlines()[0]
        where = [*(["-h", url.host] if url.host else []), *(["-p", str(url.port)] if url.port else [])]
        owner = ["--owner", url.username] if url.username else []
        createdb = shlex.join(["createdb", *where, "-U", "postgres", *owner, name])
        sql = f"CREATE DATABASE {quote(name)}{f' OWNER {quote(url.username)}' if url.username else ''};"
        raise ConfigurationError(
            f"database {url.database!r} does not exist and role {url.username!r} may not create it ({reason}); "
            f"an administrator can run `{createdb}` or, in psql, {sql}"
        ) from None
    finally:
        engine.dispose()


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
