"""The shared admission controls with real worker processes, on a private Redis and the bundled LLM
server enforcing its own limits: workers at full load stay under a rate limit set below the server's,
never meet a 429 and keep the limit's pace; a pause stops every new call and a resume runs every task."""

from __future__ import annotations

import contextlib
import json
import statistics
import time
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager

import httpx
import pytest

from agent_service.database import session_scope
from agent_service.devtools.processes import busy_core, celery_worker, llm_server
from agent_service.models import Task, TaskStatus
from agent_service.tasks import create_agent_tasks
from agent_service.worker import create_celery_app
from tests.chaos.services import RedisServer
from tests.integration.conftest import LOG_DIR
from tests.support import run_cli, wait_for_final, wait_until

CONFIGURED_RPM = 540  # ours: 9 calls a second, a burst of 9
SERVER_RPM = 600  # the provider's (the bundled server's): 10 a second, a bucket of one second, as OpenAI smooths
MEASURED_TASKS = 150  # 17 s of our limit
TOKENS_PER_MINUTE = 120_000  # ours and the provider's alike: about 8 calls a second of the bench agent


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    """A Redis of the test's own: no other worker reads its broker, and its limits start empty."""
    with RedisServer.running() as server:
        yield server


@pytest.fixture
def busy_machine() -> Iterator[None]:
    """One core spinning for the test: workers wake late from their sleeps, as on a loaded host."""
    with busy_core():
        yield


def limited_llm_server(limits: dict) -> AbstractContextManager[str]:
    """An LLM server that answers 429 beyond `limits` for the model, at 200 ms a call, ahead of the busy host
    (it stands for a provider elsewhere: its clock must see the calls as they were sent)."""
    return llm_server(
        latency_ms=200, extra_args=("--rate-limits", json.dumps({"gpt-4o-mini": limits})), ahead_of_the_host=True
    )


def submit(app, agent, count: int, token: str) -> list[str]:
    items = [{"title": f"{token} #{i:04d}", "agent_id": str(agent.id), "user_id": "u1"} for i in range(count)]
    return create_agent_tasks(items, app=app)


def run_three_workers(settings, agent, redis_url: str, llm_url: str, limit: dict, **more) -> tuple[dict, list[float]]:
    """MEASURED_TASKS tasks submitted at once to three workers sharing `limit` for the model; every task
    final, returns the server's stats and when it received each call."""
    limited = settings.model_copy(
        update={
            "redis_url": redis_url,
            "openai_base_url": f"{llm_url}/v1",
            "rate_limits_enabled": True,
            "worker_concurrency": 64,
            **more,
        }
    )
    env = {**limited.as_env(), "LLM_RATE_LIMITS": json.dumps({"gpt-4o-mini": limit})}
    app = create_celery_app(limited)
    token = f"rate-{uuid.uuid4().hex[:8]}"
    log = LOG_DIR / "rate-limited"
    with contextlib.ExitStack() as workers:
        for name in "abc":
            workers.enter_context(celery_worker(env=env, log_path=log / f"{name}.log", name=f"rate-{name}"))
        ids = submit(app, agent, MEASURED_TASKS, token)
        rows = wait_for_final(app.services.session_factory, ids, timeout=180)
    app.services.engine.dispose()
    assert {(row.status, row.attempts) for row in rows.values()} == {(TaskStatus.COMPLETED, 1)}
    stats = httpx.get(f"{llm_url}/control/stats").json()
    received = httpx.get(f"{llm_url}/control/requests", params={"match": token}).json()["requests"]
    return stats, sorted(r["at"] for r in received)


def test_three_workers_on_a_busy_machine_keep_the_rate_limit_with_no_429(settings, agent, private_redis, busy_machine):
    # Given three workers sharing 540 requests a minute against a provider enforcing 600, one core busy
    with limited_llm_server({"rpm": SERVER_RPM}) as url:
        # When 150 tasks (17 s of the limit) are submitted at once
        stats, received = run_three_workers(settings, agent, private_redis.url(), url, {"rpm": CONFIGURED_RPM})
    # Then the server refused none
    # the pace is the slope of calls over time past the first burst, not the span between two calls: each call
    # may leave up to RATE_LIMIT_LATE_SECONDS after its slot, which at the ends of a 14 s span reads as 2%
    sustained = statistics.linear_regression(received[20:], range(len(received) - 20)).slope * 60
    print(f"\nsustained {sustained:.1f} requests/min for a limit of {CONFIGURED_RPM}, {stats['rate_limited']} 429s")
    assert (stats["rate_limited"], stats["by_status"].get("429", 0)) == (0, 0)
    # and past the first burst the calls kept at least 95% of the configured pace, never above it
    assert 0.95 * CONFIGURED_RPM <= sustained <= 1.02 * CONFIGURED_RPM


