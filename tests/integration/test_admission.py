"""The admission seam on real PostgreSQL and Redis, with a test check: a deferred task gives its attempt
back, shows why it waits, is published again for later and then runs; a refused one fails before any
LLM call."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Sequence
from datetime import datetime

import pytest
import redis
from celery_batches import SimpleRequest
from sqlalchemy.orm import selectinload

from agent_service.admission.base import Admission, CallEnded, Candidate, Decision
from agent_service.clock import utcnow
from agent_service.consumer.batching import AgentRequest
from agent_service.database import session_scope
from agent_service.execution.cancellation import RunningCalls
from agent_service.execution.context import RunContext
from agent_service.execution.pipeline import execute_agent_task
from agent_service.llm.messages import LLMReply, Usage
from agent_service.messaging.routing import AGENT_QUEUE, PROCESS_TASK_NAME
from agent_service.models import Agent, Task, TaskStatus
from agent_service.store.tasks import cancel_task
from agent_service.worker import create_celery_app
from tests.integration.conftest import IDLE_REDIS
from tests.support import run_cli, wait_until

REASON = "user u1 is over its rate limit"


class DeferFirstAsk:
    """A test check: defers each task the first time it is asked about it, lets it run after that."""

    name = "defer_first_ask"

    def __init__(self) -> None:
        self.asked: list[tuple[uuid.UUID, int]] = []

    def admit(self, candidates: Sequence[Candidate]) -> list[Decision]:
        seen = {task_id for task_id, _ in self.asked}
        self.asked += [(c.task_id, c.attempt) for c in candidates]
        return [Decision.run() if c.task_id in seen else Decision.defer(REASON, retry_in=1.5) for c in candidates]

    def release(self, ended: Sequence[CallEnded]) -> None:
        """Holds nothing."""


class RefuseAll:
    name = "refuse_all"

    def admit(self, candidates: Sequence[Candidate]) -> list[Decision]:
        return [Decision.refuse("the agent's spend cap is reached") for _ in candidates]

    def release(self, ended: Sequence[CallEnded]) -> None:
        """Holds nothing."""


class SharedStateOutOfReach:
    """A check whose shared state is out of reach: Redis refuses the connection, in admit and in release."""

    name = "out_of_reach"

    def admit(self, candidates: Sequence[Candidate]) -> list[Decision]:
        raise redis.exceptions.ConnectionError("Error 111 connecting to 127.0.0.1:1. Connection refused.")

    def release(self, ended: Sequence[CallEnded]) -> None:
        raise redis.exceptions.ConnectionError("Error 111 connecting to 127.0.0.1:1. Connection refused.")


@pytest.fixture
def calls() -> list[str]:
    """What the stand-in LLM was asked, in order."""
    return []


@pytest.fixture
def stand_in_llm(llm_with, calls):
    async def run_llm(request, *, settings):
        calls.append(request.messages[-1][1])
        return LLMReply(text="answered", usage=Usage(5, 2, 7))

    return llm_with(run_llm)


def stored_task(session_factory, agent: Agent) -> uuid.UUID:
    """A committed, queued task of `agent`."""
    task_id = uuid.uuid4()
    with session_scope(session_factory) as session:
        session.add(
            Task(id=task_id, title="Summarise", agent_id=agent.id, user_id="u1", status=TaskStatus.QUEUED, attempts=0)
        )
    return task_id


def row(session_factory, task_id: uuid.UUID) -> Task:
    """The task's row, with its attempt history."""
    with session_scope(session_factory) as session:
        return session.get(Task, task_id, options=[selectinload(Task.attempt_history)])


def ran_as_first_attempt(outcome, task: Task) -> bool:
    """The delivery's outcome and the row say the task completed on its first attempt, with no reason to wait."""
    return (outcome.status, task.status, task.attempts, task.waiting_reason) == (
        "completed",
        TaskStatus.COMPLETED,
        1,
        None,
    )


