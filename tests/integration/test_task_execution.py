"""Layer 1: the plain task functions on real PostgreSQL, inside a rolled-back transaction, with the
LLM collaborator passed in (a stand-in function here; the real client is exercised in test_worker)."""

from __future__ import annotations

import asyncio
import signal
import uuid
from datetime import timedelta

import pytest
from billiard.exceptions import SoftTimeLimitExceeded

from agent_service.clock import utcnow
from agent_service.database import make_engine
from agent_service.errors import PermanentError, RetryableError
from agent_service.execution.context import RunContext
from agent_service.execution.pipeline import execute_agent_task, execute_agent_tasks
from agent_service.llm.messages import LLMReply, LLMRequest, Usage
from agent_service.models import Agent, Task, TaskStatus
from agent_service.store import lifecycle
from agent_service.store import tasks as store_tasks
from agent_service.store.lifecycle import Claim, Skip


@pytest.fixture
def stored_agent(db_session) -> Agent:
    agent = Agent(name=f"a-{uuid.uuid4().hex[:6]}", prompt="p", model="gpt-4o-mini", temperature=0.0, max_tokens=50)
    db_session.add(agent)
    db_session.flush()
    return agent


@pytest.fixture
def queued_task(db_session, stored_agent) -> Task:
    task = Task(
        id=uuid.uuid4(),
        title="Summarise",
        description="the week",
        agent_id=stored_agent.id,
        user_id="u1",
        status=TaskStatus.QUEUED,
        attempts=0,
    )
    db_session.add(task)
    db_session.flush()
    return task


def asked(request: LLMRequest) -> str:
    """What the text kind asked the model: the task's title and description, in the user message."""
    return request.messages[-1][1]


USAGE = Usage(7, 3, 10)


def answer(text="done", usage=USAGE):
    async def run_llm(request, *, settings):
        return LLMReply(text=f"{text}: {asked(request)}", usage=usage)

    return run_llm


def failing(error: Exception):
    async def run_llm(request, **_):
        raise error

    return run_llm


@pytest.fixture
def run_once(rollback_factory, settings, llm_with):
    """Run one attempt of `task` with `run_llm` as the LLM."""

    def run(task: Task, run_llm):
        return execute_agent_task(
            str(task.id), RunContext(session_factory=rollback_factory, settings=settings, llm=llm_with(run_llm))
        )

    return run


def claim_as(db_session, task: Task, settings, *, now, owner="host/1/100", owner_is_gone=lambda owner: False):
    [claimed] = lifecycle.claim_tasks(
        db_session, [task.id], settings=settings, now=now, owner=owner, owner_is_gone=owner_is_gone
    )
    return claimed


def reload(db_session, task: Task) -> Task:
    return db_session.get(Task, task.id, populate_existing=True)


def test_claim_marks_task_running_and_counts_the_attempt(db_session, queued_task, settings):
    # Given a queued task, When a worker claims it
    claim = claim_as(db_session, queued_task, settings, now=utcnow())
    # Then it owns attempt 1 and the row says running, with a start time
    assert isinstance(claim, Claim) and claim.attempt == 1
    row = reload(db_session, queued_task)
    assert (row.status, row.attempts) == (TaskStatus.RUNNING, 1) and row.started_at is not None


def test_second_claim_of_a_running_task_is_refused(db_session, queued_task, settings):
    claim_as(db_session, queued_task, settings, now=utcnow())
    second = claim_as(db_session, queued_task, settings, now=utcnow())
    assert isinstance(second, Skip) and "running elsewhere" in second.reason
    assert reload(db_session, queued_task).attempts == 1


def test_running_task_whose_worker_died_is_reclaimed_after_the_stale_threshold(db_session, queued_task, settings):
    long_ago = utcnow() - timedelta(seconds=settings.stale_task_after_seconds + 1)
    claim_as(db_session, queued_task, settings, now=long_ago)
    claim = claim_as(db_session, queued_task, settings, now=utcnow())
    assert isinstance(claim, Claim) and claim.attempt == 2


def test_running_task_with_no_claim_time_is_taken_over_at_once(db_session, queued_task, settings):
    # Given a row left running with no claim time (written before claims were timed): no owner to wait for
    queued_task.status, queued_task.attempts, queued_task.claimed_at = TaskStatus.RUNNING, 1, None
    db_session.flush()
    # When its message is delivered, Then it runs attempt 2
    claim = claim_as(db_session, queued_task, settings, now=utcnow())
    assert isinstance(claim, Claim) and claim.attempt == 2


