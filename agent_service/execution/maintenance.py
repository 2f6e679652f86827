"""The periodic jobs beat runs on the `system` queue (the health check, and the sweeper of lost workers' tasks,
stale tasks and expired approvals), and the backlog a metrics scrape reads."""

from __future__ import annotations

from datetime import datetime, timedelta

from celery import Celery
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from agent_service.clock import utcnow
from agent_service.config import Settings
from agent_service.database import session_scope
from agent_service.execution.liveness import current_owner
from agent_service.messaging.groups import send_callbacks_quietly, send_overdue_callbacks
from agent_service.messaging.publisher import enqueue, publish_tasks
from agent_service.store import leases, steps
from agent_service.store import tasks as store_tasks
from agent_service.store.groups import note_tasks_ended


def requeue_stuck_tasks(*, app: Celery, session_factory: sessionmaker[Session], settings: Settings) -> int:
    """Publish a message again for every row that may have lost its own (broker down at submit, lost with
    Redis, dead worker); returns how many. Raises: BrokerUnavailableError."""
    with session_scope(session_factory) as session:
        stuck = store_tasks.tasks_to_requeue(session, settings=settings, now=utcnow(), limit=settings.sweep_batch_size)
    enqueue(app, session_factory, stuck)
    return len(stuck)


def requeue_tasks_of_lost_workers(*, app: Celery, session_factory: sessionmaker[Session], settings: Settings) -> int:
    """Take back every running task whose worker's liveness lease expired (queued again, the lost attempt in
    its history) and publish it, and forget leases long expired; returns how many tasks. This process judges,
    so while its own lease is expired it judges no one (`store.leases.take_back_tasks_of_lost_owners`).
    Raises: BrokerUnavailableError (nothing is taken back: the next sweep tries again)."""
    with session_scope(session_factory) as session:
        lost = leases.take_back_tasks_of_lost_owners(session, judge=current_owner(), limit=settings.sweep_batch_size)
        leases.forget_expired(session, older_than=timedelta(seconds=settings.stale_task_after_seconds))
        # Published before the commit: a message claimed first finds the row running under an expired lease,
        # which the claim takes over all the same.
        if lost:
            publish_tasks(app, lost)
    return len(lost)


def send_lost_group_callbacks(*, app: Celery, session_factory: sessionmaker[Session], settings: Settings) -> int:
    """Send the callbacks of ended groups whose sender was lost before sending them; returns how many.
    Raises: BrokerUnavailableError."""
    return send_overdue_callbacks(app, session_factory, settings, now=utcnow())


def fail_expired_approvals(*, app: Celery, session_factory: sessionmaker[Session], settings: Settings) -> int:
    """Fail every task whose tool call waited for a reviewer past APPROVAL_TIMEOUT_SECONDS (ending their
    groups, whose callbacks are sent); returns how many."""
    with session_scope(session_factory) as session:
        failed = steps.fail_expired_approvals(session, now=utcnow(), limit=settings.sweep_batch_size)
        ended = note_tasks_ended(session, failed, now=utcnow())
    if ended:
        send_callbacks_quietly(app, session_factory, settings, ended)
    return len(failed)


def oldest_waiting_since(session_factory: sessionmaker[Session]) -> datetime | None:
    """When the task waiting longest (pending or queued) was queued; None when no task waits.
    Raises: what the database raises."""
    with session_scope(session_factory) as session:
        return store_tasks.oldest_waiting_since(session)


def check_health(*, session_factory: sessionmaker[Session]) -> dict[str, str]:
    """Prove the worker can reach its database. Raises: what the database raises."""
    with session_scope(session_factory) as session:
        session.execute(text("SELECT 1"))
    return {"status": "ok", "database": "ok", "checked_at": utcnow().isoformat()}
