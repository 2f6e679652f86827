"""Workers' liveness leases, in the database: renewed by each task-running process while it lives, read by the
claim and the sweeper to know that a running task's owner is lost. Plain functions on a caller-owned Session, no
commits.

Every time here is the database's own clock (`database_now`), never a host's: a lease is written and judged by
one clock, so a host whose clock runs behind neither loses its tasks early nor keeps them late.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, delete, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from agent_service.clock import aware
from agent_service.models import Task, TaskStatus, WorkerLease


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


def tasks_of_lost_owners(session: Session, *, judge: str, seconds: float, limit: int) -> list[uuid.UUID]:
    """Running tasks whose owner's lease has expired, to be published again (their next claim takes them over),
    unless `judge` (the sweeping process) holds an expired lease itself: then the database was out of its
    reach too, or it was paused, and the others had no better chance to renew; nobody is judged this time.

    A task is returned once its owner's lease expired, then again only if it stays running another `seconds`
    (its message lost): its `updated_at` is bumped.
    """
    now = database_now(session)
    if has_expired(session, judge):
        return []
    stuck = (
        select(Task.id)
        .join(WorkerLease, WorkerLease.owner == Task.claimed_by)
        .where(
            Task.status == TaskStatus.RUNNING,
            WorkerLease.expires_at <= now,
            or_(Task.updated_at < WorkerLease.expires_at, Task.updated_at < now - timedelta(seconds=seconds)),
        )
        .order_by(Task.updated_at)
        .limit(limit)
    )
    ids = list(session.scalars(stuck))
    if ids:
        session.execute(update(Task).where(Task.id.in_(ids)).values(updated_at=now))
    return ids


def forget_expired(session: Session, *, older_than: timedelta) -> int:
    """Delete leases expired longer ago than `older_than` (the stale threshold: their tasks, if any, are the
    sweeper's by then anyway); returns how many."""
    cutoff = database_now(session) - older_than
    # A DELETE gives a CursorResult, which has the row count; Session.execute is typed for any statement.
    return cast(CursorResult[Any], session.execute(delete(WorkerLease).where(WorkerLease.expires_at < cutoff))).rowcount
