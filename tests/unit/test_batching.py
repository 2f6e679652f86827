"""The batching adapter settles every message of a batch, however the batch ends."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from kombu.message import Message
from kombu.serialization import dumps

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


class BrokerSaying:
    """What the broker answers when the batching asks how many messages wait (None: it cannot say)."""

    def __init__(self, *answers: int | None) -> None:
        self.answers = list(answers)

    def waiting(self) -> int | None:
        return self.answers.pop(0)

    def close(self) -> None:
        pass


class ManualTimer:
    """The consumer's timer, never firing by itself: what is still armed shows what waits for the interval."""

    def __init__(self) -> None:
        self.armed: list[ManualTimer.Entry] = []

    class Entry:
        def __init__(self, timer: ManualTimer) -> None:
            self.timer = timer

        def cancel(self) -> None:
            self.timer.armed.remove(self)

    def call_repeatedly(self, _seconds: float, _fn: Any) -> ManualTimer.Entry:
        entry = ManualTimer.Entry(self)
        self.armed.append(entry)
        return entry


class BatchesPool(RecordingPool):
    """A pool that keeps every batch handed to it: the ids of its messages."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []

    def apply_async(self, _fn: Any, args: Any, **callbacks: Any) -> None:
        super().apply_async(_fn, args, **callbacks)
        self.batches.append([request.id for request in args[1][0]])


@dataclass
class Consumer:
    """What celery-batches' strategy reads of the worker's consumer."""

    pool: BatchesPool = field(default_factory=BatchesPool)
    timer: ManualTimer = field(default_factory=ManualTimer)
    hostname: str = "test@host"
    connection_errors: tuple = ()
    event_dispatcher: Any = None
    hub: Any = None  # a worker without an event loop


def a_consuming_worker(broker: BrokerSaying, **settings: Any) -> tuple[Any, Consumer, Any]:
    """The agent task's message handler as a worker's consumer runs it, the broker answering as `broker` says."""
    app = create_celery_app(make_settings(database_url="sqlite://", **settings))
    app.loader.import_default_modules()
    task, consumer = app.tasks[PROCESS_TASK_NAME], Consumer()
    handle = task.Strategy(task, app, consumer)
    task._backlog = broker  # the question the handler asks, answered here instead of by a broker
    return app, consumer, handle


def deliver(app: Any, handle: Any, task_id: str) -> None:
    """One agent-task message delivered to the handler, as the broker would hand it over."""
    headers, properties, body, _ = app.amqp.as_task_v2(task_id, PROCESS_TASK_NAME, args=[task_id])
    content_type, encoding, payload = dumps(body, serializer="json")
    delivery_info = {"exchange": "agent_tasks", "routing_key": "agent_tasks"}
    message = Message(
        body=payload, headers=headers, content_type=content_type, content_encoding=encoding, delivery_info=delivery_info
    )
    message.properties.update(properties)
    handle(message, None, lambda *_: None, lambda *_: None, set())


def test_a_lone_message_is_handed_over_at_once_without_waiting_for_the_flush_interval():
    # Given a worker whose broker has no other message waiting
    app, consumer, handle = a_consuming_worker(BrokerSaying(0))
    # When one message arrives
    deliver(app, handle, "lone")
    # Then its batch of one is in the pool already, and no timer is left waiting
    assert consumer.pool.batches == [["lone"]]
    assert consumer.timer.armed == []


def test_messages_are_held_while_the_broker_says_more_wait_then_handed_over_together():
    # Given a broker that says two more wait when the first arrives, and none once they have come
    app, consumer, handle = a_consuming_worker(BrokerSaying(2, 0))
    # When the three arrive
    for task_id in ("first", "second"):
        deliver(app, handle, task_id)
        assert consumer.pool.batches == []  # the ones still to come are waited for
    deliver(app, handle, "third")
    # Then they go in one batch, once the last one known to wait is in, asking the broker only twice
    assert consumer.pool.batches == [["first", "second", "third"]]


def test_a_broker_that_cannot_say_leaves_the_batch_to_the_flush_interval():
    app, consumer, handle = a_consuming_worker(BrokerSaying(None))
    deliver(app, handle, "unsure")
    assert consumer.pool.batches == []
    assert len(consumer.timer.armed) == 1  # the interval's flush, as before adaptive batching


def test_the_first_message_after_a_quiet_spell_is_handed_over_at_once_without_asking_the_broker():
    # Given a worker that has had no message for its flush interval, and a broker that must not be asked
    app, consumer, handle = a_consuming_worker(BrokerSaying(), batch_flush_seconds=0.02)
    time.sleep(0.03)
    # When a message arrives
    deliver(app, handle, "after a pause")
    # Then it is in the pool at once, alone, with no question asked (BrokerSaying would have had no answer)
    assert consumer.pool.batches == [["after a pause"]]
    assert consumer.timer.armed == []


def test_a_burst_after_a_quiet_spell_batches_behind_its_first_message():
    # Given a quiet worker, then a burst of three whose broker says the last two wait when the second arrives
    app, consumer, handle = a_consuming_worker(BrokerSaying(1, 0), batch_flush_seconds=0.02)
    time.sleep(0.03)
    # When the three arrive back to back
    for task_id in ("first", "second", "third"):
        deliver(app, handle, task_id)
    # Then the first went alone and the other two together
    assert consumer.pool.batches == [["first"], ["second", "third"]]
