"""Fair-share dispatch: publishing waiting tasks from the database in fair order, only as fast as the workers
start them, so that a backlog waits in PostgreSQL (where it can be reordered) rather than in the broker.

Each round runs in one transaction (see `store.dispatch`): the rows are published while locked and marked
queued at the commit; a round that dies before its commit leaves them waiting for the next round (a message
already sent for one of them finds its row waiting, is skipped by the claim, and the next round sends
another). See docs/decisions.md, "Fair share: the backlog waits in PostgreSQL".
"""

from __future__ import annotations

from celery import Celery
from sqlalchemy.orm import Session, sessionmaker

from agent_service.clock import utcnow
from agent_service.config import Settings
from agent_service.database import session_scope
from agent_service.messaging.publisher import publish_tasks
from agent_service.store import dispatch
from agent_service.store import tasks as store_tasks


def dispatch_waiting(
    app: Celery, session_factory: sessionmaker[Session], settings: Settings, *, max_rounds: int | None = None
) -> int:
    """Run dispatch rounds until one publishes nothing (no room, nothing waiting, or another dispatcher at
    it), or `max_rounds` have run; returns how many tasks were published.
    Raises: BrokerUnavailableError (that round's tasks stay waiting), what the database raises."""
    published, rounds = 0, 0
    while max_rounds is None or rounds < max_rounds:
        moved = dispatch_round(app, session_factory, settings)
        published, rounds = published + moved, rounds + 1
        if not moved:
            break
    return published


def dispatch_round(app: Celery, session_factory: sessionmaker[Session], settings: Settings) -> int:
    """Publish up to DISPATCH_ROUND_SIZE waiting tasks, in fair order, while fewer than DISPATCH_TARGET_IN_FLIGHT
    published tasks are unfinished (queued or running); returns how many. Raises: as `dispatch_waiting`."""
    with session_scope(session_factory) as session:
        if not dispatch.any_waiting(session) or not dispatch.take_dispatch_turn(session):
            return 0
        now = utcnow()
        room = settings.dispatch_target_in_flight - dispatch.in_flight(session, now=now, settings=settings)
        task_ids = dispatch.take_waiting(session, limit=min(room, settings.dispatch_round_size))
        if task_ids:
            publish_tasks(app, task_ids)
            store_tasks.mark_queued(session, task_ids, now=now)
    return len(task_ids)
