"""The api kind with real worker processes, the bundled LLM server scripting the model's turns and the bundled
tool server recording the calls it receives, all over real HTTP: a run of three turns and two tool calls, a
worker SIGKILLed between two steps resuming without repeating one, and approvals (approve, reject, expiry).

The workers read the idle app's broker, which no other worker reads, so these tasks run only where a test
means them to."""

from __future__ import annotations

import json
import signal
import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
import redis
from sqlalchemy import update

from config import Settings
from database import session_scope
from devtools.processes import celery_worker, start_worker, stop_process
from execution.maintenance import fail_expired_approvals
from messaging.publisher import publish_tasks
from models import Agent, StepStatus, StepType, Task, TaskStatus, TaskStep
from store import steps
from store.lifecycle import utcnow
from tasks import approve_task, create_agent_task, reject_task
from tests.integration.conftest import IDLE_REDIS, LOG_DIR
from tests.support import add_agent, wait_for_final, wait_until
from worker import create_celery_app

SECRET = "tool-secret-7f3a"
SLOW_MS = 4000  # a tool call still under way when its worker is killed


@pytest.fixture(scope="module")
def api_settings(settings: Settings) -> Settings:
    """The idle broker; tools may reach loopback (the bundled tool server); the weather tool's secret."""
    return settings.model_copy(
        update={
            "redis_url": IDLE_REDIS,
            "tool_allow_private_addresses": True,
            "tool_secrets": {"WEATHER_TOKEN": SECRET},
            "worker_concurrency": 8,
            "llm_concurrency": 8,
        }
    )


@pytest.fixture(scope="module")
def api_app(api_settings: Settings):
    redis.Redis.from_url(IDLE_REDIS).flushdb()
    app = create_celery_app(api_settings)
    yield app
    app.services.engine.dispose()


@pytest.fixture(scope="module")
def api_worker(api_app, api_settings: Settings) -> Iterator[None]:
    with celery_worker(env=api_settings.as_env(), log_path=LOG_DIR / "api-worker.log", name="api"):
        yield


@pytest.fixture
def tools(tool_url: str, tool_server) -> list[dict]:
    tool_server.reset()
    city = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    item = {"type": "object", "properties": {"item": {"type": "string"}}, "required": ["item"]}
    ms = {"type": "object", "properties": {"ms": {"type": "integer"}}, "required": ["ms"]}
    return [
        {
            "name": "weather",
            "description": "the weather in a city",
            "parameters": city,
            "method": "GET",
            "url": f"{tool_url}/weather",
            "headers": {"Authorization": {"secret": "WEATHER_TOKEN"}},
        },
        {
            "name": "order",
            "description": "place an order",
            "parameters": item,
            "method": "POST",
            "url": f"{tool_url}/orders",
            "idempotent": False,
        },
        {"name": "wait", "description": "takes its time", "parameters": ms, "method": "GET", "url": f"{tool_url}/slow"},
        {
            "name": "pay",
            "description": "pays for an order, once a person agrees",
            "parameters": item,
            "method": "POST",
            "url": f"{tool_url}/orders",
            "idempotent": False,
            "requires_approval": True,
        },
        {
            "name": "hop",
            "description": "follows a redirect",
            "parameters": city,
            "method": "GET",
            "url": f"{tool_url}/redirect?to=http://169.254.169.254/latest/meta-data/",
        },
    ]


@pytest.fixture
def api_agent(session_factory, tools) -> Agent:
    settings = {"allowed_hosts": ["127.0.0.1"], "max_steps": 5}
    return add_agent(session_factory, prefix="api", kind="api", tools=tools, settings=settings)


@pytest.fixture
def submit(api_app, api_agent, llm):
    """Submits an api task whose model follows `replies`, one per turn; returns its id and its unique token."""

    def submit_task(replies: list[dict]) -> tuple[str, str]:
        token = f"api-{uuid.uuid4().hex[:10]}"
        directive = llm.add_script(token, replies)
        item = {"title": f"Trip {token}", "description": directive, "agent_id": str(api_agent.id), "user_id": "u-api"}
        return create_agent_task(item, app=api_app), token

    return submit_task


def calls(*tools: tuple[str, dict]) -> dict:
    return {"tool_calls": [{"name": name, "arguments": arguments} for name, arguments in tools]}


def step_rows(session_factory, task_id: str) -> list[TaskStep]:
    with session_scope(session_factory) as session:
        return steps.step_rows(session, uuid.UUID(task_id))


def task_row(session_factory, task_id: str) -> Task:
    with session_scope(session_factory) as session:
        return session.get(Task, uuid.UUID(task_id))


def turns_asked(llm, token: str) -> list[int]:
    return sorted(request["turn"] for request in llm.requests(token))


