"""The batching adapter settles every message of a batch, however the batch ends."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from agent_service.messaging.routing import PROCESS_TASK_NAME
from agent_service.worker import create_celery_app
from tests.support import make_settings


@dataclass
class DeliveredMessage:
    """What the adapter reads of a worker's request, and what it does to it."""

    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    name: str = PROCESS_TASK_NAME
    delivery_info: dict = field(default_factory=dict)
    hostname: str = "test@host"
    reply_to: str | None = None
    correlation_id: str | None = None
    request_dict: dict = field(default_factory=dict)
    settled: list[str] = field(default_factory=list)

    @property
    def _payload(self) -> tuple[list, dict, dict]:
        return [self.id], {}, {}

    def acknowledge(self) -> None:
        self.settled.append("acked")

    def reject(self, *, requeue: bool) -> None:
        self.settled.append("requeued" if requeue else "dropped")


class RecordingPool:
    """A pool that keeps the callbacks a batch was handed to it with."""

    def apply_async(self, _fn: Any, _args: Any, **callbacks: Any) -> None:
        self.callbacks = callbacks


def a_batch_handed_to_the_pool() -> tuple[list[DeliveredMessage], RecordingPool]:
    app = create_celery_app(make_settings(database_url="sqlite://"))
    app.loader.import_default_modules()  # what a worker does at start: tasks.py registers the task
    task, pool = app.tasks[PROCESS_TASK_NAME], RecordingPool()
    task._pool = pool
    messages = [DeliveredMessage(), DeliveredMessage()]
    task.flush(messages)
    return messages, pool


def test_a_batch_that_returns_acknowledges_every_message():
    messages, pool = a_batch_handed_to_the_pool()
    pool.callbacks["callback"]([None, None])
    assert [m.settled for m in messages] == [["acked"], ["acked"]]


def test_a_batch_whose_task_raised_hands_every_message_back_at_once():
    # celery-batches logs the task's exception and returns None: the messages must not stay unacked
    messages, pool = a_batch_handed_to_the_pool()
    pool.callbacks["callback"](None)
    assert [m.settled for m in messages] == [["requeued"], ["requeued"]]


def test_a_batch_the_pool_lost_hands_every_message_back_at_once():
    messages, pool = a_batch_handed_to_the_pool()
    pool.callbacks["error_callback"](RuntimeError("the pool child died"))
    assert [m.settled for m in messages] == [["requeued"], ["requeued"]]
