"""Task groups in the database: joining one at submission, ending it exactly once, its progress, and the
outbox of its completion callback. Plain functions on a caller-owned Session, no commits.

A group ends in the transaction that ends its last task: that transaction locks the group's row and counts
the group's unfinished tasks. Under READ COMMITTED the count, taken after the lock wait, sees every other
ending transaction that held the lock before it, so exactly one of them finds none left (docs/decisions.md,
"Groups end exactly once").
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from agent_service.errors import TaskValidationError
from agent_service.models import FINAL_STATUSES, Task, TaskGroup, TaskStatus

# A callback's outcomes list every task up to this many; a bigger group's callback gets its counts instead.
MAX_CALLBACK_OUTCOMES = 1000
# What a callback carries of each task's result and error, in characters; the rows keep them whole.
CALLBACK_TEXT_CHARS = 500


@dataclass(frozen=True)
class GroupProgress:
    """Where a group's tasks are: counts by status (every status present, zero or more), the tokens and cost
    summed over them (cost None while nothing was priced; `unpriced_tasks` had a call of unknown price), when
    it ended, its callback and when that was sent."""

    group_id: str
    user_id: str
    counts: dict[TaskStatus, int]
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float | None
    unpriced_tasks: int
    created_at: datetime
    ended_at: datetime | None
    callback: str | None
    callback_sent_at: datetime | None
    tasks: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "tasks", sum(self.counts.values()))

    @property
    def unfinished(self) -> int:
        return sum(count for status, count in self.counts.items() if status not in FINAL_STATUSES)


def join_group(session: Session, group_id: str, *, user_id: str, callback: str | None) -> None:
    """Create group `group_id` for `user_id`, or lock the existing one, so that tasks may be added to it in
    this transaction. The lock keeps the group from ending (or the end from being missed) while they are.

    Raises: TaskValidationError when the group is another user's, has ended, or names another callback.
    """
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    session.execute(
        insert(TaskGroup)
        .values(id=group_id, user_id=user_id, callback=callback)
        .on_conflict_do_nothing(index_elements=[TaskGroup.id])
    )
    group = session.scalars(
        select(TaskGroup).where(TaskGroup.id == group_id).with_for_update().execution_options(populate_existing=True)
    ).one()
    if group.user_id != user_id:
        raise TaskValidationError(f"invalid task input: group: {group_id!r} belongs to another user")
    if group.ended_at is not None:
        raise TaskValidationError(
            f"invalid task input: group: {group_id!r} ended at {group.ended_at.isoformat()}; "
            "it takes no more tasks (submit them under a new group)"
        )
    if callback is not None and group.callback != callback:
        raise TaskValidationError(
            f"invalid task input: on_complete: group {group_id!r} already has on_complete={group.callback!r}; "
            "it cannot change"
        )


def note_tasks_ended(session: Session, task_ids: Collection[uuid.UUID], *, now: datetime) -> list[str]:
    """Call in the transaction that gave these tasks their final status (completed, failed, cancelled),
    after every task update in it: ends each of their groups that has no unfinished task left. Returns the
    ids of the groups that ended here, each ended exactly once across all transactions.

    Costs nothing for no ids: pass only the tasks known to belong to a group.
    """
    if not task_ids:
        return []
    group_ids = {
        group_id
        for group_id in session.scalars(select(Task.group_id).where(Task.id.in_(list(task_ids))))
        if group_id is not None
    }
    # Locked in one order, so two transactions ending tasks of the same groups never wait on each other in a cycle.
    return [group_id for group_id in sorted(group_ids) if _end_if_done(session, group_id, now=now)]


def _end_if_done(session: Session, group_id: str, *, now: datetime) -> bool:
    locked = session.scalar(
        select(TaskGroup.id).where(TaskGroup.id == group_id, TaskGroup.ended_at.is_(None)).with_for_update()
    )
    if locked is None:  # ended already (a replayed task ended again): it ends once
        return False
    # A new statement after the lock wait: it sees what the transactions that held the lock committed.
    unfinished = session.scalar(
        select(func.count()).where(Task.group_id == group_id, Task.status.not_in(list(FINAL_STATUSES)))
    )
    if unfinished:
        return False
    session.execute(update(TaskGroup).where(TaskGroup.id == group_id).values(ended_at=now))
    return True


def group_progress(session: Session, group_id: str) -> GroupProgress | None:
    """The group's progress, or None when there is no such group. Two queries, whatever its size."""
    group = session.get(TaskGroup, group_id, populate_existing=True)
    if group is None:
        return None
    rows: Sequence[Any] = session.execute(  # (status, tasks, prompt, completion, cost, unpriced tasks)
        select(
            Task.status,
            func.count(),
            func.coalesce(func.sum(Task.prompt_tokens), 0),
            func.coalesce(func.sum(Task.completion_tokens), 0),
            func.sum(Task.cost_usd),
            func.count().filter(Task.unpriced_calls > 0),
        )
        .where(Task.group_id == group_id)
        .group_by(Task.status)
    ).all()
    counts = dict.fromkeys(TaskStatus, 0) | {row[0]: row[1] for row in rows}
    costs = [row[4] for row in rows if row[4] is not None]
    return GroupProgress(
        group_id=group.id,
        user_id=group.user_id,
        counts=counts,
        prompt_tokens=sum(row[2] for row in rows),
        completion_tokens=sum(row[3] for row in rows),
        cost_usd=float(sum(costs)) if costs else None,
        unpriced_tasks=sum(row[5] for row in rows),
        created_at=group.created_at,
        ended_at=group.ended_at,
        callback=group.callback,
        callback_sent_at=group.callback_sent_at,
    )