def test_a_deferred_task_keeps_its_attempts_says_why_it_waits_and_runs_later(
    session_factory, agent, settings, stand_in_llm, calls
):
    # Given a queued task, a check that defers it the first time, and a worker that holds no deferred call
    task_id = stored_task(session_factory, agent)
    check = DeferFirstAsk()
    settings = settings.model_copy(update={"admission_hold_seconds": 0})
    run = dict(session_factory=session_factory, settings=settings, llm=stand_in_llm, admission=Admission([check]))
    # When it is delivered
    first = execute_agent_task(str(task_id), RunContext(**run))
    # Then it is deferred, not run: queued again with its attempt given back and the reason recorded
    assert (first.status, first.error, first.retry_in, first.attempt) == ("deferred", REASON, 1.5, 1)
    waiting = row(session_factory, task_id)
    assert (waiting.status, waiting.attempts, waiting.waiting_reason) == (TaskStatus.QUEUED, 0, REASON)
    assert waiting.started_at is None and waiting.attempt_history == [] and calls == []
    # and `python cli.py status` shows why it waits
    status = run_cli(settings, "status", str(task_id))
    assert status.returncode == 0, status.stderr
    assert f"waiting_reason {REASON}" in " ".join(status.stdout.split())
    # When it is delivered again, Then it runs as its first attempt, and the reason is gone
    second = execute_agent_task(str(task_id), RunContext(**run))
    assert ran_as_first_attempt(second, row(session_factory, task_id))
    assert check.asked == [(task_id, 1), (task_id, 1)] and len(calls) == 1


def test_a_task_deferred_for_a_moment_is_held_with_its_claim_and_runs_in_the_same_delivery(
    session_factory, agent, settings, stand_in_llm, calls
):
    # Given a queued task and a check that defers it for 1.5 s the first time (within ADMISSION_HOLD_SECONDS)
    task_id = stored_task(session_factory, agent)
    check = DeferFirstAsk()
    run = dict(session_factory=session_factory, settings=settings, llm=stand_in_llm, admission=Admission([check]))
    # When it is delivered once
    outcome = execute_agent_task(str(task_id), RunContext(**run))
    # Then the same delivery runs it once the wait is over: asked about twice under one claim, never given back
    done = row(session_factory, task_id)
    assert ran_as_first_attempt(outcome, done)
    assert check.asked == [(task_id, 1), (task_id, 1)] and len(calls) == 1
    assert done.queued_at is None  # a deferral through the queue would have queued it again


def test_a_task_held_longer_than_the_hold_limit_is_given_back_to_the_queue(
    session_factory, agent, settings, stand_in_llm, calls
):
    # Given a check that defers for 1.5 s, and a worker that holds a deferred call for 1 s at most
    task_id = stored_task(session_factory, agent)
    settings = settings.model_copy(update={"admission_hold_seconds": 1.0})
    run = dict(
        session_factory=session_factory, settings=settings, llm=stand_in_llm, admission=Admission([DeferFirstAsk()])
    )
    # When it is delivered, Then it is deferred through the queue as before, its attempt given back
    outcome = execute_agent_task(str(task_id), RunContext(**run))
    waiting = row(session_factory, task_id)
    assert (outcome.status, waiting.status, waiting.attempts, waiting.waiting_reason) == (
        "deferred",
        TaskStatus.QUEUED,
        0,
        REASON,
    )
    assert calls == []


def test_a_held_task_cancelled_meanwhile_makes_no_call(session_factory, agent, settings, stand_in_llm, calls):
    # Given a held task (its check defers it for 1.5 s first) whose worker hears of cancellations
    task_id = stored_task(session_factory, agent)
    running = RunningCalls(stand_in_llm)
    context = RunContext(
        session_factory=session_factory,
        settings=settings,
        llm=stand_in_llm,
        admission=Admission([DeferFirstAsk()]),
        running=running,
    )

    # When it is cancelled while held (the row, then the worker told, as the cancellation listener tells it)
    def cancel_when_held() -> None:
        wait_until(lambda: row(session_factory, task_id).status == TaskStatus.RUNNING, what="the claim", timeout=10)
        with session_scope(session_factory) as session:
            cancel_task(session, task_id, now=utcnow())
        wait_until(lambda: running.abort(task_id), what="the task held", timeout=10)

    canceller = threading.Thread(target=cancel_when_held)
    canceller.start()
    outcome = execute_agent_task(str(task_id), context)
    canceller.join()
    # Then its call is never made, and the task stays cancelled
    assert calls == []
    assert outcome.status == "superseded"
    assert row(session_factory, task_id).status == TaskStatus.CANCELLED