def test_a_tokens_limit_equal_to_the_providers_meets_no_429(settings, agent, private_redis, busy_machine):
    # Given three workers sharing the provider's own tokens per minute, which counts each call's max_tokens
    # on arrival, one core busy
    with limited_llm_server({"tpm": TOKENS_PER_MINUTE}) as url:
        # When 150 tasks are submitted at once
        stats, received = run_three_workers(settings, agent, private_redis.url(), url, {"tpm": TOKENS_PER_MINUTE})
    # Then every task completed at its first attempt and the server refused none
    print(f"\n{len(received) / (received[-1] - received[0]) * 60:.1f} calls/min, {stats['rate_limited']} 429s")
    assert (stats["rate_limited"], stats["by_status"].get("429", 0)) == (0, 0)


def test_a_pause_stops_new_calls_within_a_second_and_a_resume_runs_every_task(settings, agent, private_redis, llm):
    # Given a worker that obeys pauses, and the service paused
    pausable = settings.model_copy(update={"redis_url": private_redis.url(), "pause_enabled": True})
    app = create_celery_app(pausable)
    token = f"pause-{uuid.uuid4().hex[:8]}"
    with celery_worker(env=pausable.as_env(), log_path=LOG_DIR / "paused.log", name="paused"):
        assert (
            submit(app, agent, 1, f"{token} before")
            and wait_until(lambda: len(llm.requests(f"{token} before")) == 1, what="a call before the pause") is None
        )
        paused = run_cli(pausable, "pause")
        assert paused.returncode == 0 and "paused since" in paused.stdout
        time.sleep(1.0)
        # When tasks are submitted while paused
        ids = submit(app, agent, 20, token)
        # Then none calls the model: they wait, their attempts unspent, and `status` says why
        wait_until(lambda: _waiting(app, ids) == 20, what="20 tasks waiting for the pause", timeout=30)
        assert llm.requests(f"{token} #") == []
        status = " ".join(run_cli(pausable, "status", ids[0]).stdout.split())
        assert "waiting_reason paused" in status and "service paused since" in status
        # When the service resumes, Then every task completes at its first attempt
        assert "resumed" in run_cli(pausable, "resume").stdout
        rows = wait_for_final(app.services.session_factory, ids, timeout=60)
    assert {(row.status, row.attempts, row.waiting_reason) for row in rows.values()} == {
        (TaskStatus.COMPLETED, 1, None)
    }
    assert len(llm.requests(f"{token} #")) == 20
    app.services.engine.dispose()


def test_once_pause_answered_no_call_leaves_not_even_one_waiting_for_its_rate_slot(settings, agent, private_redis, llm):
    # Given a worker that obeys pauses, under a limit of two calls a second: calls wait for slots reserved ahead
    pausable = settings.model_copy(
        update={
            "redis_url": private_redis.url(),
            "pause_enabled": True,
            "rate_limits_enabled": True,
            "worker_concurrency": 16,
        }
    )
    env = {**pausable.as_env(), "LLM_RATE_LIMITS": json.dumps({"gpt-4o-mini": {"rpm": 120}})}
    app = create_celery_app(pausable)
    token = f"pause-{uuid.uuid4().hex[:8]}"
    with celery_worker(env=env, log_path=LOG_DIR / "paused-limited.log", name="paused-limited"):
        # and 20 tasks under way, some of them sleeping for their slot
        ids = submit(app, agent, 20, token)
        wait_until(lambda: len(llm.requests(token)) >= 3, what="three calls before the pause")
        # When the service is paused
        assert "paused since" in run_cli(pausable, "pause").stdout
        answered = time.time()
        time.sleep(4.0)  # calls waiting for their slots come due meanwhile
        # Then no call reached the provider after `pause` answered
        late = [r["at"] - answered for r in llm.requests(token) if r["at"] > answered]
        assert late == []
        # When the service resumes, Then every task completes at its first attempt, those called before the
        # pause recorded too
        assert "resumed" in run_cli(pausable, "resume").stdout
        rows = wait_for_final(app.services.session_factory, ids, timeout=90)
    assert {(row.status, row.attempts) for row in rows.values()} == {(TaskStatus.COMPLETED, 1)}
    assert len(llm.requests(token)) == 20
    app.services.engine.dispose()


def _waiting(app, ids: list[str]) -> int:
    with session_scope(app.services.session_factory) as session:
        rows = session.query(Task).filter(Task.id.in_([uuid.UUID(i) for i in ids])).all()
        return sum(
            row.status == TaskStatus.QUEUED and row.waiting_reason == "paused" and row.attempts == 0 for row in rows
        )
