"""The worker takes agent tasks only while its database answers at start-up.

A worker that starts before its database (usual in real deployments) would otherwise take every agent
message, fail to claim it and hand it back, again and again. Instead `DatabaseGate`, a step of Celery's
consumer, checks the database once the task consumer exists and before it consumes anything; while the
database does not answer, the agent-task queue is not consumed (the `system` queue still is) and a probe
retries every `PROBE_INTERVAL_SECONDS`, adding the queue back once the database answers.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import bootsteps
from sqlalchemy import Engine, select
from sqlalchemy.exc import SQLAlchemyError

from agent_service.messaging.routing import AGENT_QUEUE
from agent_service.models import Task
from agent_service.notifications import Event, EventType
from agent_service.services import services_of

logger = logging.getLogger("agent_service")

PROBE_INTERVAL_SECONDS = 2.0


def database_problem(engine: Engine) -> str | None:
    """Why the service cannot use the database now, in one line naming DATABASE_URL (password hidden);
    None when it answers and has the schema."""
    try:
        with engine.connect() as connection:
            connection.execute(select(Task.id).limit(1))
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        where = engine.url.render_as_string(hide_password=True)
        return f"database not answering (DATABASE_URL={where}): {reason}"
    return None


class DatabaseGate(bootsteps.StartStopStep):
    """Holds back the agent-task queue while the database does not answer; see the module docstring."""

    # After Tasks has made the task consumer, before the event loop (always last) starts it consuming.
    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self._holding = False  # whether this step took the agent queue off the consumer
        self._probe: Any = None

    def start(self, c: Any) -> None:
        if not (self._holding or AGENT_QUEUE in c.app.amqp.queues.consume_from):
            return  # this worker does not consume agent tasks (-Q system)
        problem = database_problem(services_of(c.app).engine)
        if problem is None:
            self._release(c)
            return
        logger.error(
            "%s; taking no agent tasks until it answers, retrying every %.0f s", problem, PROBE_INTERVAL_SECONDS
        )
        services_of(c.app).notifier.notify(unreachable_event(f"{problem}; this worker takes no agent tasks"))
        if not self._holding:
            c.cancel_task_queue(AGENT_QUEUE)
            self._holding = True
        self._probe = c.timer.call_repeatedly(PROBE_INTERVAL_SECONDS, self._retry, (c,))

    def stop(self, c: Any) -> None:
        if self._probe is not None:
            self._probe.cancel()
            self._probe = None

    shutdown = stop

    def _retry(self, c: Any) -> None:
        if database_problem(services_of(c.app).engine) is None:
            self.stop(c)
            self._release(c)

    def _release(self, c: Any) -> None:
        if self._holding:
            c.add_task_queue(AGENT_QUEUE)
            self._holding = False
            logger.info("database answers; consuming %s", AGENT_QUEUE)
            summary = f"database answers again; this worker consumes {AGENT_QUEUE}"
            services_of(c.app).notifier.notify(Event(EventType.DATABASE_REACHABLE, summary))


def unreachable_event(problem: str) -> Event:
    """The notification that this worker cannot reach its database: `problem` is a line the service wrote
    (with DATABASE_URL's password hidden)."""
    return Event(EventType.DATABASE_UNREACHABLE, problem)