def test_a_refused_task_fails_with_the_reason_before_any_llm_call(
    session_factory, agent, settings, stand_in_llm, calls
):
    task_id = stored_task(session_factory, agent)
    outcome = execute_agent_task(
        str(task_id),
        RunContext(
            session_factory=session_factory, settings=settings, llm=stand_in_llm, admission=Admission([RefuseAll()])
        ),
    )
    failed = row(session_factory, task_id)
    assert outcome.status == "failed" and outcome.retry_in is None
    assert (failed.status, failed.error) == (TaskStatus.FAILED, "refused: the agent's spend cap is reached")
    assert [(h.attempt, h.outcome) for h in failed.attempt_history] == [(1, "failed")]
    assert calls == []


def test_the_task_shell_publishes_a_deferred_task_again_to_run_after_the_wait(session_factory, agent, settings):
    # Given an app whose admission defers, on a broker no worker reads
    app = create_celery_app(
        settings.model_copy(update={"redis_url": IDLE_REDIS, "llm_process": False, "admission_hold_seconds": 0}),
        admission=Admission([DeferFirstAsk()]),
    )
    broker = redis.Redis.from_url(IDLE_REDIS)
    broker.flushdb()
    task_id = stored_task(session_factory, agent)
    # When the task shell handles a delivery of the task
    app.loader.import_default_modules()  # what a worker does at start: imports tasks.py, its `include`
    shell = app.tasks[PROCESS_TASK_NAME]
    before = time.time()
    shell.run([_delivery(task_id)])
    # Then the row waits, its attempt given back, and one message for the task waits in Redis with a countdown
    with session_scope(session_factory) as session:
        row = session.get(Task, task_id)
        assert (row.status, row.attempts, row.waiting_reason) == (TaskStatus.QUEUED, 0, REASON)
    [message] = [json.loads(raw) for raw in broker.lrange(AGENT_QUEUE, 0, -1)]
    headers = message["headers"]
    assert (headers["task"], headers["id"], headers["argsrepr"]) == (
        PROCESS_TASK_NAME,
        str(task_id),
        repr([str(task_id)]),
    )
    eta = _epoch(headers["eta"])
    assert before + 1.5 - 0.5 <= eta <= time.time() + 1.5 + 0.5
    app.services.llm_runner.close()
    app.services.engine.dispose()


def _delivery(task_id: uuid.UUID) -> AgentRequest:
    """One delivered message of the task, as a prefork pool child receives it (no worker request to send
    events through)."""
    message = SimpleRequest(str(task_id), PROCESS_TASK_NAME, (str(task_id),), {}, {}, "test", True, None, None, {})
    delivery = AgentRequest.__new__(AgentRequest)
    delivery.__dict__.update(vars(message), worker_request=None, unsent_event=None)
    return delivery


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def test_while_the_controls_state_is_out_of_reach_tasks_wait_with_their_attempts_given_back(
    session_factory, agent, settings, stand_in_llm, calls
):
    # Given a check whose Redis is down
    task_id = stored_task(session_factory, agent)
    admission = Admission([SharedStateOutOfReach()])
    # When the task is delivered
    outcome = execute_agent_task(
        str(task_id),
        RunContext(session_factory=session_factory, settings=settings, llm=stand_in_llm, admission=admission),
    )
    # Then it neither runs unchecked nor fails: it waits, its attempt given back, saying why
    waiting = row(session_factory, task_id)
    assert outcome.status == "deferred" and outcome.retry_in > 0 and calls == []
    assert (waiting.status, waiting.attempts) == (TaskStatus.QUEUED, 0)
    assert waiting.waiting_reason.startswith("admission controls unavailable: Redis unavailable: Error 111")


def test_a_check_that_cannot_release_does_not_stop_the_recording_of_outcomes(
    session_factory, agent, settings, stand_in_llm, calls
):
    # Given a check that admits but cannot release (its Redis went away mid-call)
    class AdmitsThenLosesRedis(SharedStateOutOfReach):
        def admit(self, candidates: Sequence[Candidate]) -> list[Decision]:
            return [Decision.run() for _ in candidates]

    task_id = stored_task(session_factory, agent)
    admission = Admission([AdmitsThenLosesRedis()])
    # When the task runs, Then its reply is recorded all the same
    outcome = execute_agent_task(
        str(task_id),
        RunContext(session_factory=session_factory, settings=settings, llm=stand_in_llm, admission=admission),
    )
    assert outcome.status == "completed" and row(session_factory, task_id).status == TaskStatus.COMPLETED
