"""RabbitMQ's dead-letter queue, declared by every worker as its consumer starts (and after each reconnection),
before it takes a message: a quorum queue dead-letters into an exchange that must exist, or the message is
dropped. The worker does not consume it; the sweeper drains it (`messaging.dead_letters`)."""

from __future__ import annotations

from typing import Any

from celery import bootsteps

from agent_service.messaging.routing import dead_letter_queue
from agent_service.services import services_of


class DeadLetterQueue(bootsteps.StartStopStep):
    """Declares DEAD_LETTER_QUEUE and its exchange on a RabbitMQ broker; see the module docstring."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def include_if(self, c: Any) -> bool:
        return services_of(c.app).settings.broker_is_rabbitmq

    def start(self, c: Any) -> None:
        dead_letter_queue().bind(c.connection.default_channel).declare()
