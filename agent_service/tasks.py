"""The Celery task shells, and `create_agent_task`, the application's way to submit work.

Each shell decodes its message, calls a plain function (`execution`, `submission`) with the app's
services, and turns the outcome into a retry or a result; nothing else happens here.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Iterator
from functools import partial
from typing import Any

from celery import Celery, Task, shared_task

from agent_service import worker
from agent_service.consumer.batching import AgentRequest, AgentTaskBatches, delivery_trace
from agent_service.consumer.readiness import unreachable_event
from agent_service.errors import PermanentError, RetryableError, classify, database_unreachable
from agent_service.execution.maintenance import (
    check_health,
    fail_dead_lettered_tasks,
    fail_expired_approvals,
    requeue_stuck_tasks,
    requeue_tasks_of_lost_workers,
    restore_messages_of_lost_workers,
    send_lost_group_callbacks,
)
from agent_service.execution.outcomes import Outcome, TaskOutcome
from agent_service.execution.pipeline import execute_agent_tasks
from agent_service.execution.retry import backoff_delay
from agent_service.ids import parse_task_id
from agent_service.live import follow
from agent_service.live.events import LiveEvent
from agent_service.messaging.groups import send_callbacks_quietly
from agent_service.messaging.publisher import publish_tasks
from agent_service.messaging.routing import (
    AGENT_QUEUE,
    HEALTH_TASK_NAME,
    PROCESS_TASK_NAME,
    SWEEP_TASK_NAME,
    broker_countdown,
)
from agent_service.monitoring import monitor_task_execution
from agent_service.notifications import Event, EventType
from agent_service.services import Services, services_of
from agent_service.store.groups import GroupProgress
from agent_service.submission import approvals, groups, submit
from agent_service.submission.follow import FollowedTask
from agent_service.tracing import TaskTrace


def create_agent_task(task_data: dict[str, Any], *, app: Celery | None = None) -> str:
    """Validate, store and queue one task on `app` (default: the configured `worker.app`); returns its id.

    A repeated idempotency key returns the first task's id without queueing again.
    Raises: TaskValidationError (nothing written), BrokerUnavailableError (row kept as pending).
    """
    return create_agent_tasks([task_data], app=app)[0]


def create_agent_tasks(
    items: Iterable[dict[str, Any]],
    *,
    app: Celery | None = None,
    group: str | None = None,
    on_complete: str | None = None,
) -> list[str]:
    """Validate, store (one transaction) and queue many tasks; returns their ids in order.

    With `group`, the tasks join that group of their user's (created if new); `on_complete` names a Celery
    task sent once, with `(group_id, outcomes)`, when every task of the group has ended (docs/guides/groups.md).

    Raises: TaskValidationError naming the first bad item, or the group's problem (nothing written),
    BrokerUnavailableError.
    """
    app = app or worker.app
    return submit.create_agent_tasks(items, app=app, services=services_of(app), group=group, on_complete=on_complete)


def group_progress(group_id: str, *, app: Celery | None = None) -> GroupProgress:
    """Where the group's tasks are: counts by status, tokens, cost, when it ended, its callback.
    Raises: TaskNotFoundError for an unknown group."""
    return groups.group_progress(group_id, services=services_of(app or worker.app))


def follow_agent_task(
    task_id: str, *, last_event_id: str = "0", timeout: float | None = None, app: Celery | None = None
) -> Iterator[LiveEvent]:
    """The task's events (`live.follow.follow_task`) until its `ended` event: first what already happened (its
    recorded steps, as the events they made, and its end if it has ended), then each event as it comes. Each
    event's `sse()` is a server-sent event whose id a reconnecting client sends back as Last-Event-ID: pass it
    as `last_event_id`.

    Raises: TaskValidationError (not a UUID), TaskNotFoundError, ConfigurationError without REDIS_URL.
    """
    services = services_of(app or worker.app)
    task_uuid = parse_task_id(task_id)
    record = FollowedTask(task_uuid, services=services)  # an unknown task raises here, before any event is awaited
    return follow.follow_task(
        task_uuid, redis=services.redis, last_event_id=last_event_id, timeout=timeout, record=record
    )


def approve_task(task_id: str, note: str | None = None, *, app: Celery | None = None) -> list[str]:
    """Approve the tool calls a task awaits approval for, and queue it on `app` (default: `worker.app`);
    returns the tools approved. Raises: TaskValidationError, TaskNotFoundError, ApprovalError."""
    app = app or worker.app
    return approvals.approve_task(task_id, app=app, services=services_of(app), note=note)


def reject_task(task_id: str, note: str | None = None, *, app: Celery | None = None) -> list[str]:
    """Reject them: never made, their result for the model is "rejected by a reviewer: <note>"; the task is
    queued and goes on. Raises: as `approve_task`."""
    app = app or worker.app
    return approvals.reject_task(task_id, app=app, services=services_of(app), note=note)


@shared_task(bind=True, base=AgentTaskBatches, name=PROCESS_TASK_NAME, acks_late=True)
def process_agent_task(self: AgentTaskBatches, requests: list[AgentRequest]) -> list:
    """Process a batch of tasks using their AI agents; each message carries one task id, and each message's
    outcome is made known (result, metrics, log line, task event) as soon as it is recorded.

    Returns the task events a prefork pool child could not send itself (see `AgentTaskBatches.flush`)."""
    services = services_of(self.app)
    started = time.monotonic()
    settled: dict[int, TaskOutcome] = {}
    traces = services.tracing.deliveries([delivery_trace(request) for request in requests], queue=AGENT_QUEUE)

    def on_settled(group: list[tuple[int, TaskOutcome]]) -> None:
        settled.update(group)
        # A deferred or retried task's next message leaves now, before this one is acknowledged, not when the
        # batch's last task ends (a call waiting for its rate-limit slot can hold a batch for half a minute).
        for _, outcome in group:
            if outcome.retry_in is not None:
                publish_tasks(self.app, [uuid.UUID(outcome.task_id)], countdown=outcome.retry_in, traces=traces)
        self.announce(requests, group, traces=traces)
        if services.live:
            services.live.publish_many(update for _, outcome in group if (update := outcome.live_update()))

    try:
        on_groups_ended = partial(send_callbacks_quietly, self.app, services.session_factory, services.settings)
        context = services.run_context(on_settled=on_settled, on_groups_ended=on_groups_ended, traces=traces)
        execute_agent_tasks([_task_id_argument(request) for request in requests], context)
    except Exception as exc:
        error = classify(exc)
        if database_unreachable(exc):
            services.notifier.notify(unreachable_event(f"{error}; this worker's tasks are sent again later"))
        unsettled = [at for at in range(len(requests)) if at not in settled]
        retrying = [
            (at, _retry_later(self.app, requests[at], error, started=started, trace=traces.at(at))) for at in unsettled
        ]
        self.announce(requests, retrying, traces=traces)
    return [request.unsent_event for request in requests]


@shared_task(bind=True, name=SWEEP_TASK_NAME)
@monitor_task_execution("sweep_stale_tasks", ok=Outcome.COMPLETED, error=Outcome.ERROR)
def sweep_stale_tasks(self: Task) -> dict[str, Any]:
    """Fail the tasks whose message RabbitMQ dead-lettered, re-queue the running tasks of workers whose liveness
    lease expired (on Redis, handing back the messages they had received too) and rows stuck without a live
    message (broker down at submit, lost with Redis, dead worker past the stale threshold), fail the tasks whose
    pending approval expired (both failures notified as dead letters), and send the callbacks of groups whose
    sender was lost."""
    services = services_of(self.app)
    collaborators = {"app": self.app, "session_factory": services.session_factory, "settings": services.settings}
    dead_lettered = fail_dead_lettered_tasks(**collaborators)
    _notify_failed_for_good(
        services, dead_lettered, cause="delivery limit", why="the broker dead-lettered their message"
    )
    expired = fail_expired_approvals(**collaborators)
    _notify_failed_for_good(services, expired, cause="approval expired", why="a tool call's approval expired")
    taken_over = requeue_tasks_of_lost_workers(**collaborators)
    handed_back = restore_messages_of_lost_workers(**collaborators)
    requeued = requeue_stuck_tasks(**collaborators)
    return {
        "status": "ok",
        "lost_workers_tasks": taken_over,
        "lost_workers_messages": handed_back,
        "requeued": requeued,
        "expired": expired,
        "dead_lettered": dead_lettered,
        "callbacks": send_lost_group_callbacks(**collaborators),
    }


def _notify_failed_for_good(services: Services, count: int, *, cause: str, why: str) -> None:
    """Notify `count` tasks the sweeper failed for good (none: nothing), as dead letters."""
    if count:
        summary = f"{count} task(s) failed for good: {why}; python cli.py failed lists them"
        services.notifier.notify(Event(EventType.TASK_DEAD_LETTERED, summary, {"cause": cause}, {"tasks": count}))


@shared_task(bind=True, name=HEALTH_TASK_NAME)
@monitor_task_execution("health_check", ok=Outcome.COMPLETED, error=Outcome.ERROR)
def health_check(self: Task) -> dict[str, str]:
    """Report that this worker and its database are reachable."""
    return check_health(session_factory=services_of(self.app).session_factory)


def _retry_later(
    app: Celery, request: AgentRequest, error: RetryableError | PermanentError, *, started: float, trace: TaskTrace
) -> TaskOutcome:
    """The whole attempt failed before any row changed (the database is down): send the message again later,
    with its retry count; Celery's own per-message retry does not fit a batch."""
    task_id, retries = _task_id_argument(request), request.request_dict.get("retries") or 0
    seconds = time.monotonic() - started
    if isinstance(error, PermanentError) or retries >= services_of(app).settings.db_unavailable_max_retries:
        # The row, if any, keeps its status; the sweeper re-queues it once it looks stuck.
        return TaskOutcome(str(task_id), Outcome.ERROR, error=str(error), seconds=seconds)
    delay = backoff_delay(retries + 1, settings=services_of(app).settings, requested=error.delay)
    with trace.publishing(queue=AGENT_QUEUE, message_id=request.id) as headers:
        app.send_task(
            PROCESS_TASK_NAME,
            args=[task_id],
            task_id=request.id,
            countdown=broker_countdown(app, delay),
            retries=retries + 1,
            ignore_result=True,
            headers=headers,
        )
    return TaskOutcome(str(task_id), Outcome.RETRYING, error=str(error), retry_in=delay, seconds=seconds)


def _task_id_argument(request: Any) -> Any:
    """The one positional argument a process_agent_task message must carry (anything else is rejected later)."""
    return request.args[0] if len(request.args) == 1 and not request.kwargs else request.args