def test_stale_claim_cannot_complete_after_the_task_was_reclaimed(db_session, queued_task, settings):
    long_ago = utcnow() - timedelta(seconds=settings.stale_task_after_seconds + 1)
    stale = claim_as(db_session, queued_task, settings, now=long_ago)
    fresh = claim_as(db_session, queued_task, settings, now=utcnow())
    assert lifecycle.record_success(db_session, stale, result="late", model="gpt-4o-mini", now=utcnow()) is False
    assert lifecycle.record_success(db_session, fresh, result="on time", model="gpt-4o-mini", now=utcnow()) is True
    assert reload(db_session, queued_task).result == "on time"


def test_answers_recorded_together_complete_only_the_tasks_their_claims_still_own(
    db_session, queued_task, stored_agent, settings
):
    # Given two claimed tasks, the second cancelled while it ran
    other = Task(id=uuid.uuid4(), title="t", description="d", agent_id=stored_agent.id, user_id="u1")
    db_session.add(other)
    db_session.flush()
    first, cancelled = (claim_as(db_session, task, settings, now=utcnow()) for task in (queued_task, other))
    store_tasks.cancel_task(db_session, other.id, now=utcnow())
    charge = lifecycle.Charge("gpt-4o-mini", Usage(10, 5, 15), 0.5)
    # When both answers are recorded in one statement
    owned = lifecycle.record_successes(
        db_session,
        [
            lifecycle.Success(first, result="done", model="gpt-4o-mini", charge=charge, result_data={"ok": True}),
            lifecycle.Success(cancelled, result="late", model="gpt-4o-mini", charge=charge),
        ],
        now=utcnow(),
    )
    # Then only the first completes, with its result, data and charge; the cancelled one is left as it was
    assert owned == [True, False]
    row, left = reload(db_session, queued_task), reload(db_session, other)
    assert (row.status, row.result, row.result_data, row.total_tokens, row.cost_usd) == (
        TaskStatus.COMPLETED,
        "done",
        {"ok": True},
        15,
        0.5,
    )
    assert row.duration_ms is not None and row.finished_at is not None
    assert (left.status, left.result, left.total_tokens) == (TaskStatus.CANCELLED, None, None)


def test_cancelled_running_task_never_becomes_completed(db_session, queued_task, settings):
    claim = claim_as(db_session, queued_task, settings, now=utcnow())
    assert store_tasks.cancel_task(db_session, queued_task.id, now=utcnow()) == TaskStatus.CANCELLED
    assert lifecycle.record_success(db_session, claim, result="x", model="gpt-4o-mini", now=utcnow()) is False
    assert reload(db_session, queued_task).status == TaskStatus.CANCELLED


def test_execute_records_result_usage_attempts_and_timings(run_once, db_session, queued_task):
    outcome = run_once(queued_task, answer())
    row = reload(db_session, queued_task)
    assert outcome.status == "completed"
    assert row.status == TaskStatus.COMPLETED and row.result == "done: Task: Summarise\n\nDescription: the week"
    assert (row.prompt_tokens, row.completion_tokens, row.total_tokens, row.attempts) == (7, 3, 10, 1)
    assert row.finished_at >= row.started_at and row.duration_ms >= 0 and row.error is None


def test_completed_task_delivered_again_is_not_run_again(run_once, db_session, queued_task):
    run_once(queued_task, answer())
    again = run_once(queued_task, failing(AssertionError("the LLM must not be called")))
    assert again.status == "skipped" and again.error == "already completed"
    assert reload(db_session, queued_task).attempts == 1


def test_transient_error_requeues_the_task_with_a_backoff(run_once, db_session, queued_task):
    outcome = run_once(queued_task, failing(RetryableError("LLM rate limited (429)", delay=3.0)))
    row = reload(db_session, queued_task)
    assert outcome.status == "retrying" and outcome.retry_in >= 3.0
    assert row.status == TaskStatus.QUEUED and row.error == "LLM rate limited (429)" and row.attempts == 1


