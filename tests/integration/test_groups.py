"""Groups: tasks submitted under a group name end the group exactly once, whichever way they end, and the
group's on_complete Celery task runs once, run by a real Celery worker of another app (the caller's)."""

from __future__ import annotations

import json
import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial

import pytest
import redis
from sqlalchemy import event, update

from agent_service.clock import utcnow
from agent_service.database import session_scope
from agent_service.devtools.processes import started
from agent_service.errors import PermanentError, TaskValidationError
from agent_service.execution.context import RunContext
from agent_service.execution.pipeline import execute_agent_tasks
from agent_service.llm.messages import LLMReply, LLMRequest, Usage
from agent_service.messaging.groups import (
    CALLBACK_GRACE,
    callback_task_id,
    send_callbacks_quietly,
    send_overdue_callbacks,
)
from agent_service.messaging.routing import SWEEP_TASK_NAME
from agent_service.models import Task, TaskGroup, TaskStatus
from agent_service.store import lifecycle
from agent_service.store.groups import note_tasks_ended
from agent_service.submission.submit import cancel_task
from agent_service.tasks import create_agent_tasks, group_progress
from tests.group_callback_app import CALLBACK_NAME, runs_key
from tests.integration.conftest import LOG_DIR, WORKER_REDIS
from tests.support import run_cli, wait_for_final, wait_until


@contextmanager
def running_callback_worker(app) -> Iterator[redis.Redis]:
    """The caller's own Celery worker (tests/group_callback_app.py) on `app`'s broker, consuming the queue group
    callbacks go to; yields the Redis where its task records each run."""
    command = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "tests.group_callback_app",
        "worker",
        "--pool=solo",
        "--loglevel=INFO",
    ]
    queue = app.services.settings.group_callback_queue
    env = {"CALLBACK_BROKER_URL": app.conf.broker_url, "CALLBACK_REDIS_URL": WORKER_REDIS}
    log_path = LOG_DIR / f"callbacks-{app.services.settings.broker_url.split(':')[0]}.log"
    with started([*command, "-Q", queue, "-n", "callbacks@%h"], env=env, log_path=log_path):
        yield redis.Redis.from_url(WORKER_REDIS)


@pytest.fixture(scope="module")
def callback_worker(app) -> Iterator[redis.Redis]:
    with running_callback_worker(app) as client:
        yield client


@pytest.fixture(scope="module")
def broker_callback_worker(broker_app) -> Iterator[redis.Redis]:
    """A callback worker on each broker in turn (see `broker_app`)."""
    with running_callback_worker(broker_app) as client:
        yield client


def callback_runs(client: redis.Redis, group_id: str) -> list[dict]:
    return [json.loads(raw) for raw in client.lrange(runs_key(group_id), 0, -1)]


def items(agent, count: int, *, user: str = "u-groups", title: str = "Summarise") -> list[dict]:
    return [{"title": f"{title} {n}", "agent_id": str(agent.id), "user_id": user} for n in range(count)]


def new_group() -> str:
    return f"nightly-{uuid.uuid4().hex[:8]}"


def group_row(session_factory, group_id: str) -> TaskGroup:
    with session_scope(session_factory) as session:
        return session.get(TaskGroup, group_id)


def asked(request: LLMRequest) -> str:
    return request.messages[-1][1]


def answering(*, fail_when: str | None = None):
    """A stand-in LLM that answers every task, or fails for good the ones whose prompt has `fail_when`."""

    async def run_llm(request, **_):
        if fail_when and fail_when in asked(request):
            raise PermanentError("LLM request failed (400): refused for the test")
        return LLMReply(text=f"done: {asked(request)}", usage=Usage(7, 3, 10))

    return run_llm


def run_in_process(app, llm_with, task_ids: list[str], *, run_llm=None, send_callbacks: bool = True):
    """One attempt of each task, as a worker runs it; without `send_callbacks`, as a worker that was lost
    right after its commit."""
    services = app.services
    sender = partial(send_callbacks_quietly, app, services.session_factory, services.settings)
    return execute_agent_tasks(
        task_ids,
        RunContext(
            session_factory=services.session_factory,
            settings=services.settings,
            llm=llm_with(run_llm or answering()),
            on_groups_ended=sender if send_callbacks else None,
        ),
    )


