"""The backlog that waits in the database for the fair-share dispatcher: plain functions on a caller-owned
Session (PostgreSQL only: they rely on advisory locks and `FOR UPDATE SKIP LOCKED`), no commits.

A dispatch round, in one transaction: `take_dispatch_turn` (one dispatcher at a time), `queued_unstarted`
(how much already waits in the broker), `take_waiting` (the next tasks in fair order, locked), then the
caller publishes them and calls `mark_dispatched`. The rows stay locked until the commit, so a worker that
receives a message early waits for it, and a dispatcher that dies before the commit leaves them waiting.
"""

from __future__ import annotations

import math
import uuid
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, Uuid, text, update
from sqlalchemy.orm import Session

from models import Task, TaskStatus

# Any constant identifies the lock; this one spells "dispatch" in ASCII.
_DISPATCH_LOCK = 0x6469737061746368
_TAKE_TURN = text("SELECT pg_try_advisory_xact_lock(:key)")
_ANY_WAITING = text("SELECT EXISTS (SELECT 1 FROM tasks WHERE status = 'waiting')")
_USERS_WAITING = text("SELECT count(DISTINCT user_id) FROM tasks WHERE status = 'waiting'")
# Fresh (attempts = 0) and not deferred: tasks retried or deferred wait for a countdown, not for a worker.
_QUEUED_UNSTARTED = text(
    "SELECT count(*) FROM tasks WHERE status = 'queued' AND attempts = 0 AND waiting_reason IS NULL"
    " AND queued_at > :since"
)
# Each waiting user's first tasks (priority, then age), locked; then across users by priority, then turn
# (the first of every user before the second of any), then age.
_TAKE_WAITING = text(
    """
    WITH users AS (SELECT DISTINCT user_id FROM tasks WHERE status = 'waiting'),
    picked AS (
        SELECT own.id, own.priority, own.created_at,
               row_number() OVER (PARTITION BY users.user_id ORDER BY own.priority DESC, own.created_at, own.id)
                   AS turn
        FROM users CROSS JOIN LATERAL (
            SELECT id, priority, created_at FROM tasks
            WHERE status = 'waiting' AND user_id = users.user_id
            ORDER BY priority DESC, created_at, id
            LIMIT :per_user
            FOR UPDATE SKIP LOCKED
        ) AS own
    )
    SELECT id FROM picked ORDER BY priority DESC, turn, created_at, id LIMIT :limit
    """
).columns(id=Uuid)
# A published task still unstarted after this long is presumed lost with its message (the sweeper re-queues
# it later); it stops holding back the dispatch of others, so a broker that lost its queue stalls nothing.
UNSTARTED_COUNTS_FOR = timedelta(seconds=60)


def take_dispatch_turn(session: Session) -> bool:
    """Whether this transaction is the one dispatcher of the moment (a transaction-scoped advisory lock, so
    the counts a round relies on are not raced by another round); False: another dispatcher is at it."""
    return bool(session.scalar(_TAKE_TURN, {"key": _DISPATCH_LOCK}))


def any_waiting(session: Session) -> bool:
    return bool(session.scalar(_ANY_WAITING))


def queued_unstarted(session: Session, *, now: datetime) -> int:
    """Tasks published and not yet started by a worker (retries and deferrals waiting out a countdown, and
    tasks presumed lost, aside)."""
    return int(session.scalar(_QUEUED_UNSTARTED, {"since": now - UNSTARTED_COUNTS_FOR}) or 0)


def take_waiting(session: Session, *, limit: int) -> list[uuid.UUID]:
    """Lock and return up to `limit` waiting tasks in fair order: higher priority first; within a priority,
    one task of each user in turn (round-robin), each user's oldest first. Rows another transaction holds
    are skipped."""
    users = session.scalar(_USERS_WAITING) or 0
    if not users or limit < 1:
        return []
    per_user = math.ceil(limit / users)
    return list(session.scalars(_TAKE_WAITING, {"per_user": per_user, "limit": limit}))


def mark_dispatched(session: Session, task_ids: list[uuid.UUID], *, now: datetime) -> int:
    """waiting -> queued for tasks whose message was published; returns how many."""
    if not task_ids:
        return 0
    statement = (
        update(Task)
        .where(Task.id.in_(task_ids), Task.status == TaskStatus.WAITING)
        .values(status=TaskStatus.QUEUED, queued_at=now, updated_at=now)
    )
    return cast(CursorResult[Any], session.execute(statement)).rowcount
