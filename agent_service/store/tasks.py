"""Tasks outside a worker's claim, in the database: inserted, marked queued once published, their status, the
oldest waiting one, the dead letters (failed, and those whose message the broker dead-lettered), replay, cancel
and the sweeper's re-queue. Plain functions on a caller-owned Session, no commits; a worker's claim and its
outcomes are `store.lifecycle`.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, and_, bindparam, func, insert, or_, select, update
from sqlalchemy.orm import Session, selectinload

from agent_service.clock import aware
from agent_service.config import Settings
from agent_service.errors import TaskNotFoundError
from agent_service.models import Task, TaskStatus, table_of
from agent_service.store.lifecycle import CLAIMABLE

# Statements a submission runs, built once and run as Core statements: the ORM's unit of work and its
# synchronisation of an UPDATE with the session cost more CPU than the statements themselves, in the
# application's thread, for every task submitted.
_TASKS = table_of(Task)
_INSERT = insert(_TASKS)
_MARK_QUEUED = (
    update(_TASKS)
    .where(
        _TASKS.c.id.in_(bindparam("p_ids", expanding=True)),
        _TASKS.c.status.in_((TaskStatus.PENDING, TaskStatus.WAITING)),
    )
    .values(status=TaskStatus.QUEUED, queued_at=bindparam("p_now"), updated_at=bindparam("p_now"))
)


def insert_tasks(session: Session, rows: list[dict[str, Any]]) -> None:
    """Insert task rows, each a dict of `tasks` columns (its `id` included); columns left out take their
    defaults."""
    if rows:
        session.connection().execute(_INSERT, rows)


def mark_queued(session: Session, task_ids: list[uuid.UUID], *, now: datetime) -> int:
    """pending (or waiting) -> queued for tasks whose message was published; a run that already began is left
    alone."""
    # An UPDATE gives a CursorResult, which has the row count; Connection.execute is typed for any statement.
    result = session.connection().execute(_MARK_QUEUED, {"p_ids": task_ids, "p_now": now})
    return cast(CursorResult[Any], result).rowcount


def task_status(session: Session, task_id: uuid.UUID) -> TaskStatus:
    """The task's status now. Raises: TaskNotFoundError."""
    status = session.scalar(select(Task.status).where(Task.id == task_id))
    if status is None:
        raise TaskNotFoundError(f"no task {task_id}")
    return status


def list_tasks(
    session: Session,
    *,
    user_id: str,
    limit: int,
    status: TaskStatus | None = None,
    group_id: str | None = None,
    before: tuple[datetime, uuid.UUID] | None = None,
) -> list[Task]:
    """A user's tasks, newest first (by creation, then id), with their agents loaded: those created before
    `before` (a (created_at, id) pair, the last one of the previous page), `limit` at most."""
    query = select(Task).where(Task.user_id == user_id).options(selectinload(Task.agent))
    if status is not None:
        query = query.where(Task.status == status)
    if group_id is not None:
        query = query.where(Task.group_id == group_id)
    if before is not None:
        created, task_id = before
        query = query.where(or_(Task.created_at < created, and_(Task.created_at == created, Task.id < task_id)))
    return list(session.scalars(query.order_by(Task.created_at.desc(), Task.id.desc()).limit(limit)))


def oldest_waiting_since(session: Session) -> datetime | None:
    """When the task that has waited longest (waiting, pending or queued) entered the queue; None when none waits."""
    entered = func.min(func.coalesce(Task.queued_at, Task.created_at))
    oldest = session.scalar(select(entered).where(Task.status.in_(CLAIMABLE)))
    return aware(oldest) if oldest is not None else None


def count_failed(session: Session) -> int:
    """How many tasks are dead letters (failed)."""
    return session.scalar(select(func.count()).select_from(Task).where(Task.status == TaskStatus.FAILED)) or 0


