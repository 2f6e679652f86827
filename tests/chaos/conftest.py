"""Chaos fixtures: a private PostgreSQL cluster and private Redis servers that scenarios may kill, the
test's broker (Redis, or a RabbitMQ vhost for the tests parametrized over BROKERS), a scenario factory with its
own workers, and the results table printed at the end of the run."""

from __future__ import annotations

import io
import uuid
from collections.abc import Callable, Iterator

import pytest
from rich.console import Console
from rich.table import Table

from agent_service.store.schema import init_db
from tests.chaos.harness import REDIS, RESULTS_JSON, SCALE, Scenario, chaos_settings, load_results
from tests.chaos.services import PostgresCluster, RabbitVhost, RedisServer

_ran_chaos = False


@pytest.fixture(scope="session", autouse=True)
def fresh_results() -> None:
    global _ran_chaos
    _ran_chaos = True
    RESULTS_JSON.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def pg() -> Iterator[PostgresCluster]:
    cluster = PostgresCluster()
    cluster.init()
    try:
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture(scope="module")
def chaos_db(pg: PostgresCluster) -> str:
    """A fresh, migrated database for the test module on the private cluster; returns its name."""
    name = f"chaos_{uuid.uuid4().hex[:8]}"
    init_db(pg.create_database(name))
    return name


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    """The module's private broker and result backend; a test that kills it starts it again."""
    with RedisServer.running() as server:
        yield server


@pytest.fixture
def broker(request, redis_server) -> Iterator[RedisServer | RabbitVhost]:
    """The test's broker: the module's private Redis, or (for a test parametrized with BROKERS) a RabbitMQ
    vhost of its own, with Redis still holding results and the shared controls."""
    if getattr(request, "param", REDIS) == REDIS:
        yield redis_server
        return
    with RabbitVhost.created() as vhost:
        yield vhost


@pytest.fixture(scope="module")
def build_scenario(pg, chaos_db, redis_server, llm_url, llm) -> Callable[..., Scenario]:
    """Makes a Scenario on the module's database and an emptied private Redis (with `broker`, a RabbitMQ
    vhost as the broker), with the shared LLM server."""

    def build(name: str, *, broker: RedisServer | RabbitVhost | None = None, **overrides) -> Scenario:
        redis_server.client().flushall()  # private server: nothing of an earlier test may be delivered
        if isinstance(broker, RabbitVhost):
            name, overrides = f"{name} [RabbitMQ]", {"celery_broker_url": broker.url(), **overrides}
        settings = chaos_settings(
            database_url=pg.url(chaos_db), redis_url=redis_server.url(), llm_url=llm_url, **overrides
        )
        return Scenario(name, settings, llm)

    return build


@pytest.fixture
def scenario(build_scenario, broker) -> Iterator[Callable[..., Scenario]]:
    """Builds the test's Scenario on the test's broker; its workers are stopped when the test ends."""
    made: list[Scenario] = []

    def make(name: str, **overrides) -> Scenario:
        made.append(build_scenario(name, broker=broker, **overrides))
        return made[-1]

    yield make
    for built in made:
        built.close()


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    rows = load_results() if _ran_chaos else []
    if not rows:
        return
    text = results_table_text(rows)
    RESULTS_JSON.with_suffix(".txt").write_text(text)
    terminalreporter.write_sep("=", f"chaos results ({SCALE}); saved to {RESULTS_JSON.with_suffix('.txt')}")
    terminalreporter.write(text)


def results_table_text(rows: list[dict]) -> str:
    table = Table(title=f"Chaos scenarios ({SCALE} size)")
    headers = (
        "scenario",
        "tasks",
        "completed",
        "failed (error recorded)",
        "lost",
        "duplicate completions",
        "LLM calls",
        "extra LLM calls",
        "calls repeated after crash",
        "time to resume",
        "wall time",
    )
    for header in headers:
        table.add_column(header, justify="left" if header == "scenario" else "right")
    for row in rows:
        table.add_row(
            row["scenario"],
            *(
                str(row[key])
                for key in ("tasks", "completed", "failed", "lost", "duplicates", "llm_calls", "extra_llm_calls")
            ),
            "-" if row.get("repeated_calls") is None else str(row["repeated_calls"]),
            "-" if row.get("recovery_seconds") is None else f"{row['recovery_seconds']} s",
            f"{row['seconds']} s",
        )
    console = Console(record=True, width=160, file=io.StringIO())
    console.print(table)
    return console.export_text()
