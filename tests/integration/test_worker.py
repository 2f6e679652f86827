"""Layer 3: a real `celery worker` process on Redis and PostgreSQL, calling the bundled LLM server
over HTTP through the real openai client."""

from __future__ import annotations

import json
import re
import time
import uuid

import httpx
import pytest
from sqlalchemy import update

from agent_service.database import session_scope
from agent_service.messaging.routing import HEALTH_TASK_NAME, PROCESS_TASK_NAME
from agent_service.models import Agent, TaskStatus
from agent_service.tasks import create_agent_task, create_agent_tasks
from tests.support import listening_addresses, wait_for_final

pytestmark = [pytest.mark.worker, pytest.mark.usefixtures("worker")]


def submit(app, agent, title: str, **fields) -> str:
    return create_agent_task({"title": title, "agent_id": str(agent.id), "user_id": "u-worker", **fields}, app=app)


def unique(label: str) -> str:
    return f"{label} {uuid.uuid4().hex[:10]}"


def test_many_tasks_complete_once_with_results_usage_and_timings(broker_app, agent, llm, session_factory):
    marker = unique("batch")
    items = [
        {"title": f"{marker} #{i}", "description": f"item {i}", "agent_id": str(agent.id), "user_id": "u"}
        for i in range(60)
    ]
    tasks = wait_for_final(session_factory, create_agent_tasks(items, app=broker_app), timeout=90)
    assert {task.status for task in tasks.values()} == {TaskStatus.COMPLETED}
    for task in tasks.values():
        assert task.result.startswith("Offline answer to: Task: " + marker)
        assert task.attempts == 1 and task.total_tokens == task.prompt_tokens + task.completion_tokens > 0
        assert task.started_at and task.finished_at and task.duration_ms >= 0 and task.error is None
    assert len(llm.requests(marker)) == 60  # one LLM call per task, none twice


def test_agent_prompt_title_and_description_reach_the_llm(app, agent, llm, session_factory):
    title = unique("prompt check")
    wait_for_final(session_factory, [submit(app, agent, title, description="the fine print")])
    [request] = llm.requests(title)
    assert "You are a careful assistant." in request["text"] and "the fine print" in request["text"]
    assert request["model"] == "gpt-4o-mini"


def test_health_check_is_answered_by_the_worker_on_the_system_queue(broker_app):
    reply = broker_app.send_task(HEALTH_TASK_NAME).get(timeout=30)
    assert reply["status"] == "ok" and reply["database"] == "ok"


def test_tasks_are_routed_to_their_queues(idle_app, idle_redis):
    idle_app.send_task(HEALTH_TASK_NAME, ignore_result=True)
    idle_app.send_task(PROCESS_TASK_NAME, args=[str(uuid.uuid4())], ignore_result=True)
    assert idle_redis.llen("system") == 1 and idle_redis.llen("agent_tasks") == 1


def test_each_queue_has_an_exchange_and_routing_key_of_its_own(app, worker_log):
    # What `celery inspect active_queues` prints, asked of the running worker over the broker
    replies = app.control.inspect(timeout=5).active_queues()
    [queues] = [queues for name, queues in replies.items() if name.startswith("test@")]
    declared = {queue["name"]: (queue["exchange"]["name"], queue["routing_key"]) for queue in queues}
    assert declared == {"agent_tasks": ("agent_tasks", "agent_tasks"), "system": ("system", "system")}
    # and its start-up banner (the log is appended to by every run: the last banner is this worker's)
    banner_lines = re.findall(r"\.> system\s+(exchange=\S+ key=\S+)", worker_log.read_text())
    assert banner_lines[-1] == "exchange=system(direct) key=system"


def test_on_rabbitmq_the_queues_are_quorum_queues_that_dead_letter_and_countdowns_have_delay_queues(
    rabbitmq_app, rabbitmq_vhost, settings
):
    # Given the worker on RabbitMQ (started by rabbitmq_app), the queues it declared
    queues = rabbitmq_vhost.queues()
    # Then the service's queues are quorum queues whose messages are dead-lettered past the delivery limit
    for name in ("agent_tasks", "system"):
        assert queues[name]["type"] == "quorum"
        assert queues[name]["arguments"]["x-delivery-limit"] == settings.broker_delivery_limit
        assert queues[name]["arguments"]["x-dead-letter-exchange"] == "dead_letters"
    assert queues["dead_letters"]["type"] == "quorum"
    # And countdowns wait in Celery's native delayed delivery queues (one per power of two seconds)
    assert {f"celery_delayed_{level}" for level in range(28)} <= queues.keys()


def test_transient_fault_is_retried_and_the_attempts_are_counted(broker_app, agent, llm, session_factory):
    title = unique("flaky")
    llm.add_fault(fault="500", match=title, times=1)
    task = wait_for_final(session_factory, [submit(broker_app, agent, title)])
    [row] = task.values()
    assert row.status == TaskStatus.COMPLETED and row.attempts == 2 and row.error is None
    assert [r["status"] for r in llm.requests(title)] == [500, 200]


def test_retry_after_is_honoured_before_the_next_attempt(broker_app, agent, llm, session_factory):
    title = unique("rate limited")
    llm.add_fault(fault="429", match=title, times=1, retry_after=2)
    [row] = wait_for_final(session_factory, [submit(broker_app, agent, title)]).values()
    first, second = llm.requests(title)
    assert row.status == TaskStatus.COMPLETED and row.attempts == 2
    assert second["at"] - first["at"] >= 2.0


