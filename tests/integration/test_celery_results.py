"""Celery's result contract for agent tasks, on a real worker: though the messages run in batches, each
message's outcome is its Celery result, as `AsyncResult(task_id).get()` and the design's
`process_agent_task.delay(task_id)` expect."""

from __future__ import annotations

import time
import uuid

import pytest
import redis
from celery.result import AsyncResult

from agent_service.messaging.routing import PROCESS_TASK_NAME
from agent_service.submission.submit import cancel_task
from tests.integration.conftest import WORKER_REDIS
from tests.integration.test_worker import submit, unique
from tests.support import wait_until

pytestmark = [pytest.mark.worker, pytest.mark.usefixtures("worker")]


def test_a_completed_task_is_the_result_of_its_message(app, agent):
    task_id = submit(app, agent, unique("result"))
    reply = AsyncResult(task_id, app=app).get(timeout=20)
    assert reply["status"] == "completed" and reply["task_id"] == task_id
    assert reply["result"].startswith("Offline answer to:")
    assert reply["usage"]["total_tokens"] == reply["usage"]["prompt_tokens"] + reply["usage"]["completion_tokens"] > 0


def test_the_designs_delay_line_answers_a_bad_id_with_an_error(app):
    # The design's test line, `process_agent_task.delay('test_task_id')`, plus .get()
    reply = app.signature(PROCESS_TASK_NAME).delay("test_task_id").get(timeout=20)
    assert reply == {"status": "error", "error": "invalid task id: a task id must be a UUID string, got 'test_task_id'"}


def test_an_unknown_task_id_answers_task_not_found(app):
    missing = str(uuid.uuid4())
    reply = app.signature(PROCESS_TASK_NAME).delay(missing).get(timeout=20)
    assert reply == {"status": "error", "error": f"task not found: {missing}"}


def test_a_failed_task_answers_with_its_error(app, agent, llm):
    title = unique("refused key")
    llm.add_fault(fault="401", match=title)
    reply = AsyncResult(submit(app, agent, title), app=app).get(timeout=20)
    assert reply["status"] == "failed" and reply["error"].startswith("LLM request failed (401)")


def test_a_task_cancelled_while_running_answers_cancelled(app, agent, llm):
    title = unique("cancelled while slow")
    llm.add_fault(fault="slow", match=title, delay_ms=1500)
    task_id = submit(app, agent, title)
    wait_until(lambda: llm.requests(title), what="LLM call")
    cancel_task(task_id, services=app.services)
    reply = AsyncResult(task_id, app=app).get(timeout=20)
    assert reply == {"status": "cancelled", "task_id": task_id}


def test_a_message_due_for_retry_stays_pending_until_the_final_outcome(app, agent, llm):
    title = unique("retried later")
    llm.add_fault(fault="429", match=title, times=1, retry_after=2)
    result = AsyncResult(submit(app, agent, title), app=app)
    # Given the first attempt was turned away with Retry-After: 2
    wait_until(lambda: llm.requests(title), what="first LLM call")
    time.sleep(0.5)
    # Then the message has no result yet, and the retry's outcome becomes it
    assert result.state == "PENDING"
    assert result.get(timeout=20)["status"] == "completed"
    assert len(llm.requests(title)) == 2


def test_a_message_for_a_finished_task_answers_with_its_final_outcome(app, agent, llm):
    title = unique("asked twice")
    task_id = submit(app, agent, title)
    first = AsyncResult(task_id, app=app).get(timeout=20)
    # When another message names the same task (a new message id)
    again = app.signature(PROCESS_TASK_NAME).delay(task_id).get(timeout=20)
    # Then it answers the task's final outcome, without running it again
    assert again == first and len(llm.requests(title)) == 1


def test_results_expire_after_the_configured_time(app, agent, settings):
    task_id = submit(app, agent, unique("expiring"))
    AsyncResult(task_id, app=app).get(timeout=20)
    ttl = redis.Redis.from_url(WORKER_REDIS).ttl(f"celery-task-meta-{task_id}")
    assert settings.result_expires_seconds - 60 < ttl <= settings.result_expires_seconds
