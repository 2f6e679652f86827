"""The circuit breaker with two real workers sharing it through Redis, against the bundled LLM server's
injected faults: after a burst of failures no worker calls the model until one probe has succeeded, tasks
wait without spending attempts and then complete; an authentication error opens it at once; an agent's
fallback model answers while its own model's breaker is open, and the row says so."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from agent_service.admission.breaker import KEY_PREFIX
from agent_service.database import session_scope
from agent_service.devtools.processes import celery_worker
from agent_service.models import Agent, Task, TaskStatus
from agent_service.tasks import create_agent_tasks
from tests.integration.conftest import IDLE_REDIS, LOG_DIR
from tests.support import run_cli, wait_for_final, wait_until

COOLDOWN = 6.0
PROBE_MS = 1500  # the probe is slowed down so that any call made beside it would show


@pytest.fixture(scope="module")
def workers(idle_app, settings, session_factory) -> Iterator[None]:
    """Two workers with the breaker on (at least 4 calls, half of them failed, opens it for COOLDOWN),
    reading the idle app's broker, which no other worker reads."""
    redis.Redis.from_url(IDLE_REDIS).flushdb()
    env = {
        **settings.as_env(),
        "REDIS_URL": IDLE_REDIS,
        "BREAKER_ENABLED": "true",
        "BREAKER_MIN_CALLS": "4",
        "BREAKER_FAILURE_RATIO": "0.5",
        "BREAKER_COOLDOWN_SECONDS": str(COOLDOWN),
        "TASK_MAX_ATTEMPTS": "5",
        "WORKER_CONCURRENCY": "16",
        "LLM_CONCURRENCY": "16",
    }
    logs = Path(LOG_DIR)
    with (
        celery_worker(env=env, log_path=logs / "breaker-a.log", name="breaker-a"),
        celery_worker(env=env, log_path=logs / "breaker-b.log", name="breaker-b"),
    ):
        # A worker's first LLM call can take seconds on a loaded host (its client is built on first use): warm
        # both (each takes at most 16 of these), so that a call's arrival at the server follows its admission.
        warm_up = submit(idle_app, new_agent(session_factory), "warm-up", 40)
        wait_for_final(session_factory, warm_up, timeout=90)
        yield


@pytest.fixture
def provider(llm_url: str) -> str:
    return llm_url.removeprefix("http://")


def new_agent(session_factory, *, fallback: str | None = None) -> Agent:
    """An agent with a model name of its own, so that its breaker is the test's alone."""
    with session_scope(session_factory) as session:
        agent = Agent(
            name=f"breaker-{uuid.uuid4().hex[:8]}",
            prompt="Be brief.",
            model=f"model-{uuid.uuid4().hex[:8]}",
            fallback_model=fallback,
            temperature=0.1,
            max_tokens=50,
        )
        session.add(agent)
    return agent


def submit(idle_app, agent: Agent, token: str, count: int) -> list[str]:
    items = [{"title": f"{token} #{n}", "agent_id": str(agent.id), "user_id": "u1"} for n in range(count)]
    return create_agent_tasks(items, app=idle_app)


def rows(session_factory, task_ids: list[str]) -> list[Task]:
    with session_scope(session_factory) as session:
        return session.query(Task).filter(Task.id.in_([uuid.UUID(i) for i in task_ids])).all()


def open_until(provider: str, model: str) -> float | None:
    """When the model's breaker ends its cool-down (Unix time), or None while it is closed."""
    found = redis.Redis.from_url(IDLE_REDIS).hget(f"{KEY_PREFIX}{provider}|{model}", "open_until")
    return None if found is None else int(found) / 1000


def waiting_for_the_breaker(session_factory, task_ids: list[str], reason: str) -> bool:
    return all(
        row.status is TaskStatus.QUEUED and (row.waiting_reason or "").startswith(reason)
        for row in rows(session_factory, task_ids)
    )


