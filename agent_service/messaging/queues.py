"""What waits in the broker: the length of each of the service's queues, for the backlog gauges."""

from __future__ import annotations

from celery import Celery


def queue_lengths(app: Celery) -> dict[str, int]:
    """Messages waiting in each queue, by name, over one broker connection; messages a worker holds (being
    run, or waiting for their countdown) are not counted. Raises: what kombu raises when the broker is down."""
    with app.connection_for_read() as connection:
        channel = connection.default_channel
        # A declaration as the worker makes it (passive would fail on Redis for a queue emptied to nothing).
        return {queue.name: queue.bind(channel).queue_declare().message_count for queue in app.conf.task_queues}