def test_permanent_error_fails_the_task_at_once(run_once, db_session, queued_task):
    outcome = run_once(queued_task, failing(PermanentError("LLM request failed (401): bad key")))
    row = reload(db_session, queued_task)
    assert outcome.status == "failed" and outcome.retry_in is None
    assert row.status == TaskStatus.FAILED and row.error == "LLM request failed (401): bad key" and row.finished_at


def test_last_allowed_attempt_failing_transiently_fails_with_that_error(run_once, db_session, queued_task, settings):
    run = failing(RetryableError("LLM request failed (503): overloaded"))
    for _ in range(settings.task_max_attempts):
        outcome = run_once(queued_task, run)
    row = reload(db_session, queued_task)
    assert outcome.status == "failed"
    assert row.attempts == settings.task_max_attempts
    assert row.error == f"gave up after {settings.task_max_attempts} attempts: LLM request failed (503): overloaded"


def test_agent_with_invalid_settings_fails_with_a_clear_message(
    run_once, db_session, queued_task, stored_agent, settings
):
    stored_agent.settings = {"temperature_typo": 3}
    db_session.flush()
    run_once(queued_task, answer())
    row = reload(db_session, queued_task)
    assert row.status == TaskStatus.FAILED and row.error.startswith("bad agent configuration: agent")
    assert "temperature_typo" in row.error


def test_running_task_whose_local_worker_process_is_gone_is_taken_over_at_once(db_session, queued_task, settings):
    # Given attempt 1 claimed by a process that has since died
    claim_as(db_session, queued_task, settings, now=utcnow(), owner="host/1/100")
    # When the redelivered message arrives
    taken = claim_as(
        db_session,
        queued_task,
        settings,
        now=utcnow(),
        owner="host/1/200",
        owner_is_gone=lambda owner: owner == "host/1/100",
    )
    # Then it runs attempt 2 and the lost attempt is in the history
    assert isinstance(taken, Claim) and taken.attempt == 2
    [lost] = reload(db_session, queued_task).attempt_history
    assert (lost.attempt, lost.outcome) == (1, "lost") and "host/1/100" in lost.error


def test_failed_attempts_are_kept_in_the_history(run_once, db_session, queued_task, settings):
    run = failing(RetryableError("LLM request failed (503): overloaded"))
    for _ in range(settings.task_max_attempts):
        run_once(queued_task, run)
    history = reload(db_session, queued_task).attempt_history
    assert [(h.attempt, h.outcome) for h in history] == [(1, "retried"), (2, "retried"), (3, "failed")]


def test_replayed_failed_task_gets_a_fresh_budget_and_keeps_its_history(run_once, db_session, queued_task):
    run_once(queued_task, failing(PermanentError("LLM request failed (401): bad key")))
    assert store_tasks.reset_for_replay(db_session, [queued_task.id], now=utcnow()) == [queued_task.id]
    db_session.execute(lifecycle.update(Task).where(Task.id == queued_task.id).values(status=TaskStatus.QUEUED))
    outcome = run_once(queued_task, answer())
    row = reload(db_session, queued_task)
    assert outcome.status == "completed" and (row.status, row.attempts, row.replays) == (TaskStatus.COMPLETED, 1, 1)
    assert [h.outcome for h in row.attempt_history] == ["failed"]


def test_replay_leaves_tasks_that_did_not_fail_alone(db_session, queued_task):
    assert store_tasks.reset_for_replay(db_session, [queued_task.id], now=utcnow()) == []
    assert reload(db_session, queued_task).status == TaskStatus.QUEUED


def test_sweep_finds_rows_stuck_without_a_message_and_only_those(db_session, stored_agent, settings):
    now = utcnow()
    long_ago = now - timedelta(seconds=settings.stale_task_after_seconds + 5)

    def row(status, age, **extra):
        task = Task(
            id=uuid.uuid4(),
            title=status.value,
            agent_id=stored_agent.id,
            user_id="u",
            status=status,
            attempts=0,
            updated_at=age,
            **extra,
        )
        db_session.add(task)
        return task.id

    stuck = {
        row(TaskStatus.PENDING, now - timedelta(seconds=settings.requeue_pending_after_seconds + 1)),
        row(TaskStatus.QUEUED, long_ago),
        row(TaskStatus.RUNNING, long_ago, claimed_at=long_ago),
    }
    fresh = {row(TaskStatus.PENDING, now), row(TaskStatus.QUEUED, now), row(TaskStatus.RUNNING, now, claimed_at=now)}
    settled = {row(TaskStatus.COMPLETED, long_ago), row(TaskStatus.FAILED, long_ago)}
    db_session.flush()
    # (Among these rows only: rows other tests committed earlier in the session may be due too.)
    ours = stuck | fresh | settled
    assert set(store_tasks.tasks_to_requeue(db_session, settings=settings, now=now, limit=100)) & ours == stuck
    # and the next sweep, straight after, leaves them alone
    assert set(store_tasks.tasks_to_requeue(db_session, settings=settings, now=now, limit=100)) & ours == set()


