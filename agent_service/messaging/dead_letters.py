"""RabbitMQ's dead letters: messages a quorum queue gave up on after BROKER_DELIVERY_LIMIT deliveries (each
ended by a worker that died holding it or handed it back). The sweeper takes them from DEAD_LETTER_QUEUE
and fails their tasks, which `cli failed` then lists and `cli replay` runs again; a poison message thus
ends as a failed task instead of looping. See docs/decisions.md, "RabbitMQ: quorum queues"."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from celery import Celery
from kombu.message import Message

from agent_service.messaging.routing import PROCESS_TASK_NAME, dead_letter_queue

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeadLetter:
    """An agent-task message RabbitMQ dead-lettered: the task it carried, and why (x-death's reason)."""

    task_id: uuid.UUID
    reason: str


@contextmanager
def taken_dead_letters(app: Celery, *, limit: int) -> Iterator[list[DeadLetter]]:
    """Take up to `limit` dead letters and yield those of agent tasks (the rest are logged); all are
    acknowledged when the block ends without an error, and handed back to the queue otherwise.
    Raises: what kombu raises when the broker is down."""
    with app.connection_for_write() as connection:
        queue = dead_letter_queue().bind(connection.default_channel)
        queue.declare()
        messages: list[Message] = []
        while len(messages) < limit and (message := queue.get(no_ack=False)) is not None:
            messages.append(message)
        yield [letter for message in messages if (letter := _agent_task_letter(message.headers or {}))]
        for message in messages:
            message.ack()


def _agent_task_letter(headers: dict[str, Any]) -> DeadLetter | None:
    deaths = headers.get("x-death") or [{}]
    reason = str(deaths[0].get("reason", "unknown"))
    try:
        task_id = uuid.UUID(str(headers.get("id")))
    except ValueError:
        task_id = None
    if headers.get("task") != PROCESS_TASK_NAME or task_id is None:
        logger.warning("dropped a dead letter (%s) of task %s, id %s", reason, headers.get("task"), headers.get("id"))
        return None
    return DeadLetter(task_id, reason)