def take_unsent_callback(session: Session, group_id: str) -> str | None:
    """Lock the group's row for the length of this transaction if it ended and its callback is still to be
    sent, and return the callback's name; None otherwise, or when another transaction is sending it now
    (SKIP LOCKED: two senders never both publish)."""
    return session.scalar(
        select(TaskGroup.callback)
        .where(
            TaskGroup.id == group_id,
            TaskGroup.callback.is_not(None),
            TaskGroup.ended_at.is_not(None),
            TaskGroup.callback_sent_at.is_(None),
        )
        .with_for_update(skip_locked=True)
    )


def mark_callback_sent(session: Session, group_id: str, *, now: datetime) -> None:
    session.execute(update(TaskGroup).where(TaskGroup.id == group_id).values(callback_sent_at=now))


def unsent_callbacks(session: Session, *, ended_before: datetime, limit: int) -> list[str]:
    """Groups that ended before `ended_before` with a callback not yet sent (their sender was lost), oldest
    first."""
    return list(
        session.scalars(
            select(TaskGroup.id)
            .where(
                TaskGroup.callback.is_not(None),
                TaskGroup.ended_at < ended_before,
                TaskGroup.callback_sent_at.is_(None),
            )
            .order_by(TaskGroup.ended_at)
            .limit(limit)
        )
    )


def callback_outcomes(session: Session, group_id: str) -> list[dict[str, Any]] | dict[str, Any]:
    """What a group's callback receives as `outcomes`: per task (oldest first), {task_id, status,
    result, error} with the texts cut to CALLBACK_TEXT_CHARS; for a group of more than MAX_CALLBACK_OUTCOMES
    tasks, {"tasks": N, "counts": {status: n}} instead (read the rows, or `group_progress`, for the rest)."""
    total = session.scalar(select(func.count()).where(Task.group_id == group_id)) or 0
    if total > MAX_CALLBACK_OUTCOMES:
        counts = session.execute(
            select(Task.status, func.count()).where(Task.group_id == group_id).group_by(Task.status)
        )
        return {"tasks": total, "counts": {status.value: count for status, count in counts}}
    rows = session.execute(
        select(Task.id, Task.status, Task.result, Task.error)
        .where(Task.group_id == group_id)
        .order_by(Task.created_at, Task.id)
    )
    return [
        {
            "task_id": str(task_id),
            "status": status.value,
            "result": result[:CALLBACK_TEXT_CHARS] if result is not None else None,
            "error": error[:CALLBACK_TEXT_CHARS] if error is not None else None,
        }
        for task_id, status, result, error in rows
    ]
