"""What waits in the broker: the length of each of the service's queues, for the backlog gauges, and of the
agent-task queue, for the batching's flush decisions."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from celery import Celery

logger = logging.getLogger("agent_service")


def queue_lengths(app: Celery) -> dict[str, int]:
    """Messages waiting in each queue, by name, over one broker connection; messages a worker holds (being
    run, or waiting for their countdown) are not counted. Raises: what kombu raises when the broker is down."""
    with app.connection_for_read() as connection:
        channel = connection.default_channel
        # A declaration as the worker makes it (passive would fail on Redis for a queue emptied to nothing).
        return {queue.name: queue.bind(channel).queue_declare().message_count for queue in app.conf.task_queues}


class Backlog:
    """How many messages wait in one queue, asked over a broker connection of its own, kept open between
    questions (one round trip each: LLEN on Redis, a
    queue declaration on AMQP)."""

    def __init__(self, app: Celery, queue_name: str) -> None:
        self._app = app
        self._queue = next(queue for queue in app.conf.task_queues if queue.name == queue_name)
        self._connection: Any = None

    def waiting(self) -> int | None:
        """Messages waiting in the queue now; None when the broker could not say (the connection is then
        dropped, and opened again by the next question)."""
        try:
            if self._connection is None:
                self._connection = self._app.connection_for_read()
            return self._queue.bind(self._connection.default_channel).queue_declare().message_count
        except Exception as exc:
            logger.debug("could not ask the broker how many messages wait: %s", exc)
            self.close()
            return None

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                connection.release()
