"""The shared admission controls with real worker processes, on a private Redis and the bundled LLM
server enforcing its own limits: workers at full load stay under a rate limit set below the server's,
never meet a 429 and keep the limit's pace; a pause stops every new call and a resume runs every task."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from agent_service.database import session_scope
from agent_service.devtools.processes import celery_worker, llm_server
from agent_service.models import Task, TaskStatus
from agent_service.tasks import create_agent_tasks
from agent_service.worker import create_celery_app
from tests.chaos.services import RedisServer
from tests.integration.conftest import LOG_DIR
from tests.support import run_cli, wait_for_final, wait_until

CONFIGURED_RPM = 600  # ours: 10 calls a second
SERVER_RPM = 700  # the provider's (the bundled server's), with a bucket of two seconds
MEASURED_TASKS = 330


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    """A Redis of the test's own: no other worker reads its broker, and its limits start empty."""
    with RedisServer.running() as server:
        yield server


@pytest.fixture
def limited_llm() -> Iterator[str]:
    """An LLM server that answers 429 beyond SERVER_RPM for the model, at 200 ms a call."""
    limits = json.dumps({"gpt-4o-mini": {"rpm": SERVER_RPM}})
    with llm_server(latency_ms=200, extra_args=("--rate-limits", limits, "--rate-burst-seconds", "2")) as url:
        yield url


def submit(app, agent, count: int, token: str) -> list[str]:
    items = [{"title": f"{token} #{i:04d}", "agent_id": str(agent.id), "user_id": "u1"} for i in range(count)]
    return create_agent_tasks(items, app=app)


def test_two_workers_at_full_load_keep_the_rate_limit_and_meet_no_429(settings, agent, private_redis, limited_llm):
    # Given two workers sharing a limit of 600 requests a minute, below the provider's 700
    limited = settings.model_copy(
        update={
            "redis_url": private_redis.url(),
            "openai_base_url": f"{limited_llm}/v1",
            "rate_limits_enabled": True,
            "worker_concurrency": 64,
        }
    )
    env = {**limited.as_env(), "LLM_RATE_LIMITS": json.dumps({"gpt-4o-mini": {"rpm": CONFIGURED_RPM}})}
    app = create_celery_app(limited)
    token = f"rate-{uuid.uuid4().hex[:8]}"
    log = LOG_DIR / "rate-limited"
    with (
        celery_worker(env=env, log_path=log / "a.log", name="rate-a"),
        celery_worker(env=env, log_path=log / "b.log", name="rate-b"),
    ):
        # When 330 tasks (33 s of the limit) are submitted at once
        ids = submit(app, agent, MEASURED_TASKS, token)
        rows = wait_for_final(app.services.session_factory, ids, timeout=120)
    # Then every task completed at its first attempt, and the server refused none
    stats = httpx.get(f"{limited_llm}/control/stats").json()
    answered = sorted(
        r["at"] for r in httpx.get(f"{limited_llm}/control/requests", params={"match": token}).json()["requests"]
    )
    assert {row.status for row in rows.values()} == {TaskStatus.COMPLETED}
    assert {row.attempts for row in rows.values()} == {1}
    assert (stats["rate_limited"], stats["by_status"].get("429", 0)) == (0, 0)
    assert len(answered) == MEASURED_TASKS
    # and past the first burst the calls kept the configured pace (measured: see README, Cost and limits)
    sustained = (len(answered) - 1 - 20) / (answered[-1] - answered[20]) * 60
    print(f"\nsustained {sustained:.1f} requests/min for a limit of {CONFIGURED_RPM}, {stats['rate_limited']} 429s")
    assert 0.85 * CONFIGURED_RPM <= sustained <= 1.1 * CONFIGURED_RPM
    app.services.engine.dispose()


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


def _waiting(app, ids: list[str]) -> int:
    with session_scope(app.services.session_factory) as session:
        rows = session.query(Task).filter(Task.id.in_([uuid.UUID(i) for i in ids])).all()
        return sum(
            row.status == TaskStatus.QUEUED and row.waiting_reason == "paused" and row.attempts == 0 for row in rows
        )