def test_postgres_sessions_carry_the_configured_statement_and_idle_in_transaction_timeouts(settings):
    # (A session of a worker cut off mid-transaction must not hold its tasks' row locks past the latter.)
    engine = make_engine(settings.model_copy(update={"db_statement_timeout_seconds": 2.5}))
    with engine.connect() as connection:
        assert connection.exec_driver_sql("SHOW statement_timeout").scalar() == "2500ms"
        assert connection.exec_driver_sql("SHOW idle_in_transaction_session_timeout").scalar() == "2500ms"
    engine.dispose()


def test_a_slow_reply_does_not_hold_back_the_rest_of_its_batch(
    llm_with, rollback_factory, db_session, stored_agent, settings
):
    # Given a batch where one LLM call takes 1.5 s and the others answer at once
    tasks = [
        Task(
            id=uuid.uuid4(),
            title="slow" if i == 0 else f"fast {i}",
            agent_id=stored_agent.id,
            user_id="u",
            status=TaskStatus.QUEUED,
            attempts=0,
        )
        for i in range(5)
    ]
    db_session.add_all(tasks)
    db_session.flush()

    async def run_llm(request, *, settings):
        await asyncio.sleep(1.5 if asked(request).startswith("Task: slow\n") else 0)
        return LLMReply(text=asked(request), usage=None)

    # When the batch runs
    outcomes = execute_agent_tasks(
        [str(t.id) for t in tasks],
        RunContext(session_factory=rollback_factory, settings=settings, llm=llm_with(run_llm)),
    )
    # Then every task completed, and the fast ones were recorded long before the slow one
    rows = [reload(db_session, task) for task in tasks]
    assert [o.status for o in outcomes] == ["completed"] * 5
    slow, fast = rows[0], rows[1:]
    assert all((slow.finished_at - row.finished_at).total_seconds() > 1.0 for row in fast)


def test_a_task_delivered_twice_in_one_batch_is_run_once(llm_with, rollback_factory, db_session, queued_task, settings):
    calls = []

    async def run_llm(request, *, settings):
        calls.append(asked(request))
        return LLMReply(text="once", usage=None)

    first, second = execute_agent_tasks(
        [str(queued_task.id)] * 2,
        RunContext(session_factory=rollback_factory, settings=settings, llm=llm_with(run_llm)),
    )
    assert (first.status, second.status) == ("completed", "skipped") and len(calls) == 1
    assert reload(db_session, queued_task).attempts == 1


def test_a_batch_cut_short_by_the_soft_time_limit_leaves_no_row_running(
    llm_with, rollback_factory, db_session, queued_task, settings
):
    async def never_answers(request, **_):
        await asyncio.sleep(30)

    # Given a batch waiting on an LLM that does not answer, when the soft time limit strikes (as billiard
    # raises it: from a signal handler, in the thread running the task)
    previous = signal.signal(signal.SIGALRM, _raise_soft_time_limit)
    signal.setitimer(signal.ITIMER_REAL, 0.5)
    try:
        [outcome] = execute_agent_tasks(
            [str(queued_task.id)],
            RunContext(session_factory=rollback_factory, settings=settings, llm=llm_with(never_answers)),
        )
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    # Then the claimed task is settled for a retry at once, not left running until the stale threshold
    row = reload(db_session, queued_task)
    assert outcome.status == "retrying"
    assert (row.status, row.error) == (TaskStatus.QUEUED, "task exceeded its soft time limit")


def _raise_soft_time_limit(signum, frame):
    raise SoftTimeLimitExceeded()