@pytest.mark.usefixtures("api_worker")
def test_three_turns_and_two_tool_calls_complete_over_real_http(submit, session_factory, llm, tool_server):
    # Given a model that checks the weather, orders, then answers
    task_id, token = submit(
        [calls(("weather", {"city": "Oslo"})), calls(("order", {"item": "umbrella"})), {"content": "Packed."}]
    )
    # When a worker runs it
    task = wait_for_final(session_factory, [task_id])[task_id]
    # Then it completes with the last turn's text, the model asked once per turn
    assert (task.status, task.result) == (TaskStatus.COMPLETED, "Packed.")
    assert turns_asked(llm, token) == [0, 1, 2]
    # And its five steps are recorded in order, each turn with its usage, summed once into the task's
    rows = step_rows(session_factory, task_id)
    assert [(s.position, s.step_type, s.tool_name) for s in rows] == [
        (0, StepType.MODEL_TURN, None),
        (1, StepType.TOOL_CALL, "weather"),
        (2, StepType.MODEL_TURN, None),
        (3, StepType.TOOL_CALL, "order"),
        (4, StepType.MODEL_TURN, None),
    ]
    turns = [s for s in rows if s.step_type is StepType.MODEL_TURN]
    assert all(s.prompt_tokens and s.completion_tokens for s in turns)
    assert task.prompt_tokens == sum(s.prompt_tokens for s in turns)
    # And the tool server received exactly the two calls, the weather one with the secret, which no row holds
    received = tool_server.calls()
    assert [(c["method"], c["path"]) for c in received] == [("GET", "/weather"), ("POST", "/orders")]
    assert received[0]["headers"]["authorization"] == SECRET
    with session_scope(session_factory) as session:
        agent = session.get(Agent, task.agent_id)
        stored = json.dumps([agent.tools, agent.settings, task.result, task.error], default=str)
    stored += json.dumps([[s.content, s.arguments, s.tool_calls, s.idempotency_key] for s in rows])
    assert SECRET not in stored


@pytest.mark.usefixtures("api_worker")
def test_a_redirect_off_the_allowlist_reaches_the_model_as_a_refusal(submit, session_factory):
    task_id, _ = submit([calls(("hop", {"city": "Oslo"})), {"content": "Could not."}])
    assert wait_for_final(session_factory, [task_id])[task_id].status == TaskStatus.COMPLETED
    hop = step_rows(session_factory, task_id)[1]
    assert (hop.status, hop.content) == (
        StepStatus.FAILED,
        "error: refused: 169.254.169.254 is not in the agent's allowed hosts",
    )


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


def paused(session_factory, task_id: str) -> Task:
    wait_until(
        lambda: task_row(session_factory, task_id).status == TaskStatus.AWAITING_APPROVAL, what="pause", timeout=60
    )
    return task_row(session_factory, task_id)


@pytest.mark.usefixtures("api_worker")
def test_approval_pauses_holding_no_slot_then_the_approved_call_is_made(
    api_app, submit, session_factory, llm, tool_server
):
    # Given a model that pays (the tool needs a reviewer), then answers
    task_id, token = submit([calls(("pay", {"item": "tickets"})), {"content": "Paid."}])
    # Then the task waits for a reviewer: not running, no claim, its attempt given back, nothing paid yet
    task = paused(session_factory, task_id)
    assert (task.claimed_by, task.claimed_at, task.attempts) == (None, None, 0)
    assert tool_server.count(path="/orders") == 0
    # When a reviewer approves
    assert approve_task(task_id, "fine", app=api_app) == ["pay"]
    # Then the call is made once and the task completes, the turn that asked for it not asked again
    task = wait_for_final(session_factory, [task_id])[task_id]
    assert (task.status, task.result) == (TaskStatus.COMPLETED, "Paid.")
    assert tool_server.count(path="/orders") == 1 and turns_asked(llm, token) == [0, 1]
    pay = step_rows(session_factory, task_id)[1]
    assert (pay.status, pay.approval_note) == (StepStatus.SUCCEEDED, "fine")


@pytest.mark.usefixtures("api_worker")
def test_a_rejected_call_is_never_made_and_the_model_carries_on(api_app, submit, session_factory, tool_server):
    task_id, _ = submit([calls(("pay", {"item": "tickets"})), {"content": "Not paid."}])
    paused(session_factory, task_id)
    assert reject_task(task_id, "over budget", app=api_app) == ["pay"]
    task = wait_for_final(session_factory, [task_id])[task_id]
    assert (task.status, task.result) == (TaskStatus.COMPLETED, "Not paid.")
    assert tool_server.count(path="/orders") == 0
    pay = step_rows(session_factory, task_id)[1]
    assert (pay.status, pay.content) == (StepStatus.REJECTED, "rejected by a reviewer: over budget")


@pytest.mark.usefixtures("api_worker")
def test_an_expired_approval_is_failed_by_the_sweeper_with_the_reason(api_app, submit, session_factory, tool_server):
    task_id, _ = submit([calls(("pay", {"item": "tickets"})), {"content": "Paid."}])
    paused(session_factory, task_id)
    # Given the approval's time is up (the step's expiry moved to the past rather than waiting a day)
    with session_scope(session_factory) as session:
        session.execute(
            update(TaskStep)
            .where(TaskStep.task_id == uuid.UUID(task_id), TaskStep.status == StepStatus.AWAITING_APPROVAL)
            .values(approval_expires_at=utcnow() - timedelta(seconds=1))
        )
    # When the sweeper runs, Then the task fails with the reason, and the call is never made
    assert fail_expired_approvals(services=api_app.services) >= 1
    task = task_row(session_factory, task_id)
    assert task.status == TaskStatus.FAILED and task.error.startswith("approval for tool pay expired after")
    assert step_rows(session_factory, task_id)[1].status == StepStatus.EXPIRED
    assert tool_server.count(path="/orders") == 0
