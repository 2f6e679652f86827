"""A worker SIGKILLed between two steps of an api task: another worker resumes the run without repeating a
recorded step. Its own module, so that no other worker on the idle broker can take the task first."""

from __future__ import annotations

import signal
import uuid

from agent_service.database import session_scope
from agent_service.devtools.processes import celery_worker, start_worker, stop_process
from agent_service.messaging.publisher import publish_tasks
from agent_service.models import StepStatus, Task, TaskStatus
from tests.integration.api.conftest import SLOW_MS, calls, step_rows, task_row, turns_asked
from tests.integration.conftest import LOG_DIR
from tests.support import wait_for_final, wait_until


def test_a_worker_killed_between_two_steps_resumes_without_repeating_one(
    api_app, api_settings, submit, session_factory, llm, tool_server
):
    # Given a worker running a task whose first turn orders (not idempotent) and waits on a slow tool
    env = api_settings.as_env()
    doomed = start_worker(env=env, log_path=LOG_DIR / "api-doomed.log", name="api-doomed")
    try:
        task_id, token = submit([calls(("order", {"item": "tent"}), ("wait", {"ms": SLOW_MS})), {"content": "Set."}])
        # When the order is recorded and the slow call is under way
        wait_until(lambda: tool_server.count(path="/slow") == 1, what="slow call under way", timeout=60)
        wait_until(
            lambda: any(
                s.tool_name == "order" and s.status is StepStatus.SUCCEEDED for s in step_rows(session_factory, task_id)
            ),
            what="order recorded",
        )
        # the worker's whole process group is SIGKILLed
        stop_process(doomed, sig=signal.SIGKILL)
    finally:
        stop_process(doomed, sig=signal.SIGKILL)
    assert task_row(session_factory, task_id).status == TaskStatus.RUNNING
    # And another worker gets the task's message again (as the sweeper or a redelivery would send it)
    with celery_worker(env=env, log_path=LOG_DIR / "api-rescuer.log", name="api-rescuer"):
        publish_tasks(api_app, [uuid.UUID(task_id)])
        task = wait_for_final(session_factory, [task_id])[task_id]
    # Then it completes; each turn was asked once, the order was sent once (with its idempotency key, which
    # its step records), and only the idempotent call in flight at the kill was made again
    assert (task.status, task.result) == (TaskStatus.COMPLETED, "Set.")
    assert turns_asked(llm, token) == [0, 1]
    [order] = tool_server.calls(path="/orders")
    rows = step_rows(session_factory, task_id)
    assert order["headers"]["idempotency-key"] == rows[1].idempotency_key == f"{task_id}:{rows[1].tool_call_id}"
    assert tool_server.count(path="/slow") == 2
    assert [(s.position, s.status, s.attempt) for s in rows] == [
        (0, StepStatus.SUCCEEDED, 1),
        (1, StepStatus.SUCCEEDED, 1),
        (2, StepStatus.SUCCEEDED, 2),
        (3, StepStatus.SUCCEEDED, 2),
    ]
    with session_scope(session_factory) as session:
        history = session.get(Task, uuid.UUID(task_id)).attempt_history
        assert [attempt.outcome for attempt in history] == ["lost"]
