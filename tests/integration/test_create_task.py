"""create_agent_task: valid input is stored then queued; bad input gets a clear error and leaves
no row in PostgreSQL and no message in Redis."""

from __future__ import annotations

import json
import sys
import uuid

import pytest
from sqlalchemy import func, select

from agent_service.database import session_scope
from agent_service.errors import BrokerUnavailableError, TaskValidationError
from agent_service.models import Agent, Task, TaskStatus
from agent_service.tasks import create_agent_task, create_agent_tasks
from agent_service.worker import create_celery_app
from tests.support import run_in_repo


def task_count(session_factory) -> int:
    with session_scope(session_factory) as session:
        return session.scalar(select(func.count()).select_from(Task))


def queued_messages(client) -> list[dict]:
    return [json.loads(raw) for raw in client.lrange("agent_tasks", 0, -1)]


def valid(agent: Agent, **changes) -> dict:
    return {
        "title": "Draft a release note",
        "description": "for 2.0",
        "agent_id": str(agent.id),
        "user_id": "user-1",
        **changes,
    }


def test_valid_task_is_stored_queued_and_published_once(idle_app, idle_redis, agent, session_factory):
    task_id = create_agent_task(valid(agent), app=idle_app)
    with session_scope(session_factory) as session:
        row = session.get(Task, uuid.UUID(task_id))
    assert row.status == TaskStatus.QUEUED and row.queued_at is not None and row.attempts == 0
    messages = queued_messages(idle_redis)
    assert [(m["headers"]["task"], m["headers"]["argsrepr"]) for m in messages] == [
        ("worker.process_agent_task", repr([task_id]))
    ]
    assert messages[0]["content-type"] == "application/json"


def test_the_designs_root_modules_submit_and_queue_from_the_checkout(idle_app, idle_redis, agent, settings):
    # Given the design's own names, imported from the checkout's root as its README shows them
    script = (
        "import json, sys\n"
        "from tasks import create_agent_task\n"
        "from worker import process_agent_task\n"
        "task_id = create_agent_task(json.loads(sys.argv[1]))\n"
        "process_agent_task.delay(task_id)\n"
        "print(task_id)\n"
    )
    env = settings.model_copy(update={"redis_url": idle_app.conf.broker_url}).as_env()
    # When a script submits a task with them, then hands its id to process_agent_task.delay
    ran = run_in_repo([sys.executable, "-c", script, json.dumps(valid(agent))], env)
    assert ran.returncode == 0, ran.stderr
    task_id = ran.stdout.strip()
    # Then the task is stored and its message published twice under the design's task name
    messages = queued_messages(idle_redis)
    assert sorted((m["headers"]["task"], m["headers"]["argsrepr"]) for m in messages) == [
        ("worker.process_agent_task", repr((task_id,))),  # process_agent_task.delay(task_id)
        ("worker.process_agent_task", repr([task_id])),  # create_agent_task
    ]


BAD_INPUTS = {
    "missing title": lambda a: {k: v for k, v in valid(a).items() if k != "title"},
    "blank title": lambda a: valid(a, title="   "),
    "oversize title": lambda a: valid(a, title="x" * 501),
    "oversize description": lambda a: valid(a, description="x" * 20_001),
    "NUL byte": lambda a: valid(a, description="bad\x00byte"),
    "lone surrogate": lambda a: valid(a, title="bad \ud800 unicode"),
    "title of the wrong type": lambda a: valid(a, title=42),
    "agent id not a uuid": lambda a: valid(a, agent_id="agent-7"),
    "unknown agent": lambda a: valid(a, agent_id=str(uuid.uuid4())),
    "empty user": lambda a: valid(a, user_id=""),
    "unexpected field": lambda a: valid(a, priority="high"),
    "not a mapping": lambda a: ["Draft a release note"],
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_rejected_with_nothing_written_or_queued(case, idle_app, idle_redis, agent, session_factory):
    rows_before = task_count(session_factory)
    with pytest.raises(TaskValidationError, match=r"invalid task input|must be a mapping"):
        create_agent_task(BAD_INPUTS[case](agent), app=idle_app)
    assert task_count(session_factory) == rows_before
    assert queued_messages(idle_redis) == []


def test_inactive_agent_is_rejected_by_name(idle_app, idle_redis, agent, session_factory):
    with session_scope(session_factory) as session:
        session.get(Agent, agent.id).is_active = False
    with pytest.raises(TaskValidationError, match=f"agent '{agent.name}' is inactive"):
        create_agent_task(valid(agent), app=idle_app)
    assert queued_messages(idle_redis) == []


def test_error_names_every_bad_field(idle_app, agent):
    with pytest.raises(TaskValidationError) as raised:
        create_agent_task(valid(agent, title="", user_id=""), app=idle_app)
    assert "title:" in str(raised.value) and "user_id:" in str(raised.value)


def test_same_idempotency_key_returns_the_first_task_and_queues_once(idle_app, idle_redis, agent):
    first = create_agent_task(valid(agent, idempotency_key="order-17"), app=idle_app)
    second = create_agent_task(valid(agent, idempotency_key="order-17", title="changed"), app=idle_app)
    assert first == second
    assert len(queued_messages(idle_redis)) == 1


def test_one_bad_item_in_a_batch_writes_nothing(idle_app, idle_redis, agent, session_factory):
    rows_before = task_count(session_factory)
    with pytest.raises(TaskValidationError, match="item 2: "):
        create_agent_tasks([valid(agent), valid(agent), valid(agent, title="")], app=idle_app)
    assert task_count(session_factory) == rows_before and queued_messages(idle_redis) == []


def test_broker_down_keeps_the_row_pending_and_says_so(settings, agent, session_factory):
    unreachable = settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})
    app = create_celery_app(unreachable)
    app.conf.broker_connection_timeout = 1
    app.conf.task_publish_retry_policy = {"max_retries": 1, "interval_start": 0, "interval_step": 0.1}
    with pytest.raises(BrokerUnavailableError, match="saved as pending but not queued"):
        create_agent_task(valid(agent, title="broker down"), app=app)
    with session_scope(session_factory) as session:
        row = session.scalar(select(Task).where(Task.title == "broker down"))
    assert row.status == TaskStatus.PENDING


def test_a_bad_first_item_in_a_batch_is_named_by_its_number(idle_app, idle_redis, agent):
    with pytest.raises(TaskValidationError, match=r"^item 0: invalid task input: agent_id: no agent"):
        create_agent_tasks([valid(agent, agent_id=str(uuid.uuid4())), valid(agent)], app=idle_app)
    with pytest.raises(TaskValidationError, match=r"^item 0: invalid task input: title"):
        create_agent_tasks([valid(agent, title=""), valid(agent)], app=idle_app)
    assert queued_messages(idle_redis) == []
