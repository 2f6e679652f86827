"""Pooled PostgreSQL connections at checkout, on the real local server: one the server has ended is replaced
before the caller's statement runs."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, create_engine, text

from agent_service.config import Settings
from agent_service.database import make_engine
from tests.integration.conftest import PG_ROOT


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    """An engine as the service makes it, with a pool of one connection."""
    made = make_engine(settings.model_copy(update={"db_pool_size": 1, "db_max_overflow": 0}))
    yield made
    made.dispose()


@pytest.fixture
def admin() -> Iterator[Engine]:
    made = create_engine(f"{PG_ROOT}/postgres", isolation_level="AUTOCOMMIT")
    yield made
    made.dispose()


def _backend_of(engine: Engine) -> int:
    with engine.connect() as connection:
        pid = connection.scalar(text("SELECT pg_backend_pid()"))
        connection.commit()
    return int(pid)


def _backend_alive(admin: Engine, pid: int) -> bool:
    with admin.connect() as connection:
        return bool(connection.scalar(text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid"), {"pid": pid}))


def test_a_pooled_connection_the_server_ended_is_replaced_before_the_callers_statement(engine: Engine, admin: Engine):
    pid = _backend_of(engine)
    with admin.connect() as connection:
        assert connection.scalar(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    deadline = time.monotonic() + 10
    while _backend_alive(admin, pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    with engine.connect() as connection:
        replaced = connection.scalar(text("SELECT pg_backend_pid()"))
    assert replaced != pid
