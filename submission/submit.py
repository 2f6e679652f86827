"""Submitting work: validate, store and queue tasks; replay failed ones; cancel. The application's entry
points (`tasks.create_agent_task` wraps the first for the configured app)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from typing import Any

from celery import Celery
from redis import RedisError
from sqlalchemy import select, tuple_
from sqlalchemy.orm import Session

from config import Settings
from database import session_scope
from errors import TaskValidationError, item_error
from execution.pipeline import parse_task_id
from execution.services import Services
from messaging.cancellation import announce_cancelled
from messaging.publisher import enqueue
from models import Agent, Task, TaskStatus
from store import lifecycle
from store.lifecycle import utcnow
from submission.validation import TaskInput, parse_task_input

logger = logging.getLogger(__name__)


def create_agent_tasks(items: Iterable[Any], *, app: Celery, services: Services) -> list[str]:
    """Validate, store (one transaction) and queue many tasks; returns their ids in order. A repeated
    idempotency key returns the first task's id without queueing again.

    Raises: TaskValidationError naming the first bad item (nothing written), BrokerUnavailableError (rows
    kept as pending; the sweeper queues them).
    """
    items = list(items)
    inputs = [
        _parse_item(item, index=index, count=len(items), settings=services.settings) for index, item in enumerate(items)
    ]
    with session_scope(services.session_factory) as session:
        rows = _insert_tasks(session, inputs)
    enqueue(app, services.session_factory, [task.id for task, created in rows if created])
    return [str(task.id) for task, _ in rows]


def replay_failed_tasks(task_ids: list[str] | None, *, app: Celery, services: Services) -> list[str]:
    """Queue failed tasks again with a fresh attempt budget (None: all of them); returns the ids replayed.
    Raises: TaskValidationError for an id that is not a UUID."""
    wanted = None if task_ids is None else [parse_task_id(task_id) for task_id in task_ids]
    with session_scope(services.session_factory) as session:
        replayed = lifecycle.reset_for_replay(session, wanted, now=utcnow())
    enqueue(app, services.session_factory, replayed)
    return [str(task_id) for task_id in replayed]


def cancel_task(task_id: str, *, services: Services) -> str:
    """Cancel a queued or running task; returns the status it ends with. A worker running its LLM call is
    told (through Redis, when there is one) and aborts the call.
    Raises: TaskValidationError (not a UUID), TaskNotFoundError."""
    parsed = parse_task_id(task_id)
    with session_scope(services.session_factory) as session:
        status = lifecycle.cancel_task(session, parsed, now=utcnow())
    if status is TaskStatus.CANCELLED and services.settings.redis_url:
        try:
            announce_cancelled(services.redis, parsed)
        except RedisError as exc:  # the row is cancelled: the call's reply will be discarded, just paid for
            logger.warning("task %s cancelled, but its worker could not be told to abort its call: %s", parsed, exc)
    return status.value


def _parse_item(item: Any, *, index: int, count: int, settings: Settings) -> TaskInput:
    try:
        return parse_task_input(item, settings=settings)
    except TaskValidationError as exc:
        raise item_error(str(exc), index=index, count=count) from None


def _insert_tasks(session: Session, items: list[TaskInput]) -> list[tuple[Task, bool]]:
    """Insert pending tasks, or return the earlier task that has the same user and idempotency key.

    One query for the agents and one for the keys, whatever the number of items. Returns (task, created)
    per item, in order. Raises: TaskValidationError naming the first item whose agent is unknown or inactive.
    """
    agents = {
        agent.id: agent for agent in session.scalars(select(Agent).where(Agent.id.in_({i.agent_id for i in items})))
    }
    known = _tasks_by_idempotency_key(session, items)
    rows = []
    for index, item in enumerate(items):
        key = (item.user_id, item.idempotency_key)
        if item.idempotency_key is not None and key in known:
            rows.append((known[key], False))
            continue
        problem = _agent_problem(agents.get(item.agent_id), item)
        if problem:
            raise item_error(f"invalid task input: agent_id: {problem}", index=index, count=len(items))
        task = Task(id=uuid.uuid4(), **item.model_dump(), status=TaskStatus.PENDING, attempts=0)
        session.add(task)
        if item.idempotency_key is not None:
            known[key] = task
        rows.append((task, True))
    return rows


def _tasks_by_idempotency_key(session: Session, items: list[TaskInput]) -> dict[tuple[str, str | None], Task]:
    keys = {(item.user_id, item.idempotency_key) for item in items if item.idempotency_key is not None}
    if not keys:
        return {}
    query = select(Task).where(tuple_(Task.user_id, Task.idempotency_key).in_(list(keys)))
    return {(task.user_id, task.idempotency_key): task for task in session.scalars(query)}


def _agent_problem(agent: Agent | None, item: TaskInput) -> str | None:
    if agent is None:
        return f"no agent {item.agent_id}"
    if not agent.is_active:
        return f"agent {agent.name!r} is inactive"
    return None
