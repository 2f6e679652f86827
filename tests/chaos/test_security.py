"""Scenario 11: the OpenAI key and the database and Redis passwords never appear in logs, task rows,
attempt history or Redis, whatever fails; results are cut to MAX_RESULT_LENGTH. (Only JSON is
accepted: see test_poison_messages.)"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest
import redis
from sqlalchemy import select

from agent_service.database import session_scope
from agent_service.models import Task, TaskAttempt, TaskStatus
from tests.chaos.harness import Scenario, chaos_settings
from tests.chaos.services import RedisServer

RESULT_LIMIT = 50


@pytest.fixture
def canaries() -> dict[str, str]:
    return {
        "OpenAI key": f"sk-canary-{uuid.uuid4().hex}",
        "database password": f"canary-{uuid.uuid4().hex}",
        "Redis password": f"canary-{uuid.uuid4().hex}",
    }


@pytest.fixture
def guarded_redis(canaries) -> Iterator[RedisServer]:
    with RedisServer.running(password=canaries["Redis password"]) as server:
        yield server


@pytest.fixture
def guarded(canaries, guarded_redis, pg, chaos_db, llm_url, llm) -> Iterator[Scenario]:
    """A scenario whose every secret is a canary, and whose results are cut to RESULT_LIMIT characters."""
    settings = chaos_settings(
        database_url=pg.url(chaos_db, password=canaries["database password"]),
        redis_url=guarded_redis.url(),
        llm_url=llm_url,
        max_result_length=RESULT_LIMIT,
        openai_api_key=canaries["OpenAI key"],
    )
    run = Scenario("11 canary secrets, 401/drop/DB kill", settings, llm)
    yield run
    run.close()


def everything_stored(run: Scenario, client: redis.Redis) -> str:
    """Every byte the service wrote: worker logs, task rows, attempt history, Redis values."""
    with session_scope(run.session_factory) as session:
        rows = [(t.result, t.error) for t in session.scalars(select(Task))]
        attempts = [a.error for a in session.scalars(select(TaskAttempt))]
    return "\n".join([run.worker_log(), json.dumps(rows), json.dumps(attempts), *redis_values(client)])


def redis_values(client: redis.Redis) -> Iterator[str]:
    read = {
        b"string": client.get,
        b"list": lambda k: client.lrange(k, 0, -1),
        b"hash": client.hgetall,
        b"set": client.smembers,
        b"zset": lambda k: client.zrange(k, 0, -1),
    }
    for key in client.scan_iter():
        yield repr((key, read.get(client.type(key), lambda k: b"")(key)))


def test_secrets_appear_nowhere_even_when_everything_fails(guarded, guarded_redis, canaries, pg, chaos_db, llm):
    # Given a worker whose key and passwords are canaries
    run = guarded
    run.start_worker("guarded", beat=True)
    llm.add_fault(fault="401", match=f"{run.prefix('rejected key')} #")
    llm.add_fault(fault="drop", match=f"{run.prefix('dropped')} #", times=1)
    llm.add_fault(fault="slow", match=f"{run.prefix('ok')} #", delay_ms=300)
    # When the LLM rejects the key, drops a connection, and the database kills every connection mid-run
    run.submit(1, label="rejected key"), run.submit(1, label="dropped"), run.submit(4, label="ok")
    run.wait_until_running(str(run.rows("ok")[0].id))
    pg.terminate_connections(chaos_db)
    rows = run.wait(timeout=90)
    run.app.send_task("worker.health_check").get(timeout=30)
    # Then no canary appears in any byte the service stored or logged
    stored = everything_stored(run, guarded_redis.client())
    assert [name for name, secret in canaries.items() if secret in stored] == []
    # And the results are cut to MAX_RESULT_LENGTH
    completed = [row for row in rows.values() if row.status == TaskStatus.COMPLETED]
    assert len(completed) == 5 and {len(row.result) for row in completed} == {RESULT_LIMIT}
    tally = run.tally()
    assert (tally.completed, tally.failed, tally.lost) == (5, 1, 0)