def test_a_group_ends_once_and_its_on_complete_task_runs_once_with_every_outcome(
    broker_app, broker_callback_worker, agent, session_factory
):
    # Given forty tasks submitted as one group with an on_complete task, run by the worker in concurrent batches
    group = new_group()
    ids = create_agent_tasks(items(agent, 40), app=broker_app, group=group, on_complete=CALLBACK_NAME)
    # When they all complete
    wait_for_final(session_factory, ids)
    wait_until(lambda: callback_runs(broker_callback_worker, group), what="group callback")
    # Then the group ended, its callback ran once with every task's outcome, and a sweep sends nothing more
    later = utcnow() + 2 * CALLBACK_GRACE
    assert send_overdue_callbacks(broker_app, session_factory, broker_app.services.settings, now=later) == 0
    [run] = callback_runs(broker_callback_worker, group)
    assert run["celery_task_id"] == callback_task_id(group) and run["group_id"] == group
    assert sorted(outcome["task_id"] for outcome in run["outcomes"]) == sorted(ids)
    assert {outcome["status"] for outcome in run["outcomes"]} == {"completed"}
    assert all(outcome["result"] and outcome["error"] is None for outcome in run["outcomes"])
    row = group_row(session_factory, group)
    assert row.ended_at is not None and row.callback_sent_at is not None and row.callback_sent_at >= row.ended_at
    progress = group_progress(group, app=broker_app)
    assert progress.counts[TaskStatus.COMPLETED] == 40 and progress.unfinished == 0 and progress.prompt_tokens > 0


def test_two_transactions_ending_the_last_two_tasks_at_once_end_the_group_once(idle_app, agent, session_factory):
    # Given a group of two running tasks
    group = new_group()
    ids = [uuid.UUID(i) for i in create_agent_tasks(items(agent, 2), app=idle_app, group=group)]
    with session_scope(session_factory) as session:
        claims = lifecycle.claim_tasks(
            session, ids, settings=idle_app.services.settings, now=utcnow(), owner="test/1/1"
        )
    both_recorded = threading.Barrier(2)
    ended: list[list[str]] = []

    def finish(claim) -> None:
        with session_scope(session_factory) as session:
            lifecycle.record_success(session, claim, result="done", model="gpt-4o-mini", now=utcnow())
            both_recorded.wait(timeout=10)  # each sees the other's task still running, uncommitted
            ended.append(note_tasks_ended(session, [claim.task_id], now=utcnow()))

    # When two workers' transactions complete one each, at the same time
    threads = [threading.Thread(target=finish, args=(claim,)) for claim in claims]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    # Then exactly one of them ended the group
    assert sorted(ended) == [[], [group]]
    assert group_row(session_factory, group).ended_at is not None


def test_the_sweeper_sends_the_callback_a_lost_worker_left_unsent_once(
    worker, callback_worker, app, idle_app, agent, session_factory, llm_with
):
    # Given a group whose last task's worker was lost right after the commit that ended the group
    group = new_group()
    ids = create_agent_tasks(items(agent, 3), app=idle_app, group=group, on_complete=CALLBACK_NAME)
    run_in_process(app, llm_with, ids, send_callbacks=False)
    row = group_row(session_factory, group)
    assert row.ended_at is not None and row.callback_sent_at is None
    # When the sweeper runs within the grace left to the sender: it leaves the group to it
    assert send_overdue_callbacks(app, session_factory, app.services.settings, now=utcnow()) == 0
    # And when the worker's sweep task runs twice, after the grace
    with session_scope(session_factory) as session:
        ended_earlier = utcnow() - 2 * CALLBACK_GRACE
        session.execute(update(TaskGroup).where(TaskGroup.id == group).values(ended_at=ended_earlier))
    for _ in range(2):
        assert app.send_task(SWEEP_TASK_NAME).get(timeout=30)["status"] == "ok"
    # Then the callback ran once
    wait_until(lambda: callback_runs(callback_worker, group), what="group callback")
    [run] = callback_runs(callback_worker, group)
    assert len(run["outcomes"]) == 3 and group_row(session_factory, group).callback_sent_at is not None


def test_failed_and_cancelled_tasks_end_their_group_and_the_last_cancel_sends_the_callback(
    callback_worker, app, idle_app, agent, session_factory, llm_with
):
    # Given a group of three tasks: one will complete, one fail for good, one be cancelled
    group = new_group()
    done, failing, cancelled = create_agent_tasks(
        [*items(agent, 1, title="Good"), *items(agent, 1, title="Bad"), *items(agent, 1, title="Dropped")],
        app=idle_app,
        group=group,
        on_complete=CALLBACK_NAME,
    )
    # When the first two run (one fails), then the third is cancelled
    run_in_process(app, llm_with, [done, failing], run_llm=answering(fail_when="Bad"))
    assert group_row(session_factory, group).ended_at is None
    assert cancel_task(cancelled, services=app.services, app=app) == "cancelled"
    # Then the cancel ended the group, and the callback ran once with the three outcomes
    wait_until(lambda: callback_runs(callback_worker, group), what="group callback")
    [run] = callback_runs(callback_worker, group)
    statuses = {outcome["task_id"]: outcome["status"] for outcome in run["outcomes"]}
    assert statuses == {done: "completed", failing: "failed", cancelled: "cancelled"}
    errors = {outcome["task_id"]: outcome["error"] for outcome in run["outcomes"]}
    assert "refused for the test" in errors[failing] and errors[cancelled] == "cancelled"
    progress = group_progress(group, app=app)
    assert (progress.counts[TaskStatus.FAILED], progress.counts[TaskStatus.CANCELLED]) == (1, 1)
    assert progress.ended_at is not None and progress.callback_sent_at is not None


