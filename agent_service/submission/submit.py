"""Submitting work: validate, store and queue tasks; replay failed ones; cancel. The application's entry
points (`tasks.create_agent_task` wraps the first for the configured app)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from typing import Any

from celery import Celery
from redis import RedisError
from sqlalchemy import Row, select, tuple_
from sqlalchemy.orm import Session

from agent_service.clock import utcnow
from agent_service.config import Settings
from agent_service.database import session_scope
from agent_service.errors import BrokerUnavailableError, PermanentError, TaskValidationError, item_error
from agent_service.ids import parse_task_id
from agent_service.kinds import KINDS
from agent_service.kinds.base import TaskWork
from agent_service.messaging.cancellation import announce_cancelled
from agent_service.messaging.dispatch import dispatch_waiting
from agent_service.messaging.groups import send_callbacks_quietly
from agent_service.messaging.publisher import enqueue
from agent_service.models import Task, TaskStatus
from agent_service.services import Services
from agent_service.store import tasks as store_tasks
from agent_service.store.agents import agent_spec, agents_by_id
from agent_service.store.groups import join_group, note_tasks_ended
from agent_service.submission.groups import parse_group
from agent_service.submission.validation import TaskInput, parse_task_input
from agent_service.tracing import NO_TRACES, TaskTraces

logger = logging.getLogger(__name__)


def create_agent_tasks(
    items: Iterable[Any],
    *,
    app: Celery,
    services: Services,
    group: str | None = None,
    on_complete: str | None = None,
) -> list[str]:
    """Validate, store (one transaction) and queue many tasks; returns their ids in order. A repeated
    idempotency key returns the first task's id without queueing again (and without moving it to `group`).

    With `group`, the new tasks join that group of their user's, created with them (with the Celery task
    `on_complete` to send when all have ended), or an existing one that has not ended yet.

    With fair-share dispatch the rows start waiting and one dispatch round publishes what the broker has room
    for, in fair order; the workers' dispatchers publish the rest.

    Raises: TaskValidationError naming the first bad item or the group's problem (another user's, ended,
    another on_complete; nothing written), BrokerUnavailableError (rows kept as pending, which the sweeper
    queues, or as waiting, which the dispatchers publish).
    """
    with services.tracing.submission("create_agent_task") as traces:
        items = list(items)
        inputs = [
            _parse_item(item, index=index, count=len(items), settings=services.settings)
            for index, item in enumerate(items)
        ]
        wanted = parse_group(group, on_complete, tasks=inputs)
        with session_scope(services.session_factory) as session:
            if wanted:
                join_group(session, wanted.group, user_id=inputs[0].user_id, callback=wanted.on_complete)
            rows = _insert_tasks(
                session, inputs, status=first_status(services.settings), group_id=wanted.group if wanted else None
            )
        created = [task_id for task_id, created in rows if created]
        traces.open(created)
        queue(app, services, created, traces=traces)
    return [str(task_id) for task_id, _ in rows]


def replay_failed_tasks(task_ids: list[str] | None, *, app: Celery, services: Services) -> list[str]:
    """Queue failed tasks again with a fresh attempt budget (None: all of them); returns the ids replayed.
    Raises: TaskValidationError for an id that is not a UUID."""
    wanted = None if task_ids is None else [parse_task_id(task_id) for task_id in task_ids]
    with services.tracing.submission("replay_failed_tasks") as traces:
        with session_scope(services.session_factory) as session:
            replayed = store_tasks.reset_for_replay(
                session, wanted, now=utcnow(), status=first_status(services.settings)
            )
        traces.open(replayed)
        queue(app, services, replayed, traces=traces)
    return [str(task_id) for task_id in replayed]


def cancel_task(task_id: str, *, services: Services, app: Celery | None = None) -> str:
    """Cancel a queued or running task; returns the status it ends with. A worker running its LLM call is
    told (through Redis, when there is one) and aborts the call. When this ends the task's group, its
    callback is sent on `app` (without one, by the sweeper).
    Raises: TaskValidationError (not a UUID), TaskNotFoundError."""
    parsed = parse_task_id(task_id)
    with session_scope(services.session_factory) as session:
        status = store_tasks.cancel_task(session, parsed, now=utcnow())
        ended = note_tasks_ended(session, [parsed], now=utcnow()) if status is TaskStatus.CANCELLED else []
    if ended and app is not None:
        send_callbacks_quietly(app, services.session_factory, services.settings, ended)
    if status is TaskStatus.CANCELLED and services.settings.redis_url:
        try:
            announce_cancelled(services.redis, parsed)
        except RedisError as exc:  # the row is cancelled: the call's reply will be discarded, just paid for
            logger.warning("task %s cancelled, but its worker could not be told to abort its call: %s", parsed, exc)
    return status.value


def first_status(settings: Settings) -> TaskStatus:
    """Waiting for the dispatcher with fair-share dispatch; otherwise pending until published here."""
    return TaskStatus.WAITING if settings.fair_dispatch else TaskStatus.PENDING


def queue(app: Celery, services: Services, task_ids: list[uuid.UUID], *, traces: TaskTraces = NO_TRACES) -> None:
    """Publish the tasks just stored: directly (each message in its task's trace in `traces`), or (fair-share
    dispatch) by one dispatch round, which publishes them at once when the broker has room and leaves them waiting
    behind other users' backlogs otherwise (their traces end at the submission).
    Raises: BrokerUnavailableError."""
    if not task_ids:
        return
    if not services.settings.fair_dispatch:
        enqueue(app, services.session_factory, task_ids, traces=traces)
        return
    try:
        dispatch_waiting(app, services.session_factory, services.settings, max_rounds=1)
    except BrokerUnavailableError as exc:
        raise BrokerUnavailableError(
            f"{len(task_ids)} task(s) saved, waiting for the broker (unreachable: {exc.__cause__}); "
            "the workers' dispatchers publish them once it answers"
        ) from exc


def _parse_item(item: Any, *, index: int, count: int, settings: Settings) -> TaskInput:
    try:
        return parse_task_input(item, settings=settings)
    except TaskValidationError as exc:
        raise item_error(str(exc), index=index, count=count) from None


def _insert_tasks(
    session: Session, items: list[TaskInput], *, status: TaskStatus, group_id: str | None = None
) -> list[tuple[uuid.UUID, bool]]:
    """Insert tasks with `status`, or return the earlier task that has the same user and idempotency key.

    One query for the agents, one for the keys and one insert, whatever the number of items. Returns (task id,
    created) per item, in order. Raises: TaskValidationError naming the first item whose agent is unknown or
    inactive.
    """
    agents = agents_by_id(session, list({item.agent_id for item in items}))
    known = _tasks_by_idempotency_key(session, items)
    results, rows = [], []
    for index, item in enumerate(items):
        key = (item.user_id, item.idempotency_key)
        if item.idempotency_key is not None and key in known:
            results.append((known[key], False))
            continue
        problem = _agent_problem(agents.get(item.agent_id), item)
        if problem:
            raise item_error(f"invalid task input: {problem}", index=index, count=len(items))
        task_id = uuid.uuid4()
        rows.append(item.model_dump() | {"id": task_id, "status": status, "attempts": 0, "group_id": group_id})
        if item.idempotency_key is not None:
            known[key] = task_id
        results.append((task_id, True))
    store_tasks.insert_tasks(session, rows)
    return results


def _tasks_by_idempotency_key(session: Session, items: list[TaskInput]) -> dict[tuple[str, str | None], uuid.UUID]:
    keys = {(item.user_id, item.idempotency_key) for item in items if item.idempotency_key is not None}
    if not keys:
        return {}
    query = select(Task.user_id, Task.idempotency_key, Task.id).where(
        tuple_(Task.user_id, Task.idempotency_key).in_(list(keys))
    )
    return {(user_id, key): task_id for user_id, key, task_id in session.execute(query)}


def _agent_problem(agent: Row[Any] | None, item: TaskInput) -> str | None:
    """Why `item` cannot run on `agent`, starting with the field at fault; None when it can."""
    if agent is None:
        return f"agent_id: no agent {item.agent_id}"
    if not agent.is_active:
        return f"agent_id: agent {agent.name!r} is inactive"
    spec, _ = agent_spec(agent)
    if spec is None:  # settings no run can use: the run reports them, as for the tasks already queued
        return None
    kind = KINDS.get(item.kind or spec.kind)
    if kind is None:  # a kind named but not built yet: its run says so
        return None
    try:
        kind.check_task(TaskWork(spec, item.title, item.description or "", item.payload))
    except PermanentError as exc:
        return str(exc)
    return None
