"""Metrics that tell the truth, scraped from a real worker's exporter: each task's own duration, the real
retry delay in its log line, the backlog gauges and the LLM call latency."""

from __future__ import annotations

import json
import re
import uuid
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import delete

from agent_service.clock import utcnow
from agent_service.database import session_scope
from agent_service.execution.outcomes import Outcome
from agent_service.messaging.queues import Backlog, queue_lengths
from agent_service.messaging.routing import AGENT_QUEUE, HEALTH_TASK_NAME, PROCESS_TASK_NAME
from agent_service.models import Task, TaskStatus
from agent_service.tasks import create_agent_tasks
from tests.integration.test_worker import unique
from tests.support import wait_for_final

pytestmark = [pytest.mark.worker, pytest.mark.usefixtures("worker")]


def scrape(port: int) -> str:
    return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text


def sample(metrics: str, name: str, *, default: float | None = None) -> float:
    found = re.search(rf"^{re.escape(name)} (\S+)$", metrics, re.MULTILINE)
    if found is None and default is not None:
        return default
    assert found, f"{name} not exported"
    return float(found.group(1))


def logged(worker_log, task_ids: list[str]) -> dict[str, list[dict]]:
    lines = [json.loads(line) for line in worker_log.read_text().splitlines() if line.startswith("{")]
    by_task: dict[str, list[dict]] = {task_id: [] for task_id in task_ids}
    for line in lines:
        if line.get("task") == "agent_task" and line.get("task_id") in by_task:
            by_task[line["task_id"]].append(line)
    return by_task


def test_each_task_is_timed_from_its_claim_to_its_outcome_not_by_its_batch(
    app, agent, llm, session_factory, metrics_port, worker_log
):
    # Given a warm worker (its LLM process started), and one slow task (2 s) submitted with five quick ones,
    # so that they share a batch
    marker = unique("timed")
    warm_up = [{"title": f"{marker} warm-up", "agent_id": str(agent.id), "user_id": "u"}]
    wait_for_final(session_factory, create_agent_tasks(warm_up, app=app))
    llm.add_fault(fault="slow", match=f"{marker} slow", delay_ms=2000)
    titles = [f"{marker} slow", *(f"{marker} quick {i}" for i in range(5))]
    before = scrape(metrics_port)
    task_ids = create_agent_tasks([{"title": t, "agent_id": str(agent.id), "user_id": "u"} for t in titles], app=app)
    rows = wait_for_final(session_factory, task_ids)
    # Then each task's logged duration is its own, close to its row's, and the histogram sums the same
    durations = {task_id: lines[-1]["duration_ms"] for task_id, lines in logged(worker_log, task_ids).items()}
    slow, *quick = task_ids
    assert durations[slow] >= 2000 and all(durations[task_id] < 1000 for task_id in quick)
    for task_id in task_ids:
        assert abs(durations[task_id] - rows[task_id].duration_ms) < 250
    after = scrape(metrics_port)
    total = 'agent_service_task_duration_seconds_sum{task="agent_task"}'
    added = sample(after, total) - sample(before, total, default=0.0)
    assert added < sum(durations.values()) / 1000 + 1.0  # a batch-wide time would add 6 × 2 s


def test_a_retry_is_logged_with_its_real_delay(app, agent, llm, session_factory, worker_log):
    title = unique("retry logged")
    llm.add_fault(fault="429", match=title, times=1, retry_after=2)
    [task_id] = create_agent_tasks([{"title": title, "agent_id": str(agent.id), "user_id": "u"}], app=app)
    wait_for_final(session_factory, [task_id])
    first, second = [request["at"] for request in llm.requests(title)]
    [retrying] = [line for line in logged(worker_log, [task_id])[task_id] if line["status"] == "retrying"]
    assert 2.0 <= retrying["retry_in"] <= second - first + 0.5
    assert retrying["duration_ms"] < 1000
    assert f"next attempt in {retrying['retry_in']:.1f} s" in retrying["message"]


def test_backlog_gauges_and_llm_latency_are_exported(app, agent, session_factory, metrics_port):
    # Given a task that has waited in the queue for an hour
    waiting = uuid.uuid4()
    with session_scope(session_factory) as session:
        an_hour_ago = utcnow() - timedelta(hours=1)
        session.add(
            Task(
                id=waiting,
                title="waiting",
                agent_id=agent.id,
                user_id="u",
                status=TaskStatus.QUEUED,
                queued_at=an_hour_ago,
            )
        )
    try:
        wait_for_final(
            session_factory,
            create_agent_tasks([{"title": unique("latency"), "agent_id": str(agent.id), "user_id": "u"}], app=app),
        )
        metrics = scrape(metrics_port)
    finally:
        with session_scope(session_factory) as session:
            session.execute(delete(Task).where(Task.id == waiting))
    # Then the scrape shows its age, the queues' lengths and the LLM calls' latency
    assert sample(metrics, "agent_service_oldest_queued_task_age_seconds") >= 3600
    assert sample(metrics, 'agent_service_queue_length{queue="agent_tasks"}') >= 0
    assert sample(metrics, 'agent_service_queue_length{queue="system"}') >= 0
    assert sample(metrics, 'agent_service_llm_call_duration_seconds_count{model="gpt-4o-mini"}') >= 1


def test_queue_lengths_count_the_messages_waiting_in_each_queue(idle_app, idle_redis):
    for _ in range(3):
        idle_app.send_task(PROCESS_TASK_NAME, args=[str(uuid.uuid4())], ignore_result=True)
    idle_app.send_task(HEALTH_TASK_NAME, ignore_result=True)
    assert queue_lengths(idle_app) == {"agent_tasks": 3, "system": 1}


def test_the_batching_backlog_counts_the_agent_tasks_waiting_each_time_it_asks(idle_app, idle_redis):
    backlog = Backlog(idle_app, AGENT_QUEUE)  # what the batching asks before handing a batch over
    try:
        assert backlog.waiting() == 0
        for _ in range(2):
            idle_app.send_task(PROCESS_TASK_NAME, args=[str(uuid.uuid4())], ignore_result=True)
        idle_app.send_task(HEALTH_TASK_NAME, ignore_result=True)
        assert backlog.waiting() == 2  # the agent tasks alone, over the connection kept open
    finally:
        backlog.close()


def test_task_outcome_labels_come_from_one_vocabulary(app, metrics_port):
    app.send_task(HEALTH_TASK_NAME).get(timeout=30)
    statuses = set(re.findall(r'agent_service_task_runs_total\{status="(\w+)"', scrape(metrics_port)))
    assert statuses and statuses <= {outcome.value for outcome in Outcome}
