"""One scrape serves every process of a worker (prometheus_client's multiprocess mode): a prefork worker's
four pool children and their LLM processes each write their metrics to the worker's folder, and the main
process's exporter adds them up."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import redis
from prometheus_client.multiprocess import MultiProcessCollector

from agent_service.devtools.processes import celery_worker
from agent_service.tasks import create_agent_tasks
from tests.integration.conftest import IDLE_REDIS, LOG_DIR
from tests.prometheus import free_port, scrape, total
from tests.support import add_agent, wait_for_final, wait_until

TASKS = 100
MODEL = "gpt-4o-mini"


class PreforkWorker:
    def __init__(self, process: psutil.Process, port: int, files: Path) -> None:
        self.process, self.port, self.files = process, port, files

    def pool_children(self) -> list[psutil.Process]:
        """The pool's live children (a child just killed may linger as a zombie, without a command line)."""
        children = []
        for child in self.process.children():
            try:
                if "llm.process" not in " ".join(child.cmdline()):
                    children.append(child)
            except (psutil.ZombieProcess, psutil.NoSuchProcess):
                continue
        return children


@pytest.fixture(scope="module")
def prefork_worker(idle_app, settings, tmp_path_factory) -> Iterator[PreforkWorker]:
    """A prefork worker with 4 children reading the idle app's broker (which no other worker reads), with
    the breaker on and a rate limit that makes calls wait for slots reserved ahead (never long enough to be
    deferred), in batches of one task. Its metric folder holds a file left by an earlier run."""
    redis.Redis.from_url(IDLE_REDIS).flushdb()
    files = tmp_path_factory.mktemp("metrics")
    (files / "counter_999999.db").write_bytes(b"\0" * 8)
    port = free_port()
    env = {
        **settings.as_env(),
        "REDIS_URL": IDLE_REDIS,
        "METRICS_PORT": str(port),
        "METRICS_MULTIPROCESS_DIR": str(files),
        "BREAKER_ENABLED": "true",
        "RATE_LIMITS_ENABLED": "true",
        "LLM_RATE_LIMITS": json.dumps({MODEL: {"rpm": 600}}),
        "BATCH_MAX_SIZE": "1",
    }
    log = LOG_DIR / "metrics-prefork.log"
    with celery_worker(env=env, log_path=log, name="metrics-prefork", pool="prefork", concurrency=4) as process:
        yield PreforkWorker(psutil.Process(process.pid), port, files)


def per_process(files: Path, name: str) -> dict[int, float]:
    """`name`'s total in each process's counter file, by process id."""
    found = {}
    for path in files.glob("counter_*.db"):
        [metric] = [m for m in MultiProcessCollector.merge([str(path)]) if m.name == name] or [None]
        if metric is not None:
            found[int(path.stem.split("_")[-1])] = sum(s.value for s in metric.samples if s.name.endswith("_total"))
    return found


def test_one_scrape_shows_the_tasks_of_every_pool_child_and_the_calls_of_every_llm_process(
    prefork_worker, idle_app, session_factory, llm_url
):
    # Given a prefork worker with 4 children, When it runs 100 tasks
    agent = add_agent(session_factory)
    items = [{"title": f"every process #{n}", "agent_id": str(agent.id), "user_id": "u1"} for n in range(TASKS)]
    wait_for_final(session_factory, create_agent_tasks(items, app=idle_app), timeout=120)

    # Then one scrape of its exporter counts all 100, with the LLM processes' calls by status, the tokens,
    # the cost, the rate limit's waits and the breaker's state
    samples = scrape(prefork_worker.port)
    assert total(samples, "agent_service_task_runs_total", task="agent_task") == TASKS
    assert total(samples, "agent_service_task_runs_total", task="agent_task", status="completed") == TASKS
    assert total(samples, "agent_service_llm_requests_total", model=MODEL, status="200") == TASKS
    assert total(samples, "agent_service_llm_tokens_total", model=MODEL, kind="prompt") > 0
    assert total(samples, "agent_service_llm_cost_usd_total", model=MODEL) > 0
    assert total(samples, "agent_service_rate_limit_wait_seconds_count", model=MODEL) > 0
    provider = llm_url.removeprefix("http://")
    assert samples[("agent_service_breaker_open", frozenset({("provider", provider), ("model", MODEL)}))] == 0
    assert total(samples, "agent_service_worker_up") == 1
    assert total(samples, "agent_service_dependency_up") == 3  # database, broker and Redis all read

    # And the tasks were counted by several pool children, the calls by LLM processes apart from them
    runners = per_process(prefork_worker.files, "agent_service_task_runs")
    callers = per_process(prefork_worker.files, "agent_service_llm_requests")
    assert len([pid for pid, count in runners.items() if count]) >= 2
    assert len([pid for pid, count in callers.items() if count]) >= 2 and not set(callers) & set(runners)
    # and the file an earlier run left was emptied out at start
    assert 999999 not in runners and not (prefork_worker.files / "counter_999999.db").exists()


def test_a_pool_child_killed_leaves_its_counts_in_the_scrape(prefork_worker, idle_app, session_factory):
    # Given the counts of the tasks run so far
    agent = add_agent(session_factory)
    items = [{"title": f"before a kill #{n}", "agent_id": str(agent.id), "user_id": "u1"} for n in range(8)]
    wait_for_final(session_factory, create_agent_tasks(items, app=idle_app), timeout=60)
    before = total(scrape(prefork_worker.port), "agent_service_task_runs_total", task="agent_task")
    # When a pool child that counted some of them is killed and replaced
    runners = per_process(prefork_worker.files, "agent_service_task_runs")
    victim = next(child for child in prefork_worker.pool_children() if runners.get(child.pid))
    os.kill(victim.pid, signal.SIGKILL)
    wait_until(
        lambda: (
            victim.pid not in {c.pid for c in prefork_worker.pool_children()}
            and len(prefork_worker.pool_children()) == 4
        ),
        what="pool child replaced",
    )
    # Then the scrape still counts what it ran
    assert total(scrape(prefork_worker.port), "agent_service_task_runs_total", task="agent_task") == before