def test_after_a_burst_of_failures_no_worker_calls_the_model_until_one_probe_succeeds(
    workers, idle_app, session_factory, llm, provider
):
    agent, token = new_agent(session_factory), f"burst-{uuid.uuid4().hex[:8]}"
    # Given the model failing every call (503)
    outage = llm.add_fault(fault="503", match=token)
    # When a burst of tasks meets it on two workers
    burst = submit(idle_app, agent, token, 6)
    wait_until(lambda: open_until(provider, agent.model) is not None, what="open breaker", timeout=30)
    reopens_at = open_until(provider, agent.model)
    # Then the breaker opens; tasks wait for it, saying why, their failed attempt their only one spent
    reason = f"breaker open for {agent.model} at {provider}: "
    late = submit(idle_app, agent, token, 1)  # and a task submitted meanwhile waits too, no attempt spent
    wait_until(lambda: waiting_for_the_breaker(session_factory, burst + late, reason), what="waiting tasks")
    # When the model recovers during the cool-down, the first call after it slowed down
    llm.http.delete(f"/control/faults/{outage}").raise_for_status()
    llm.add_fault(fault="slow", match=token, times=1, delay_ms=PROBE_MS)
    calls_before = len(llm.requests(token))
    opened_at = reopens_at - COOLDOWN
    # (the burst's calls, and retries that started before it opened)
    early = [(round(call["at"] - opened_at, 3), call["status"]) for call in llm.requests(token)]
    assert all(at < 1.0 for at, _ in early), early
    spent = {str(row.id): row.attempts for row in rows(session_factory, burst + late)}
    assert spent[late[0]] == 0 and all(spent[task_id] >= 1 for task_id in burst)
    done = wait_for_final(session_factory, burst + late, timeout=90)
    # Then no call was made while the breaker was open; one probe went first, alone, and then the rest
    calls = llm.requests(token)[calls_before:]
    assert len(calls) == 7  # one completed call per task, no more
    probe, after = calls[0], calls[1:]
    assert probe["at"] >= reopens_at - 0.05
    assert min(call["at"] for call in after) >= probe["at"] + PROBE_MS / 1000 - 0.1
    # And every task completed, on its model, having spent one more attempt than it had when it waited
    assert {row.status for row in done.values()} == {TaskStatus.COMPLETED}
    assert all(done[task_id].attempts == spent[task_id] + 1 for task_id in spent)
    assert {(row.model, row.waiting_reason) for row in done.values()} == {(agent.model, None)}


def test_an_authentication_error_opens_the_breaker_at_once(workers, idle_app, session_factory, settings, llm, provider):
    agent, token = new_agent(session_factory), f"auth-{uuid.uuid4().hex[:8]}"
    # Given a key the provider refuses
    refused = llm.add_fault(fault="401", match=token)
    # When one task's call is refused
    [first] = submit(idle_app, agent, token, 1)
    wait_until(lambda: open_until(provider, agent.model) is not None, what="open breaker", timeout=30)
    # Then the breaker is open after that single call, and the next tasks wait without calling
    later = submit(idle_app, agent, token, 3)
    reason = f"breaker open for {agent.model} at {provider}: LLM request failed (401)"
    wait_until(lambda: waiting_for_the_breaker(session_factory, later, reason), what="waiting tasks")
    assert len(llm.requests(token)) == 1
    # And `python cli.py status` shows why they wait
    status = run_cli(settings.model_copy(update={"redis_url": IDLE_REDIS}), "status", later[0])
    assert f"waiting_reason {reason}" in " ".join(status.stdout.split())
    # And once the key is accepted again, the probe after the cool-down closes it and they complete
    llm.http.delete(f"/control/faults/{refused}").raise_for_status()
    done = wait_for_final(session_factory, later, timeout=60)
    assert {(row.status, row.attempts) for row in done.values()} == {(TaskStatus.COMPLETED, 1)}
    calls = llm.requests(token)
    # (a probe may have met the refused key again, if the cool-down ended before it was accepted)
    assert calls[0]["status"] == 401 and [call["status"] for call in calls].count(200) == 3
    [failed] = rows(session_factory, [first])
    assert failed.status is TaskStatus.FAILED and "(401)" in failed.error


def test_while_its_model_is_open_the_fallback_model_answers_and_the_row_says_so(
    workers, idle_app, session_factory, llm, provider
):
    agent = new_agent(session_factory, fallback="gpt-4o")
    token = f"fallback-{uuid.uuid4().hex[:8]}"
    # Given an outage of the agent's own model, and its fallback up
    outage = llm.add_fault(fault="503", model=agent.model)
    try:
        # When its tasks fail there until the breaker opens, and more are submitted while it is open
        first = submit(idle_app, agent, token, 6)
        wait_until(lambda: open_until(provider, agent.model) is not None, what="open breaker", timeout=30)
        more = submit(idle_app, agent, token, 4)
        done = wait_for_final(session_factory, first + more, timeout=60)
    finally:
        llm.http.delete(f"/control/faults/{outage}").raise_for_status()
    # Then every task completed, answered by the fallback; those submitted while open called only it
    assert {(row.status, row.model) for row in done.values()} == {(TaskStatus.COMPLETED, "gpt-4o")}
    assert {row.attempts for task_id, row in done.items() if task_id in more} == {1}
    calls = llm.requests(token)
    answered = [call["model"] for call in calls if call["status"] == 200]
    assert answered == ["gpt-4o"] * 10
    assert all(call["model"] == agent.model for call in calls if call["status"] != 200)
