"""The periodic jobs beat runs on the `system` queue (the health check, and the sweeper of lost workers' tasks,
stale tasks and expired approvals), and the backlog a metrics scrape reads."""

from __future__ import annotations

import uuid
from datetime import timedelta

from celery import Celery
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from agent_service.clock import utcnow
from agent_service.config import Settings
from agent_service.database import session_scope
from agent_service.execution.liveness import current_owner
from agent_service.messaging.dead_letters import DeadLetter, taken_dead_letters
from agent_service.messaging.groups import send_callbacks_quietly, send_overdue_callbacks
from agent_service.messaging.publisher import enqueue, publish_tasks
from agent_service.messaging.unacked import restore_delivered_before
from agent_service.monitoring import Backlog
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


def fail_dead_lettered_tasks(*, app: Celery, session_factory: sessionmaker[Session], settings: Settings) -> int:
    """Fail the tasks whose message RabbitMQ dead-lettered after BROKER_DELIVERY_LIMIT deliveries (ending their
    groups, whose callbacks are sent); returns how many. Nothing to do on Redis. Raises: what kombu raises."""
    if not settings.broker_is_rabbitmq:
        return 0
    with taken_dead_letters(app, limit=settings.sweep_batch_size) as letters, session_scope(session_factory) as session:
        now = utcnow()
        by_error: dict[str, list[uuid.UUID]] = {}
        for letter in letters:
            by_error.setdefault(_dead_letter_error(letter, settings), []).append(letter.task_id)
        failed = [
            task_id
            for error, task_ids in by_error.items()
            for task_id in store_tasks.fail_dead_lettered(session, task_ids, error=error, now=now)
        ]
        ended = note_tasks_ended(session, failed, now=now)
    if ended:
        send_callbacks_quietly(app, session_factory, settings, ended)
    return len(failed)


def _dead_letter_error(letter: DeadLetter, settings: Settings) -> str:
    if letter.reason == "delivery_limit":
        return (
            f"its message was handed back more than {settings.broker_delivery_limit} times (BROKER_DELIVERY_LIMIT) "
            "and was dead-lettered by the broker"
        )
    return f"its message was dead-lettered by the broker ({letter.reason})"


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


def restore_messages_of_lost_workers(*, app: Celery, session_factory: sessionmaker[Session], settings: Settings) -> int:
    """On Redis, hand back to their queues the messages still unacknowledged that were delivered before the
    latest lost worker's lease expired: those it had received but not claimed would otherwise wait for the
    visibility timeout; returns how many. Idempotent, so every sweep does it while a lost lease is kept: a message
    handed back is delivered again later than that, and one a live worker holds is turned away by the claim.
    A few database queries per sweep, and a Redis one while a lost lease is kept; nothing on RabbitMQ, which hands a
    lost connection's messages back itself. Raises: BrokerUnavailableError (the next sweep tries again)."""
    if not settings.broker_is_redis:
        return 0
    with session_scope(session_factory) as session:
        lost_at = leases.last_loss(session, judge=current_owner())
    if lost_at is None:
        return 0
    return restore_delivered_before(app, moment=lost_at.timestamp(), limit=settings.sweep_batch_size)


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


def read_backlog(session_factory: sessionmaker[Session]) -> Backlog:
    """The exporter's database gauges: when the task waiting longest (pending or queued) was queued, and how
    many tasks are dead letters. Raises: what the database raises."""
    with session_scope(session_factory) as session:
        return Backlog(store_tasks.oldest_waiting_since(session), store_tasks.count_failed(session))


def check_health(*, session_factory: sessionmaker[Session]) -> dict[str, str]:
    """Prove the worker can reach its database. Raises: what the database raises."""
    with session_scope(session_factory) as session:
        session.execute(text("SELECT 1"))
    return {"status": "ok", "database": "ok", "checked_at": utcnow().isoformat()}
