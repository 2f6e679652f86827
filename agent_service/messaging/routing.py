"""What crosses the broker, by name: the queues, the task names and which queue each task goes to.

Both `worker.py` (which declares the queues and routes) and `tasks.py` (which names its tasks) read them
here. The task names keep the design's `worker.` prefix.

On RabbitMQ the queues are quorum queues with a delivery limit, and their exchanges are topic exchanges:
Celery's native delayed delivery, which countdowns need on quorum queues, cannot route into a direct
exchange (see docs/decisions.md, "RabbitMQ: quorum queues").
"""

from __future__ import annotations

from celery import Celery
from kombu.entity import Exchange, Queue

from agent_service.config import Settings

AGENT_QUEUE = "agent_tasks"
SYSTEM_QUEUE = "system"
# Where RabbitMQ puts a message delivered more than BROKER_DELIVERY_LIMIT times; the sweeper drains it.
DEAD_LETTER_QUEUE = "dead_letters"

PROCESS_TASK_NAME = "worker.process_agent_task"
HEALTH_TASK_NAME = "worker.health_check"
SWEEP_TASK_NAME = "worker.sweep_stale_tasks"

TASK_ROUTES = {
    PROCESS_TASK_NAME: {"queue": AGENT_QUEUE},
    HEALTH_TASK_NAME: {"queue": SYSTEM_QUEUE},
    SWEEP_TASK_NAME: {"queue": SYSTEM_QUEUE},
}


def task_queues(settings: Settings) -> tuple[Queue, ...]:
    """The queues the workers consume, each with an exchange and routing key of its own name: direct on
    Redis; on RabbitMQ topic, and quorum queues whose too-often-delivered messages go to DEAD_LETTER_QUEUE."""
    if not settings.broker_is_rabbitmq:
        return tuple(
            Queue(name, Exchange(name, type="direct"), routing_key=name) for name in (AGENT_QUEUE, SYSTEM_QUEUE)
        )
    arguments = {
        "x-queue-type": "quorum",
        "x-delivery-limit": settings.broker_delivery_limit,
        "x-dead-letter-exchange": DEAD_LETTER_QUEUE,
        # At-least-once dead-lettering (RabbitMQ >= 3.10) needs reject-publish; a dropped dead letter would
        # leave its task to the stale-task sweep.
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }
    return tuple(
        Queue(name, Exchange(name, type="topic"), routing_key=name, queue_arguments=arguments)
        for name in (AGENT_QUEUE, SYSTEM_QUEUE)
    )


def dead_letter_queue() -> Queue:
    """RabbitMQ's dead letters of the service's queues (a fanout exchange: each keeps its routing key)."""
    return Queue(
        DEAD_LETTER_QUEUE,
        Exchange(DEAD_LETTER_QUEUE, type="fanout"),
        routing_key=DEAD_LETTER_QUEUE,
        queue_arguments={"x-queue-type": "quorum"},
    )


def broker_countdown(app: Celery, seconds: float | None) -> float | None:
    """The countdown to publish a message with: on quorum queues at least 1 s, since Celery's native delayed
    delivery delays by whole seconds and refuses a delay under one (the fraction left after the whole
    seconds is waited out in the worker, as every countdown is on Redis)."""
    if not seconds or seconds >= 1 or not _quorum_queues(app):
        return seconds
    return 1.0


def _quorum_queues(app: Celery) -> bool:
    return any((queue.queue_arguments or {}).get("x-queue-type") == "quorum" for queue in app.conf.task_queues or ())
