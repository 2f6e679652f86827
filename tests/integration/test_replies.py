"""No call paid twice, and no call paid at all when it need not be: a reply kept in Redis until its outcome
is recorded serves the next claim of a task whose worker died; a cancelled task's call is aborted; an
agent's reply cache answers repeated deterministic calls. Real PostgreSQL, Redis, worker and LLM server."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest
import redis
from celery.result import AsyncResult
from sqlalchemy import update

from agent_service.admission.base import Candidate
from agent_service.clock import utcnow
from agent_service.database import session_scope
from agent_service.execution.context import RunContext
from agent_service.execution.liveness import current_owner
from agent_service.execution.pipeline import execute_agent_task, execute_agent_tasks
from agent_service.execution.replies import KEPT_PREFIX, Arrived, ReplyStore
from agent_service.llm.messages import LLMReply, LLMRequest, Message, Usage
from agent_service.llm.runners import ChildProcessRunner
from agent_service.models import Agent, Task, TaskAttempt, TaskStatus
from agent_service.store import lifecycle
from agent_service.store.agents import agent_spec
from agent_service.submission.submit import cancel_task
from agent_service.tasks import create_agent_task
from tests.integration.test_metrics import sample, scrape
from tests.integration.test_worker import unique
from tests.support import wait_for_final, wait_until


@pytest.fixture(scope="module")
def child_runner(settings) -> Iterator[ChildProcessRunner]:
    runner = ChildProcessRunner(settings)
    yield runner
    runner.close()


@pytest.fixture
def replies(idle_redis: redis.Redis) -> ReplyStore:
    return ReplyStore(idle_redis, keep=True, keep_seconds=60)


def dead_owner() -> str:
    """A claim owner on this host whose process has exited."""
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return f"{current_owner().rpartition('/')[0]}/{gone.stdout.strip()}"


def add_agent(session_factory, *, temperature: float = 0.1, **settings) -> Agent:
    with session_scope(session_factory) as session:
        agent = Agent(
            name=f"agent-{uuid.uuid4().hex[:8]}",
            prompt="You are a careful assistant.",
            model="gpt-4o-mini",
            temperature=temperature,
            max_tokens=200,
            settings=settings,
        )
        session.add(agent)
    return agent


def kept_keys(client: redis.Redis) -> list[bytes]:
    return list(client.scan_iter(f"{KEPT_PREFIX}*"))


def test_the_reply_a_lost_worker_kept_is_recorded_by_the_next_claim_without_a_call(
    rollback_factory, settings, child_runner, replies, idle_redis, llm
):
    # Given a task whose attempt 1 was claimed by a worker that got its reply, kept it, and died
    title = unique("kept")
    agent = add_agent(rollback_factory)
    with session_scope(rollback_factory) as session:
        task = Task(title=title, agent_id=agent.id, user_id="u-kept", status=TaskStatus.QUEUED)
        session.add(task)
    with session_scope(rollback_factory) as session:
        [claim] = lifecycle.claim_tasks(session, [task.id], settings=settings, now=utcnow(), owner=dead_owner())
        spec, _ = agent_spec(session.get(Agent, agent.id))
    request = LLMRequest("gpt-4o", 0.1, 200, spec.options, (Message("user", title),))
    kept = LLMReply("the answer paid for once", Usage(11, 5, 16))
    replies.keep([Arrived(Candidate(task.id, "u-kept", claim.attempt, spec, request), kept, cacheable=False)])
    # When the task is run again (its message redelivered)
    outcome = execute_agent_task(
        task.id, RunContext(session_factory=rollback_factory, settings=settings, llm=child_runner, replies=replies)
    )
    # Then attempt 2 records the kept reply, as the model that gave it, and the LLM is not called again
    assert outcome.status == "completed" and outcome.attempt == 2
    with session_scope(rollback_factory) as session:
        row = session.get(Task, task.id)
        history = [(a.attempt, a.outcome) for a in session.query(TaskAttempt).filter_by(task_id=task.id)]
    assert (row.status, row.result, row.model) == (TaskStatus.COMPLETED, "the answer paid for once", "gpt-4o")
    assert (row.prompt_tokens, row.completion_tokens, row.total_tokens) == (11, 5, 16)
    assert history == [(1, "lost")]
    assert llm.requests(title) == []
    # And the kept reply is dropped once recorded
    assert kept_keys(idle_redis) == []


def test_a_reply_is_kept_until_its_outcome_is_recorded_then_dropped(
    rollback_factory, settings, child_runner, replies, idle_redis, llm
):
    # Given a queued task
    title = unique("kept-until-recorded")
    agent = add_agent(rollback_factory)
    with session_scope(rollback_factory) as session:
        task = Task(title=title, agent_id=agent.id, user_id="u-kept", status=TaskStatus.QUEUED)
        session.add(task)
    key = f"{KEPT_PREFIX}{task.id}:1"
    in_redis_when_recorded = []
    # When it runs, Redis looked at as its outcome is recorded
    outcome = execute_agent_tasks(
        [task.id],
        RunContext(
            session_factory=rollback_factory,
            settings=settings,
            llm=child_runner,
            replies=replies,
            on_settled=lambda group: in_redis_when_recorded.append((idle_redis.get(key), idle_redis.ttl(key))),
        ),
    )[0]
    # Then the reply was in Redis, with an expiry, when the outcome was recorded, and is gone after
    assert outcome.status == "completed" and len(llm.requests(title)) == 1
    [(kept, ttl)] = in_redis_when_recorded
    assert json.loads(kept)["text"] == outcome.finished.result and 0 < ttl <= 60
    assert kept_keys(idle_redis) == []


def test_a_reply_whose_claim_was_taken_back_stays_kept_for_the_attempt_that_takes_the_task_over(
    rollback_factory, settings, llm_with, replies, idle_redis
):
    # Given a queued task, and a model that answers only after the sweeper took the task back from this
    # worker (its liveness lease expired while the call was under way)
    agent = add_agent(rollback_factory)
    with session_scope(rollback_factory) as session:
        task = Task(title=unique("taken-back"), agent_id=agent.id, user_id="u-kept", status=TaskStatus.QUEUED)
        session.add(task)

    async def answer_after_take_back(request, *, settings):
        with session_scope(rollback_factory) as session:
            session.execute(update(Task).where(Task.id == task.id).values(status=TaskStatus.QUEUED, claimed_by=None))
        return LLMReply("paid for once", Usage(11, 5, 16))

    def run(llm):
        context = RunContext(session_factory=rollback_factory, settings=settings, llm=llm, replies=replies)
        return execute_agent_task(task.id, context)

    # When it runs: its claim is lost before the reply can be recorded
    assert run(llm_with(answer_after_take_back)).status == "superseded"
    # Then the reply stays kept, and the attempt that takes the task over records it without a call
    assert kept_keys(idle_redis) == [f"{KEPT_PREFIX}{task.id}:1".encode()]
    outcome = run(llm_with(never_called))
    assert (outcome.status, outcome.attempt, outcome.finished.result) == ("completed", 2, "paid for once")
    assert kept_keys(idle_redis) == []


async def never_called(request, *, settings):
    raise AssertionError("the model was called again")


@pytest.mark.worker
@pytest.mark.usefixtures("worker")
def test_cancelling_a_running_task_aborts_its_llm_call_and_records_no_result(app, session_factory, llm):
    # Given a task whose LLM call takes 6 s, under way in the worker
    title = unique("cancel-abort")
    llm.add_fault(fault="slow", match=title, delay_ms=6000)
    agent = add_agent(session_factory)
    task_id = create_agent_task({"title": title, "agent_id": str(agent.id), "user_id": "u-cancel"}, app=app)
    wait_until(lambda: llm.requests(title), what="LLM call under way", timeout=30)
    # When the task is cancelled
    assert cancel_task(task_id, services=app.services) == "cancelled"
    # Then the server sees the worker drop the request long before its answer was due, and the task stays
    # cancelled, with no result and no tokens
    wait_until(lambda: llm.requests(title)[0]["ended"] == "dropped", what="aborted LLM request", timeout=3)
    [call] = llm.requests(title)
    assert call["ended_at"] - call["at"] < 4
    assert AsyncResult(task_id, app=app).get(timeout=10) == {"status": "cancelled", "task_id": task_id}
    row = wait_for_final(session_factory, [task_id])[task_id]
    assert (row.status, row.result, row.total_tokens) == (TaskStatus.CANCELLED, None, None)


@pytest.mark.worker
@pytest.mark.usefixtures("worker")
def test_a_repeated_deterministic_call_is_answered_from_the_cache_without_a_request(
    app, session_factory, llm, metrics_port
):
    # Given an agent at temperature 0 with a reply cache, and a task it has completed
    title = unique("cached")
    agent = add_agent(session_factory, temperature=0.0, cache_ttl_seconds=60)
    item = {"title": title, "agent_id": str(agent.id), "user_id": "u-cache"}
    first = create_agent_task(item, app=app)
    wait_for_final(session_factory, [first])
    before = scrape(metrics_port)
    # When the same task is submitted again
    second = create_agent_task(item, app=app)
    rows = wait_for_final(session_factory, [first, second])
    # Then it completes with the same text, no request reaches the LLM server, and no tokens are counted
    assert len(llm.requests(title)) == 1
    assert rows[second].status == TaskStatus.COMPLETED and rows[second].result == rows[first].result
    assert (rows[first].model, rows[second].model) == ("gpt-4o-mini", "cache:gpt-4o-mini")
    assert rows[first].total_tokens > 0 and rows[second].total_tokens is None
    after = scrape(metrics_port)
    hits = 'agent_service_reply_cache_total{result="hit"}'
    assert sample(after, hits) - sample(before, hits, default=0) == 1


@pytest.mark.worker
@pytest.mark.usefixtures("worker")
def test_calls_above_temperature_zero_are_never_cached(app, session_factory, llm):
    # Given an agent with a reply cache but a temperature above 0
    title = unique("uncached")
    agent = add_agent(session_factory, temperature=0.7, cache_ttl_seconds=60)
    item = {"title": title, "agent_id": str(agent.id), "user_id": "u-cache"}
    # When the same task runs twice
    first = create_agent_task(item, app=app)
    wait_for_final(session_factory, [first])
    second = create_agent_task(item, app=app)
    rows = wait_for_final(session_factory, [first, second])
    # Then both were answered by the model
    assert len(llm.requests(title)) == 2
    assert {row.model for row in rows.values()} == {"gpt-4o-mini"}
    assert all(row.total_tokens > 0 for row in rows.values())
