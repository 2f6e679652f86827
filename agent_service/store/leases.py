"""Workers' liveness leases, in the database: renewed by each task-running process while it lives, read by the
claim and the sweeper to know that a running task's owner is lost, and the sweeper's taking back of such tasks.
Plain functions on a caller-owned Session, no commits.

Every time here is the database's own clock (`database_now`), never a host's: a lease is written and judged by
one clock, so a host whose clock runs behind neither loses its tasks early nor keeps them late.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from agent_service.clock import aware
from agent_service.models import Task, TaskAttempt, TaskStatus, WorkerLease


def database_now(session: Session) -> datetime:
    """The database's clock (its transaction time on PostgreSQL), in UTC."""
    return aware(session.execute(select(func.current_timestamp())).scalar_one())


def renew(session: Session, owner: str, *, seconds: float) -> datetime:
    """Hold (or take) `owner`'s lease for `seconds` from now; returns when it expires."""
    now = database_now(session)
    expires = now + timedelta(seconds=seconds)
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    statement = insert(WorkerLease).values(owner=owner, started_at=now, renewed_at=now, expires_at=expires)
    session.execute(
        statement.on_conflict_do_update(
            index_elements=[WorkerLease.owner], set_={"renewed_at": now, "expires_at": expires}
        )
    )
    return expires


def release(session: Session, owner: str) -> None:
    """End `owner`'s lease now (its process is stopping): a task it still held is anyone's at the next sweep."""
    now = database_now(session)
    session.execute(update(WorkerLease).where(WorkerLease.owner == owner).values(expires_at=now, renewed_at=now))


def has_expired(session: Session, owner: str | None) -> bool:
    """Whether `owner` held a lease that has expired. An owner that never held one (a worker of a release
    before leases) is not judged by this: the stale threshold applies to it."""
    if not owner:
        return False
    expires_at = session.scalar(select(WorkerLease.expires_at).where(WorkerLease.owner == owner))
    return expires_at is not None and aware(expires_at) <= database_now(session)


def take_back_tasks_of_lost_owners(session: Session, *, judge: str, limit: int) -> list[uuid.UUID]:
    """Running tasks whose owner's lease has expired go back to `queued` (to be published again), their lost
    attempt kept in their history; returns their ids. The owner, if it wakes, can no longer record them (its
    compare-and-set wants them running under its attempt). Rows locked by a transaction of the lost owner that
    the server has not ended yet are left to a later sweep.

    Nobody is judged while `judge` (the sweeping process) holds an expired lease itself: then the database was
    out of its reach too, or it was paused, and the others had no better chance to renew.
    """
    now = database_now(session)
    if has_expired(session, judge):
        return []
    lost = session.execute(
        select(Task.id, Task.attempts, Task.claimed_by)
        .join(WorkerLease, WorkerLease.owner == Task.claimed_by)
        .where(Task.status == TaskStatus.RUNNING, WorkerLease.expires_at <= now)
        .order_by(Task.claimed_at)
        .limit(limit)
        .with_for_update(of=Task, skip_locked=True)
    ).all()
    taken: list[uuid.UUID] = []
    for task_id, attempt, owner in lost:
        session.execute(
            update(Task)
            .where(Task.id == task_id, Task.status == TaskStatus.RUNNING, Task.attempts == attempt)
            .values(status=TaskStatus.QUEUED, queued_at=now, updated_at=now, claimed_at=None, claimed_by=None)
        )
        error = f"the worker running it ({owner}) was lost: its liveness lease expired"
        session.add(TaskAttempt(task_id=task_id, attempt=attempt, outcome="lost", at=now, error=error))
        taken.append(task_id)
    return taken


def last_loss(session: Session, *, judge: str) -> datetime | None:
    """When the latest lease to expire without being released expired (its owner lost, not stopped); None when
    no lease was lost, or while `judge` (the sweeping process) holds an expired lease itself, as in
    `take_back_tasks_of_lost_owners`.

    The owner renewed every third of its lease while it lived, so it received its last message at least two
    thirds of a lease (20 s by default) before this moment: the margin for its host's clock, by which the broker
    timed the deliveries, running ahead of the database's (`messaging.unacked`)."""
    if has_expired(session, judge):
        return None
    lost = select(func.max(WorkerLease.expires_at)).where(
        WorkerLease.expires_at <= func.current_timestamp(),
        # `release` ends a lease at its last renewal; a lease left to lapse ends a whole lease after it.
        WorkerLease.expires_at > WorkerLease.renewed_at,
    )
    expired = session.scalar(lost)
    return aware(expired) if expired is not None else None


def forget_expired(session: Session, *, older_than: timedelta) -> int:
    """Delete leases expired longer ago than `older_than` (the stale threshold: their tasks, if any, are the
    sweeper's by then anyway); returns how many."""
    cutoff = database_now(session) - older_than
    # A DELETE gives a CursorResult, which has the row count; Session.execute is typed for any statement.
    return cast(CursorResult[Any], session.execute(delete(WorkerLease).where(WorkerLease.expires_at < cutoff))).rowcount
