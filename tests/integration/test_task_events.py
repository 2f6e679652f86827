"""Flower, `celery events` and any other event consumer see each agent task, though celery-batches sends
no task events of its own: a real worker, events switched on as Flower does it, and a real receiver."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from celery.result import AsyncResult

from agent_service.devtools.processes import celery_worker
from agent_service.tasks import create_agent_tasks
from tests.integration.conftest import IDLE_REDIS
from tests.integration.test_worker import unique
from tests.support import wait_for_final, wait_until

pytestmark = [pytest.mark.worker, pytest.mark.usefixtures("worker")]


@contextmanager
def receiving(app) -> Iterator[tuple[dict[str, list[dict]], threading.Event]]:
    """A real event receiver on `app`'s broker: the task events by task id, and whether a worker's heartbeat
    has been seen."""
    events: dict[str, list[dict]] = defaultdict(list)
    heartbeats = threading.Event()

    def on_event(event: dict) -> None:
        if event["type"].startswith("task-"):
            events[event["uuid"]].append(event)
        else:
            heartbeats.set()

    with app.connection() as connection:
        receiver = app.events.Receiver(connection, handlers={"*": on_event})
        listener = threading.Thread(target=receiver.capture, kwargs={"wakeup": False}, daemon=True)
        listener.start()
        try:
            yield events, heartbeats
        finally:
            receiver.should_stop = True
            listener.join(timeout=10)


@pytest.fixture
def task_events(app) -> Iterator[dict[str, list[dict]]]:
    """The task events the session's worker sends while the test runs, by task id, with events switched on
    over the control API (as Flower does, with `enable_events`) and off again afterwards."""
    with receiving(app) as (events, heartbeats):
        app.control.enable_events()
        wait_until(heartbeats.is_set, what="worker heartbeat")
        try:
            yield events
        finally:
            app.control.disable_events()


def has_succeeded(events: list[dict]) -> bool:
    return any(event["type"] == "task-succeeded" for event in events)


def test_each_agent_task_is_received_started_and_succeeded_with_runtime_and_result(app, agent, task_events):
    marker = unique("watched")
    items = [{"title": f"{marker} {i}", "agent_id": str(agent.id), "user_id": "u"} for i in range(7)]
    task_ids = create_agent_tasks(items, app=app)
    wait_until(
        lambda: all(has_succeeded(task_events[task_id]) for task_id in task_ids),
        what="task-succeeded for every task",
        timeout=20,
    )
    for task_id in task_ids:
        seen = {event["type"]: event for event in task_events[task_id]}
        assert list(seen) == ["task-received", "task-started", "task-succeeded"]
        assert seen["task-received"]["name"] == "worker.process_agent_task"
        succeeded = seen["task-succeeded"]
        assert 0 < succeeded["runtime"] < 5
        # The result as Celery sends it, a repr cut to a length (so its long strings end early)
        assert succeeded["result"].startswith(f"{{'status': 'completed', 'task_id': '{task_id}', 'result': ")


def test_a_failed_task_is_reported_failed_and_a_retried_one_retried(app, agent, llm, session_factory, task_events):
    refused, flaky = unique("refused"), unique("flaky once")
    llm.add_fault(fault="401", match=refused)
    llm.add_fault(fault="500", match=flaky, times=1)
    items = [{"title": title, "agent_id": str(agent.id), "user_id": "u"} for title in (refused, flaky)]
    failed_id, flaky_id = create_agent_tasks(items, app=app)
    wait_for_final(session_factory, [failed_id, flaky_id])
    wait_until(lambda: has_succeeded(task_events[flaky_id]), what="flaky success")
    [failure] = [event for event in task_events[failed_id] if event["type"] == "task-failed"]
    assert failure["exception"].startswith("LLM request failed (401)")
    kinds = [event["type"] for event in task_events[flaky_id]]
    attempt = ["task-received", "task-started"]
    assert kinds == [*attempt, "task-retried", *attempt, "task-succeeded"]


def test_no_task_event_is_sent_while_events_are_off(app, agent, session_factory):
    with receiving(app) as (events, _):
        [task_id] = create_agent_tasks(
            [{"title": unique("unwatched"), "agent_id": str(agent.id), "user_id": "u"}], app=app
        )
        wait_for_final(session_factory, [task_id])
        time.sleep(1.5)  # longer than the worker takes to flush its buffered events
    assert events[task_id] == []


def test_a_prefork_worker_reports_each_task_and_its_result_too(idle_app, idle_redis, agent, settings, tmp_path):
    # Given a prefork worker with task events on (-E), whose pool children run the batches
    env = {**settings.as_env(), "REDIS_URL": IDLE_REDIS}
    worker = dict(env=env, log_path=tmp_path / "prefork.log", name="prefork", pool="prefork", concurrency=2)
    with receiving(idle_app) as (events, _), celery_worker(**worker, extra_args=("-E",)):
        # When tasks run there
        items = [{"title": unique("prefork"), "agent_id": str(agent.id), "user_id": "u"} for _ in range(3)]
        task_ids = create_agent_tasks(items, app=idle_app)
        # Then each one's result and its events arrive, the outcome's from the worker when the batch returns
        for task_id in task_ids:
            assert AsyncResult(task_id, app=idle_app).get(timeout=30)["status"] == "completed"
        wait_until(
            lambda: all(has_succeeded(events[task_id]) for task_id in task_ids), what="task-succeeded", timeout=10
        )
    for task_id in task_ids:
        assert [event["type"] for event in events[task_id]] == ["task-received", "task-started", "task-succeeded"]