def test_ungrouped_tasks_record_their_outcomes_without_touching_groups(app, idle_app, agent, llm_with):
    # Given ungrouped tasks, and grouped ones for comparison
    ungrouped = create_agent_tasks(items(agent, 3), app=idle_app)
    grouped = create_agent_tasks(items(agent, 3), app=idle_app, group=new_group())
    statements: list[str] = []

    def seen(_conn, _cursor, statement, *_args) -> None:
        statements.append(statement)

    engine = app.services.engine
    event.listen(engine, "before_cursor_execute", seen)
    try:
        # When each set runs
        run_in_process(app, llm_with, ungrouped)
        ungrouped_statements, statements[:] = list(statements), []
        run_in_process(app, llm_with, grouped)
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    # Then the ungrouped ones cost no query about groups, nor any query more than the grouped ones
    assert not [s for s in ungrouped_statements if "task_groups" in s or "group_id IN" in s]
    assert [s for s in statements if "task_groups" in s]
    assert len(ungrouped_statements) < len(statements)


def test_a_group_takes_more_tasks_of_its_user_until_it_ends(app, idle_app, agent, session_factory, llm_with):
    # Given a group of one task
    group = new_group()
    first = create_agent_tasks(items(agent, 1), app=idle_app, group=group, on_complete=CALLBACK_NAME)
    # When another user, another on_complete or no agreement on the user try to join it: refused, nothing written
    refusals = {
        "belongs to another user": dict(items=items(agent, 1, user="intruder")),
        "cannot change": dict(items=items(agent, 1), on_complete="other.tasks.done"),
        "a group belongs to one user": dict(items=[*items(agent, 1), *items(agent, 1, user="u2")]),
    }
    for message, attempt in refusals.items():
        with pytest.raises(TaskValidationError, match=message):
            create_agent_tasks(attempt["items"], app=idle_app, group=group, on_complete=attempt.get("on_complete"))
    # And the same user adds a task (naming the same on_complete, or none): the group waits for it too
    second = create_agent_tasks(items(agent, 1), app=idle_app, group=group)
    run_in_process(app, llm_with, first, send_callbacks=False)
    assert group_row(session_factory, group).ended_at is None
    run_in_process(app, llm_with, second, send_callbacks=False)
    assert group_row(session_factory, group).ended_at is not None
    assert group_progress(group, app=app).counts[TaskStatus.COMPLETED] == 2
    # Then, once ended, it takes no more
    with pytest.raises(TaskValidationError, match=r"ended at .* takes no more tasks"):
        create_agent_tasks(items(agent, 1), app=idle_app, group=group)
    with session_scope(session_factory) as session:
        assert session.query(Task).filter(Task.group_id == group).count() == 2


def test_cli_submits_to_a_group_and_shows_its_progress(settings, idle_app, agent, session_factory):
    cli = partial(run_cli, idle_app.services.settings)
    group = new_group()
    submitted = cli(
        "submit", "--agent", agent.name, "--title", "T", "--user", "u1", "--group", group, "--on-complete", "app.done"
    )
    assert submitted.returncode == 0, submitted.stderr
    with session_scope(session_factory) as session:
        task = session.get(Task, uuid.UUID(submitted.stdout.strip()))
        assert task.group_id == group
    shown = cli("group", group)
    assert shown.returncode == 0, shown.stderr
    lines = {line.split(maxsplit=1)[0]: line.split(maxsplit=1)[1] for line in shown.stdout.splitlines()}
    assert lines["tasks"] == "1, 1 not finished" and lines["queued"] == "1" and lines["completed"] == "0"
    assert lines["ended"] == "not yet" and lines["on_complete"] == "app.done (not sent)"
    unknown = cli("group", "no-such-group")
    assert unknown.returncode == 2 and "no group 'no-such-group'" in unknown.stdout


def test_a_cancel_that_is_not_the_last_leaves_the_group_running(idle_app, agent, session_factory):
    group = new_group()
    first, _ = create_agent_tasks(items(agent, 2), app=idle_app, group=group)
    assert cancel_task(first, services=idle_app.services) == "cancelled"
    assert group_row(session_factory, group).ended_at is None
    assert group_progress(group, app=idle_app).counts[TaskStatus.CANCELLED] == 1
