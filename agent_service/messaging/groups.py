"""Sending a group's completion callback (its `on_complete` Celery task) once the group has ended: an
outbox in the `task_groups` row. Whoever ended the group sends it right after that commit; the sweeper
sends any left unsent by a sender that was lost (`send_overdue_callbacks`).

Each send holds the group's row lock (SKIP LOCKED) from before the publish until `callback_sent_at` is
committed, so two senders never both publish. A duplicate needs the sender to die (or lose its database)
after the broker took the message and before that commit; it then carries the same Celery task id,
`callback_task_id(group_id)`. See docs/decisions.md, "Group callbacks: an outbox in the group row".
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from datetime import datetime, timedelta

from celery import Celery
from kombu.exceptions import OperationalError as BrokerOperationalError
from sqlalchemy.orm import Session, sessionmaker

from agent_service.clock import utcnow
from agent_service.config import Settings
from agent_service.database import session_scope
from agent_service.errors import BrokerUnavailableError
from agent_service.store import groups

logger = logging.getLogger(__name__)

# Left to the sender that ended the group this long before the sweeper sends its callback instead.
CALLBACK_GRACE = timedelta(seconds=10)
_CALLBACK_NAMESPACE = uuid.UUID("5b0b7a4e-3c1f-4c55-9a43-1f0f2e6d8c11")


def callback_task_id(group_id: str) -> str:
    """The Celery task id of the group's callback: the same for every send, so a duplicate shows."""
    return str(uuid.uuid5(_CALLBACK_NAMESPACE, group_id))


def send_group_callbacks(
    app: Celery, session_factory: sessionmaker[Session], settings: Settings, group_ids: Iterable[str]
) -> list[str]:
    """Send the callback of each of these groups that ended with one not yet sent; returns the ids sent.
    Raises: BrokerUnavailableError (the groups not sent stay in the outbox), what the database raises."""
    return [group_id for group_id in group_ids if _send_one(app, session_factory, settings, group_id, now=utcnow())]


def send_callbacks_quietly(
    app: Celery, session_factory: sessionmaker[Session], settings: Settings, group_ids: list[str]
) -> None:
    """`send_group_callbacks` for the worker that just ended these groups: a failure is logged, never raised
    (the sweeper sends what is left)."""
    try:
        send_group_callbacks(app, session_factory, settings, group_ids)
    except Exception as exc:
        logger.warning("group callback(s) of %s not sent now (%s); the sweeper sends them", group_ids, exc)


def send_overdue_callbacks(
    app: Celery, session_factory: sessionmaker[Session], settings: Settings, *, now: datetime
) -> int:
    """Send the callbacks of groups that ended more than CALLBACK_GRACE before `now` and whose sender was
    lost; returns how many were sent. Raises: BrokerUnavailableError, what the database raises."""
    with session_scope(session_factory) as session:
        overdue = groups.unsent_callbacks(session, ended_before=now - CALLBACK_GRACE, limit=settings.sweep_batch_size)
    return len(send_group_callbacks(app, session_factory, settings, overdue))


def _send_one(
    app: Celery, session_factory: sessionmaker[Session], settings: Settings, group_id: str, *, now: datetime
) -> bool:
    with session_scope(session_factory) as session:
        callback = groups.take_unsent_callback(session, group_id)
        if callback is None:
            return False
        outcomes = groups.callback_outcomes(session, group_id)
        try:
            app.send_task(
                callback,
                args=(group_id, outcomes),
                task_id=callback_task_id(group_id),
                queue=settings.group_callback_queue,
            )
        except (BrokerOperationalError, ConnectionError, OSError) as exc:
            raise BrokerUnavailableError(f"group {group_id}'s callback not sent (broker unreachable: {exc})") from exc
        groups.mark_callback_sent(session, group_id, now=now)
    logger.info("group %s ended: callback %s sent as %s", group_id, callback, callback_task_id(group_id))
    return True