def test_permanent_fault_fails_at_once_with_a_clear_error(app, agent, llm, session_factory):
    title = unique("bad key")
    llm.add_fault(fault="401", match=title)
    [row] = wait_for_final(session_factory, [submit(app, agent, title)]).values()
    assert row.status == TaskStatus.FAILED and row.attempts == 1
    assert row.error.startswith("LLM request failed (401)")
    assert len(llm.requests(title)) == 1


def test_exhausted_retries_fail_with_the_last_error_recorded(broker_app, agent, llm, session_factory, settings):
    title = unique("overloaded")
    llm.add_fault(fault="503", match=title)
    [row] = wait_for_final(session_factory, [submit(broker_app, agent, title)]).values()
    assert row.status == TaskStatus.FAILED and row.attempts == settings.task_max_attempts
    assert row.error.startswith(f"gave up after {settings.task_max_attempts} attempts: LLM request failed (503)")
    assert len(llm.requests(title)) == settings.task_max_attempts


def test_redelivered_completed_task_is_not_run_again(app, agent, llm, session_factory):
    title = unique("once only")
    task_id = submit(app, agent, title)
    [before] = wait_for_final(session_factory, [task_id]).values()
    # When the same message arrives again (as after a lost ack)
    app.send_task(PROCESS_TASK_NAME, args=[task_id], task_id=task_id, ignore_result=True)
    follow_up = submit(app, agent, unique("after redelivery"))
    wait_for_final(session_factory, [follow_up])
    time.sleep(0.5)
    # Then nothing changed and the LLM was called once
    [after] = wait_for_final(session_factory, [task_id]).values()
    assert (after.attempts, after.finished_at, after.result) == (before.attempts, before.finished_at, before.result)
    assert len(llm.requests(title)) == 1


def test_agent_with_bad_configuration_fails_without_calling_the_llm(app, agent, llm, session_factory):
    with session_scope(session_factory) as session:
        session.execute(update(Agent).where(Agent.id == agent.id).values(settings={"top_p": 7}))
    title = unique("misconfigured")
    [row] = wait_for_final(session_factory, [submit(app, agent, title)]).values()
    assert row.status == TaskStatus.FAILED and row.error.startswith("bad agent configuration")
    assert llm.requests(title) == []


def test_malformed_llm_reply_is_retried_until_a_good_one(app, agent, llm, session_factory):
    title = unique("garbled")
    llm.add_fault(fault="malformed", match=title, times=1)
    [row] = wait_for_final(session_factory, [submit(app, agent, title)]).values()
    assert row.status == TaskStatus.COMPLETED and row.attempts == 2


def test_a_reply_sent_as_text_plain_json_is_read_and_a_reply_without_choices_is_retried(
    app, agent, llm, session_factory
):
    # Given a provider (behind a proxy) sending one task's reply as text/plain, and another's without choices
    plain, empty = unique("text-typed"), unique("no-choices")
    llm.add_fault(fault="text_type", match=plain, times=1)
    llm.add_fault(fault="empty", match=empty, times=1)
    # When both run
    rows = wait_for_final(session_factory, [submit(app, agent, plain), submit(app, agent, empty)])
    by_title = {row.title: row for row in rows.values()}
    # Then the first completed at its first attempt with the reply's text and usage, the second at its second
    assert (by_title[plain].status, by_title[plain].attempts) == (TaskStatus.COMPLETED, 1)
    assert by_title[plain].result.startswith("Offline answer") and by_title[plain].prompt_tokens > 0
    assert (by_title[empty].status, by_title[empty].attempts) == (TaskStatus.COMPLETED, 2)


def test_each_task_is_logged_and_counted_in_prometheus(app, agent, session_factory, metrics_port, worker_log):
    marker = unique("observed")
    task_ids = create_agent_tasks(
        [{"title": f"{marker} {i}", "agent_id": str(agent.id), "user_id": "u"} for i in range(5)], app=app
    )
    wait_for_final(session_factory, task_ids)
    time.sleep(0.5)  # the log line is written after the batch returns
    lines = [json.loads(line) for line in worker_log.read_text().splitlines() if line.startswith("{")]
    logged = {
        line["task_id"]: line for line in lines if line.get("task") == "agent_task" and line.get("task_id") in task_ids
    }
    assert set(logged) == set(task_ids)
    assert all(
        line["status"] == "completed" and line["agent_id"] == str(agent.id) and line["duration_ms"] >= 0
        for line in logged.values()
    )
    metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
    completed = re.search(r'agent_service_task_runs_total\{status="completed",task="agent_task"\} (\S+)', metrics)
    assert completed and float(completed.group(1)) >= 5
    assert 'agent_service_task_duration_seconds_count{task="agent_task"}' in metrics
    assert re.search(r'agent_service_llm_tokens_total\{kind="prompt",model="gpt-4o-mini"\} [1-9]', metrics)
    assert re.search(r'agent_service_llm_cost_usd_total\{model="gpt-4o-mini"\} [0-9.e-]*[1-9]', metrics)


def test_metrics_exporter_listens_on_metrics_address_which_is_loopback_by_default(metrics_port):
    assert listening_addresses(metrics_port) == ["127.0.0.1"]
