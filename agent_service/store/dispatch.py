"""The backlog that waits in the database for the fair-share dispatcher: plain functions on a caller-owned
Session (PostgreSQL only: they rely on advisory locks and `FOR UPDATE SKIP LOCKED`), no commits.

A dispatch round, in one transaction: `take_dispatch_turn` (one dispatcher at a time), `in_flight`
(how many published tasks are not finished), `take_waiting` (the next tasks in fair order, locked), then the
caller publishes them and calls `tasks.mark_queued`. The rows stay locked until the commit, so a worker that
receives a message early waits for it, and a dispatcher that dies before the commit leaves them waiting.
"""

from __future__ import annotations

import math
import uuid
from datetime import datetime, timedelta

from sqlalchemy import Uuid, text
from sqlalchemy.orm import Session

from agent_service.config import Settings

# Any constant identifies the lock; this one spells "dispatch" in ASCII.
_DISPATCH_LOCK = 0x6469737061746368
_TAKE_TURN = text("SELECT pg_try_advisory_xact_lock(:key)")
_ANY_WAITING = text("SELECT EXISTS (SELECT 1 FROM tasks WHERE status = 'waiting')")
_USERS_WAITING = text("SELECT count(DISTINCT user_id) FROM tasks WHERE status = 'waiting'")
# Published and not finished: running ones, and queued ones still fresh (attempts = 0) and not deferred,
# since retried or deferred tasks wait out a countdown, not for a worker. See UNFINISHED_COUNTS_FOR.
_IN_FLIGHT = text(
    "SELECT count(*) FROM tasks WHERE (status = 'queued' AND attempts = 0 AND waiting_reason IS NULL"
    " AND queued_at > :queued_since) OR (status = 'running' AND claimed_at > :claimed_since)"
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
# A published task unstarted this long is presumed lost with its message, and one running this much longer
# than an LLM call may take presumed lost with its worker (the sweeper re-queues both later): neither holds
# back the dispatch of others any more, so a broker that lost its queue or a dead worker stalls nothing.
UNFINISHED_COUNTS_FOR = timedelta(seconds=60)


def take_dispatch_turn(session: Session) -> bool:
    """Whether this transaction is the one dispatcher of the moment (a transaction-scoped advisory lock, so
    the counts a round relies on are not raced by another round); False: another dispatcher is at it."""
    return bool(session.scalar(_TAKE_TURN, {"key": _DISPATCH_LOCK}))


def any_waiting(session: Session) -> bool:
    return bool(session.scalar(_ANY_WAITING))


def in_flight(session: Session, *, now: datetime, settings: Settings) -> int:
    """Tasks published and not finished: queued for a worker, or running (tasks waiting out a retry or
    deferral countdown, and tasks presumed lost, aside)."""
    claimed_since = now - UNFINISHED_COUNTS_FOR - timedelta(seconds=settings.llm_timeout_seconds)
    params = {"queued_since": now - UNFINISHED_COUNTS_FOR, "claimed_since": claimed_since}
    return int(session.scalar(_IN_FLIGHT, params) or 0)


def take_waiting(session: Session, *, limit: int) -> list[uuid.UUID]:
    """Lock and return up to `limit` waiting tasks in fair order: higher priority first; within a priority,
    one task of each user in turn (round-robin), each user's oldest first. Rows another transaction holds
    are skipped."""
    users = session.scalar(_USERS_WAITING) or 0
    if not users or limit < 1:
        return []
    per_user = math.ceil(limit / users)
    return list(session.scalars(_TAKE_WAITING, {"per_user": per_user, "limit": limit}))