def failed_tasks(session: Session, *, limit: int) -> list[Task]:
    """The dead letters: failed tasks, newest first, with their attempt history loaded."""
    query = (
        select(Task)
        .where(Task.status == TaskStatus.FAILED)
        .order_by(Task.finished_at.desc())
        .limit(limit)
        .options(selectinload(Task.attempt_history))
    )
    return list(session.scalars(query))


def reset_for_replay(
    session: Session, task_ids: list[uuid.UUID] | None, *, now: datetime, status: TaskStatus = TaskStatus.PENDING
) -> list[uuid.UUID]:
    """failed -> `status` (pending, or waiting for the dispatcher) with a fresh attempt budget (None: every
    failed task); history is kept.

    Returns the ids that were reset; ids of tasks that are not failed are left alone.
    """
    condition = Task.status == TaskStatus.FAILED
    if task_ids is not None:
        condition = and_(condition, Task.id.in_(task_ids))
    return list(
        session.scalars(
            update(Task)
            .where(condition)
            .values(
                status=status,
                attempts=0,
                replays=Task.replays + 1,
                error=None,
                result=None,
                started_at=None,
                finished_at=None,
                claimed_at=None,
                claimed_by=None,
                duration_ms=None,
                updated_at=now,
            )
            .returning(Task.id)
        )
    )


def tasks_to_requeue(session: Session, *, settings: Settings, now: datetime, limit: int) -> list[uuid.UUID]:
    """Rows that may have no live message: pending too long, or queued/running past the stale threshold;
    without fair-share dispatch, waiting ones too (left by a worker that dispatched before the switch).

    Their `updated_at` is bumped so the next sweep leaves them alone unless they stay stuck.
    """
    stale_before = now - timedelta(seconds=settings.stale_task_after_seconds)
    unpublished = (TaskStatus.PENDING,) if settings.fair_dispatch else (TaskStatus.PENDING, TaskStatus.WAITING)
    stuck = or_(
        and_(
            Task.status.in_(unpublished),
            Task.updated_at < now - timedelta(seconds=settings.requeue_pending_after_seconds),
        ),
        and_(Task.status == TaskStatus.QUEUED, Task.updated_at < stale_before),
        and_(Task.status == TaskStatus.RUNNING, Task.claimed_at < stale_before, Task.updated_at < stale_before),
    )
    ids = list(session.scalars(select(Task.id).where(stuck).order_by(Task.updated_at).limit(limit)))
    if ids:
        session.execute(update(Task).where(Task.id.in_(ids)).values(updated_at=now))
    return ids


def fail_dead_lettered(session: Session, task_ids: list[uuid.UUID], *, error: str, now: datetime) -> list[uuid.UUID]:
    """Fail the unfinished ones of these tasks, whose message the broker dead-lettered, with `error`; returns the
    ids failed (ended: a group's bookkeeping may count them)."""
    unfinished = (*CLAIMABLE, TaskStatus.RUNNING)
    return list(
        session.scalars(
            update(Task)
            .where(Task.id.in_(task_ids), Task.status.in_(unfinished))
            .values(status=TaskStatus.FAILED, error=error, finished_at=now, updated_at=now)
            .returning(Task.id)
        )
    )


def cancel_task(session: Session, task_id: uuid.UUID, *, now: datetime) -> TaskStatus:
    """Cancel a task that has not finished; a running attempt then cannot complete it.

    Returns the status the task ends with. Raises: TaskNotFoundError.
    """
    session.execute(
        update(Task)
        .where(Task.id == task_id, Task.status.in_((*CLAIMABLE, TaskStatus.RUNNING, TaskStatus.AWAITING_APPROVAL)))
        .values(status=TaskStatus.CANCELLED, finished_at=now, updated_at=now, error="cancelled")
    )
    task = session.get(Task, task_id, populate_existing=True)
    if task is None:
        raise TaskNotFoundError(f"no task {task_id}")
    return task.status
