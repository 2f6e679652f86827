"""The celery-batches adapter: agent-task messages are buffered and handed to the task as one batch, and
each message is then made known one by one, as Celery does for a message it runs alone: its task events
(received, started, then succeeded, failed, retried or revoked) and its result.

Two behaviours of `celery_batches.Batches` are changed here, each for a bug it had under this service's
load (see docs/decisions.md, "Batches after a reconnection" and "A lost batch's messages"), and one for
latency: a batch is handed over as soon as no more messages wait in the broker, rather than after the flush
interval (docs/decisions.md, "Adaptive batching").
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from celery import Celery
from celery.concurrency.thread import TaskPool as ThreadTaskPool
from celery.utils.saferepr import saferepr
from celery.worker.request import Request
from celery_batches import Batches, SimpleRequest
from celery_batches.trace import apply_batches_task

from agent_service.execution.outcomes import Outcome, TaskOutcome
from agent_service.messaging.queues import Backlog
from agent_service.messaging.results import store_results
from agent_service.messaging.routing import AGENT_QUEUE
from agent_service.models import TaskStatus
from agent_service.monitoring import record_task_run
from agent_service.notifications import Event as Notification
from agent_service.notifications import EventType
from agent_service.services import services_of
from agent_service.tracing import NO_TRACES, TRACEPARENT, Attributes, TaskTraces

logger = logging.getLogger("agent_service")

# A task event: its type and fields, as `Request.send_event` takes them.
Event = tuple[str, dict[str, Any]]


class AgentRequest(SimpleRequest):
    """One message of a batch. In the process that received it, it keeps the worker's `Request`, through
    which its task events go; a prefork pool child gets it without (its events wait in `unsent_event`)."""

    def __init__(self, request: Request) -> None:
        self.__dict__.update(vars(SimpleRequest.from_request(request)))
        self.worker_request: Request | None = request
        self.unsent_event: Event | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "worker_request": None}


class AgentTaskBatches(Batches):
    """Buffers agent-task messages and hands them over as one batch: at once when no more wait in the broker
    (or the message is the first after a quiet spell), else when the batch is full or the flush interval has
    passed (both from the app's settings). This task is always acks_late."""

    _eventer: Any = None  # the worker's event dispatcher, in the process that consumes the messages
    _hub: Any = None  # the consumer's event loop, through which a pool thread's task events are sent
    _backlog: Backlog | None = None  # asks the broker how many more wait, in the process that consumes them
    _expected = 0  # messages the broker said were waiting that have not arrived since
    _last_arrival = 0.0  # when the last message arrived (monotonic), in the process that consumes them

    @property
    def flush_every(self) -> int:
        return services_of(self.app).settings.batch_max_size

    @property
    def flush_interval(self) -> float:
        return services_of(self.app).settings.batch_flush_seconds

    def Strategy(self, task: Any, app: Celery, consumer: Any) -> Callable:  # noqa: N802 (Celery's name)
        """Batches.Strategy, with the flush timer armed anew: Celery clears the event loop's timers on a
        broker reconnection, and a stale timer entry would flush only full batches from then on."""
        self._tref = None
        self._eventer, self._hub = consumer.event_dispatcher, consumer.hub
        if self._backlog is not None:
            self._backlog.close()
        self._backlog, self._expected = Backlog(app, AGENT_QUEUE), 0
        self._last_arrival = time.monotonic()  # a consumer that just started has not been quiet: it asks
        buffer = super().Strategy(task, app, consumer)

        def task_message_handler(*args: Any, **kwargs: Any) -> None:
            quiet = self.after_a_quiet_spell()
            buffer(*args, **kwargs)
            if quiet or self.nothing_more_coming():
                self.flush_now()

        return task_message_handler

    def after_a_quiet_spell(self) -> bool:
        """Whether the message arriving now is the first for a while: nothing buffered, and none arrived for
        the flush interval. Such a message is handed over at once without asking the broker (a round trip, 0.3
        ms and more on an idle host): at light load that is every message, and a burst's first message goes
        alone while the rest batch as before."""
        now = time.monotonic()
        quiet = self._buffer.empty() and now - self._last_arrival >= self.flush_interval
        self._last_arrival = now
        return quiet

    def nothing_more_coming(self) -> bool:
        """Whether the messages buffered are all there is for now: none of those the broker last said were
        waiting is still to arrive, and the broker says none waits now (it is asked again only once those have
        arrived: about once a batch under a backlog). A broker that cannot say counts as more coming."""
        if self._buffer.empty():
            return False
        if self._expected > 1:
            self._expected -= 1
            return False
        waiting = self._backlog.waiting() if self._backlog is not None else None
        self._expected = 1 if waiting is None else waiting
        return waiting == 0

    def flush_now(self) -> None:
        """Hand over what is buffered; the flush timer stops unless messages with a countdown still wait."""
        self._do_flush()
        if self._pending.empty() and self._tref is not None:
            self._tref.cancel()
            self._tref = None

    def _do_flush(self) -> None:
        self._expected = 0  # the next message asks the broker again
        super()._do_flush()

    def flush(self, requests: list) -> Any:
        """Batches.flush, plus: when the pool loses the batch (its prefork child died, or hit the hard time
        limit), its messages go back to the queue at once instead of holding their prefetch slots for good;
        and the task events of its messages, from the worker's process."""
        self._send_received(requests)
        batch = [AgentRequest(request) for request in requests]

        def on_return(unsent: list[Event | None] | None) -> None:
            if unsent is None:  # the task raised (apply_batches_task logs it and returns None)
                for request in requests:
                    request.reject(requeue=True)  # redelivered now, not after the visibility timeout
                return
            for request, event in zip(requests, unsent, strict=True):
                if event is not None:
                    request.send_event(event[0], **event[1])
                request.acknowledge()

        # The threads pool starts a batch at once, and calls `accept_callback` from its own thread, where the
        # event would race this thread's on the worker's one event producer (kombu's are not thread-safe): a
        # `task-started` sent at the same moment as a `task-received` was lost. So with threads the batch's
        # start is announced here, as it is handed over; the prefork pool calls back in this thread.
        on_threads = isinstance(self._pool, ThreadTaskPool)
        if on_threads:
            self._send_started(requests)
        return self._pool.apply_async(
            apply_batches_task,
            (self, (batch,), 0, None),
            accept_callback=None if on_threads else lambda _pid, _time: self._send_started(requests),
            callback=on_return,
            error_callback=lambda _error: [request.reject(requeue=True) for request in requests],
        )

    def announce(
        self, requests: list[AgentRequest], settled: list[tuple[int, TaskOutcome]], *, traces: TaskTraces = NO_TRACES
    ) -> None:
        """Make each settled delivery known as soon as it is recorded (`settled` pairs an outcome with the
        position of its request): its message's Celery result, its metrics and log line, its task event, the
        end of its span in `traces`, for a task that failed for good a notification, and its message acknowledged
        (a retry's next message must have been published before). Never raises: the task rows are the record,
        and these only report them."""
        if traces.enabled:
            for at, outcome in settled:
                traces.at(at).end(outcome_attributes(outcome), error=outcome.error if outcome.status.is_error else None)
        results = [(requests[at], outcome, outcome.message_result()) for at, outcome in settled]
        try:
            store_results(self.app, [(request.id, result) for request, _, result in results if result is not None])
        except Exception as exc:
            logger.warning("could not store the results of %d message(s): %s", len(results), exc)
        try:
            for _, outcome, _ in results:
                record_task_run(
                    "agent_task", outcome.as_dict(), outcome.seconds or 0.0, is_error=outcome.status.is_error
                )
            self._send_outcome_events(results)
            notifier = services_of(self.app).notifier
            for _, outcome, _ in results:
                if outcome.status is Outcome.FAILED:
                    notifier.notify(dead_letter_event(outcome))
        except Exception:
            logger.exception("could not report the outcomes of %d message(s)", len(results))
        try:
            release_settled(requests[at] for at, _ in settled)
        except Exception:  # a message not acknowledged now is acknowledged with its batch
            logger.exception("could not acknowledge %d settled message(s) early", len(settled))

    def _send_outcome_events(self, results: list[tuple[AgentRequest, TaskOutcome, dict[str, Any] | None]]) -> None:
        """Send each outcome's task event, or (in a prefork pool child, which cannot) leave it to the worker."""
        in_worker = all(request.worker_request is not None for request, _, _ in results)
        if in_worker and not self._events_on():
            return
        sends: list[tuple[Request, Event]] = []
        for request, outcome, result in results:
            event = _outcome_event(outcome, result, maxsize=self.resultrepr_maxsize)
            if event is None:
                continue
            if request.worker_request is not None:
                sends.append((request.worker_request, event))
            else:
                request.unsent_event = event
        if sends:
            self._send_from_consumer_thread(sends)

    def _send_from_consumer_thread(self, sends: list[tuple[Request, Event]]) -> None:
        """Send these task events from the consumer's thread, on its event loop's next turn. Task events go out
        only from that thread: the dispatcher buffers them for its event loop and clears that buffer unlocked
        once published, so an event a pool thread added meanwhile was lost (and kombu's producers are not
        thread-safe either). kombu's `Hub.call_soon` is safe from any thread and wakes the loop; a worker
        without an event loop publishes each event at once, under the dispatcher's lock."""
        if self._hub is None:
            _send_events(sends)
        else:
            self._hub.call_soon(_send_events, sends)

    def _events_on(self) -> bool:
        """Whether task events are wanted now: the worker runs with -E, or a monitor such as Flower has
        switched them on (`enable_events`). Without them the dispatcher still sends the worker's heartbeats,
        filtering task events out one by one; this check spares building them."""
        eventer = self._eventer
        if eventer is None or not eventer.enabled or not self.send_events:
            return False
        return not eventer.groups or "task" in eventer.groups

    def _send_received(self, requests: list[Request]) -> None:
        if not self._events_on():
            return
        for request in requests:
            request.send_event(
                "task-received",
                name=request.name,
                args=request.argsrepr,
                kwargs=request.kwargsrepr,
                root_id=request.root_id,
                parent_id=request.parent_id,
                retries=request.request_dict.get("retries", 0),
                eta=request.eta and request.eta.isoformat(),
                expires=request.expires and request.expires.isoformat(),
            )

    def _send_started(self, requests: list[Request]) -> None:
        if self._events_on():
            for request in requests:
                request.send_event("task-started")


def _send_events(sends: Iterable[tuple[Request, Event]]) -> None:
    for request, (event_type, fields) in sends:
        request.send_event(event_type, **fields)


def release_settled(requests: Iterable[AgentRequest]) -> None:
    """Acknowledge these messages now, where their worker's request is at hand (the threads pool; a prefork
    child has none, and its batch is acknowledged as a whole when it returns). Their rows are the record, and
    a retry's next message has been published before: a message's prefetch slot is then free for the next as
    soon as its task is recorded, not held until the slowest task of its batch ends (a tool-using task's turns
    hold a batch for seconds). The pool's thread acknowledges as Celery's threads pool does at a task's end."""
    for request in requests:
        if request.worker_request is not None:
            request.worker_request.acknowledge()


def delivery_trace(request: Any) -> tuple[str, str | None]:
    """A delivery as its trace starts: its task id (as the message gives it) and the traceparent it carries."""
    headers = request.request_dict if isinstance(request.request_dict, dict) else {}
    return str(request.id), headers.get(TRACEPARENT)


def outcome_attributes(outcome: TaskOutcome) -> Attributes:
    """A delivery's outcome as its span's attributes: `agent_service.task.status`, `.attempt`, `.error`, ..."""
    return {f"agent_service.task.{name}": value for name, value in outcome.as_dict().items() if name != "task_id"}


def dead_letter_event(outcome: TaskOutcome) -> Notification:
    """The notification of a task that failed for good: its ids and attempts, never its error (a provider's
    message, or the reply that could not be used)."""
    summary = f"task {outcome.task_id} failed for good after {outcome.attempt} attempt(s)"
    summary += f" (agent {outcome.agent_id}); python cli.py status {outcome.task_id} shows why"
    labels = {"agent_id": outcome.agent_id or "-"}
    details = {"task_id": outcome.task_id, "attempts": outcome.attempt}
    return Notification(EventType.TASK_DEAD_LETTERED, summary, labels, details)


def _outcome_event(outcome: TaskOutcome, result: dict[str, Any] | None, *, maxsize: int) -> Event | None:
    """The event that reports a delivery's outcome: none for a delivery that did not run because another
    is running the task (that one reports it)."""
    if result is None:
        if outcome.status in (Outcome.RETRYING, Outcome.DEFERRED):
            return "task-retried", {
                "exception": f"{outcome.error}; next attempt in {outcome.retry_in} s",
                "traceback": "",
            }
        return None
    finished = outcome.finished.status if outcome.finished else None
    if finished is TaskStatus.COMPLETED:
        return "task-succeeded", {"result": saferepr(result, maxsize), "runtime": outcome.seconds}
    if finished is TaskStatus.CANCELLED:
        return "task-revoked", {"terminated": False, "signum": None, "expired": False}
    return "task-failed", {"exception": result.get("error", ""), "traceback": ""}
