"""Publishing agent-task messages: one message per task, carrying only the task's id."""

from __future__ import annotations

import uuid

from celery import Celery
from kombu.exceptions import BatchPublishError
from kombu.exceptions import OperationalError as BrokerOperationalError
from sqlalchemy.orm import Session, sessionmaker

from agent_service.clock import utcnow
from agent_service.database import session_scope
from agent_service.errors import BrokerUnavailableError
from agent_service.messaging.routing import AGENT_QUEUE, PROCESS_TASK_NAME, broker_countdown
from agent_service.store import tasks as store_tasks
from agent_service.tracing import NO_TRACES, TaskTraces


def enqueue(
    app: Celery, session_factory: sessionmaker[Session], task_ids: list[uuid.UUID], *, traces: TaskTraces = NO_TRACES
) -> None:
    """Publish one message per task (each in its trace in `traces`), then mark the still-pending ones queued.
    Raises: BrokerUnavailableError (the rows stay pending; the sweeper queues them later)."""
    if not task_ids:
        return
    publish_tasks(app, task_ids, traces=traces)
    with session_scope(session_factory) as session:
        store_tasks.mark_queued(session, task_ids, now=utcnow())


def publish_tasks(
    app: Celery, task_ids: list[uuid.UUID], *, countdown: float | None = None, traces: TaskTraces = NO_TRACES
) -> None:
    """Send one `process_agent_task` message per id (the message id is the task id), in one connection and, on
    Redis, one pipeline (kombu's `Producer.batch`: a round trip for all of them, not one each); a task traced in
    `traces` is sent under a span of its trace, whose traceparent its message carries.

    Raises: BrokerUnavailableError when the broker cannot be reached, or the pipeline failed with delivery
    uncertain (a message delivered twice runs once: the claim takes its row once).
    """
    try:
        with app.producer_or_acquire() as producer, producer.batch():
            for task_id in task_ids:
                with traces.of(task_id).publishing(queue=AGENT_QUEUE, message_id=str(task_id)) as headers:
                    # ignore_result: the outcome lives in the task row, so neither side touches the result backend.
                    app.send_task(
                        PROCESS_TASK_NAME,
                        args=[str(task_id)],
                        task_id=str(task_id),
                        producer=producer,
                        ignore_result=True,
                        countdown=broker_countdown(app, countdown),
                        headers=headers,
                    )
    except (BrokerOperationalError, BatchPublishError, ConnectionError, OSError) as exc:
        raise BrokerUnavailableError(
            f"{len(task_ids)} task(s) saved as pending but not queued (broker unreachable: {exc}); "
            "the sweeper re-queues them"
        ) from exc
