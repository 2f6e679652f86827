"""Notifications end to end: a real prefork worker (two pool processes, each with its own sender) running
tasks against the bundled LLM server's injected faults, posting to a webhook receiver on loopback. A task that
fails for good arrives as a dead letter naming it and its agent, and nothing of its prompt or of the
provider's error; a model failing every call opens its breaker, and its recovery closes it, each notified once."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from agent_service.database import session_scope
from agent_service.devtools.processes import celery_worker
from agent_service.models import Agent, TaskStatus
from agent_service.notifications.signing import SIGNATURE_HEADER, verify
from agent_service.tasks import create_agent_tasks
from tests.integration.conftest import IDLE_REDIS, LOG_DIR
from tests.support import wait_for_final
from tests.webhook_receiver import WebhookReceiver

pytestmark = pytest.mark.worker
SECRET = "whsec-worker-e2e"
COOLDOWN = 3.0


@pytest.fixture(scope="module")
def receiver() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver().start()
    yield receiver
    receiver.stop()


@pytest.fixture(scope="module")
def worker(settings, receiver) -> Iterator[None]:
    """A prefork worker with 2 pool processes, the breaker on (2 calls, all failed, open it for COOLDOWN),
    reading the idle app's broker, which no other worker reads."""
    redis.Redis.from_url(IDLE_REDIS).flushdb()
    env = {
        **settings.as_env(),
        "REDIS_URL": IDLE_REDIS,
        "WORKER_POOL": "prefork",
        "WORKER_CONCURRENCY": "2",
        "BREAKER_ENABLED": "true",
        "BREAKER_MIN_CALLS": "2",
        "BREAKER_FAILURE_RATIO": "1.0",
        "BREAKER_COOLDOWN_SECONDS": str(COOLDOWN),
        "ALERT_WEBHOOK_URL": receiver.url,
        "ALERT_WEBHOOK_SECRET": SECRET,
        "TOOL_ALLOW_PRIVATE_ADDRESSES": "true",  # the receiver is on loopback
    }
    with celery_worker(env=env, log_path=Path(LOG_DIR) / "notifications.log", name="notifications"):
        yield


def new_agent(session_factory, prompt: str = "Be brief.") -> Agent:
    """An agent with a model of its own, so that its breaker and its notifications are the test's alone."""
    with session_scope(session_factory) as session:
        agent = Agent(
            name=f"notify-{uuid.uuid4().hex[:8]}",
            prompt=prompt,
            model=f"model-{uuid.uuid4().hex[:8]}",
            temperature=0.1,
            max_tokens=50,
        )
        session.add(agent)
    return agent


def submit(idle_app, agent: Agent, title: str, count: int = 1) -> list[str]:
    items = [{"title": f"{title} #{n}", "agent_id": str(agent.id), "user_id": "u1"} for n in range(count)]
    return create_agent_tasks(items, app=idle_app)


def test_a_task_that_fails_for_good_is_notified_as_a_dead_letter(worker, receiver, idle_app, session_factory, llm):
    # Given a model that refuses the task's request (a 400: the task's own fault, failed at once)
    prompt = f"Confidential prompt {uuid.uuid4().hex}"
    agent = new_agent(session_factory, prompt=prompt)
    llm.add_fault(fault="400", match=prompt)
    # When a pool process of the worker runs it
    [task_id] = submit(idle_app, agent, "doomed")
    [task] = wait_for_final(session_factory, [task_id], timeout=60).values()
    assert task.status is TaskStatus.FAILED
    # Then the receiver gets one signed dead letter naming the task and its agent, and neither its prompt nor
    # the provider's message
    receiver.wait_for(lambda: any(e["details"].get("task_id") == task_id for e in receiver.events()))
    [delivery] = [r for r in receiver.received if r.event["details"].get("task_id") == task_id]
    assert verify(delivery.body, delivery.headers[SIGNATURE_HEADER.lower()], secret=SECRET, now=time.time())
    event = delivery.event
    assert (event["event"], event["labels"]) == ("task_dead_lettered", {"agent_id": str(agent.id)})
    assert prompt.encode() not in delivery.body and b"offline mock" not in delivery.body


def test_a_breaker_opening_and_closing_is_notified_once_each(worker, receiver, idle_app, session_factory, llm):
    agent = new_agent(session_factory)
    token = f"outage-{uuid.uuid4().hex[:8]}"

    def breaker_events(kind: str) -> list[dict]:
        return [e for e in receiver.events(kind) if e["labels"].get("model") == agent.model]

    # Given the model failing every call (503)
    outage = llm.add_fault(fault="503", match=token)
    # When tasks meet it, the breaker opens: one notification, critical, naming the provider and the model
    tasks = submit(idle_app, agent, token, 4)
    receiver.wait_for(lambda: breaker_events("breaker_opened") != [], timeout=60)
    # And when the model recovers, the probe after the cool-down closes it: one notification
    llm.remove_fault(outage)
    finals = wait_for_final(session_factory, tasks, timeout=90)
    assert {task.status for task in finals.values()} == {TaskStatus.COMPLETED}
    receiver.wait_for(lambda: breaker_events("breaker_closed") != [], timeout=30)
    [opened], [closed] = breaker_events("breaker_opened"), breaker_events("breaker_closed")
    assert opened["severity"] == "critical" and opened["labels"]["provider"] == llm.base_url.removeprefix("http://")
    assert closed["severity"] == "info"
