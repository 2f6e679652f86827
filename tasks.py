"""Agent tasks: submitting them, running one attempt, and the thin Celery task shells.

`create_agent_task` and `execute_agent_task` are plain functions with explicit collaborators;
the Celery tasks only decode the id, call them, and turn the outcome into a retry or a result.
"""
from __future__ import annotations

import random
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

from celery import Celery, shared_task
from kombu.exceptions import OperationalError as BrokerOperationalError
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

import lifecycle
from config import Settings
from database import session_scope
from errors import BrokerUnavailableError, PermanentError, RetryableError, TaskValidationError, classify
from lifecycle import Claim, Skip, utcnow
from liveness import current_owner, owner_is_gone
from llm import LLMReply, run_agent
from monitoring import monitor_task_execution
from schemas import parse_task_input

PROCESS_TASK_NAME = "worker.process_agent_task"
HEALTH_TASK_NAME = "worker.health_check"
SWEEP_TASK_NAME = "worker.sweep_stale_tasks"

RunLLM = Callable[..., LLMReply]


@dataclass(frozen=True)
class TaskOutcome:
    """What one delivery of a task did; `retry_in` is set when another attempt is due."""

    task_id: str
    status: str
    attempt: int | None = None
    agent_id: str | None = None
    error: str | None = None
    retry_in: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {key: value for key, value in asdict(self).items() if value is not None}


def create_agent_task(task_data: dict[str, Any], *, app: Celery | None = None) -> str:
    """Validate, store and queue one task; returns its id.

    A repeated idempotency key returns the first task's id without queueing again.
    Raises: TaskValidationError (nothing written), BrokerUnavailableError (row kept as pending).
    """
    return create_agent_tasks([task_data], app=app)[0]


def create_agent_tasks(items: Iterable[dict[str, Any]], *, app: Celery | None = None) -> list[str]:
    """Validate, store (one transaction) and queue many tasks; returns their ids in order.

    Raises: TaskValidationError naming the first bad item (nothing written), BrokerUnavailableError.
    """
    app = app or _default_app()
    inputs = [_parse_item(index, item, app.settings) for index, item in enumerate(items)]
    with session_scope(app.session_factory) as session:
        rows = [lifecycle.insert_task(session, data) for data in inputs]
        session.flush()
    _enqueue(app, [task.id for task, created in rows if created])
    return [str(task.id) for task, _ in rows]


def replay_failed_tasks(task_ids: list[str] | None, *, app: Celery | None = None) -> list[str]:
    """Queue failed tasks again with a fresh attempt budget (None: all of them); returns the ids replayed."""
    app = app or _default_app()
    wanted = None if task_ids is None else [parse_task_id(task_id) for task_id in task_ids]
    with session_scope(app.session_factory) as session:
        replayed = lifecycle.reset_for_replay(session, wanted, now=utcnow())
    _enqueue(app, replayed)
    return [str(task_id) for task_id in replayed]


def requeue_stuck_tasks(*, app: Celery) -> int:
    """Publish a message again for every row that may have lost its own; returns how many."""
    with session_scope(app.session_factory) as session:
        stuck = lifecycle.tasks_to_requeue(session, settings=app.settings, now=utcnow(), limit=app.settings.sweep_batch_size)
    _enqueue(app, stuck)
    return len(stuck)


def cancel_task(task_id: str, *, app: Celery | None = None) -> str:
    """Cancel a queued or running task; returns the status it ends with. Raises: TaskNotFoundError."""
    app = app or _default_app()
    with session_scope(app.session_factory) as session:
        return lifecycle.cancel_task(session, parse_task_id(task_id), now=utcnow()).value


def execute_agent_task(
    task_id: str, *, session_factory: sessionmaker[Session], settings: Settings, run_llm: RunLLM = run_agent
) -> TaskOutcome:
    """Run one attempt of a task: claim it, call the LLM with no connection held, record the outcome.

    Raises: what the database raises (the caller classifies it); LLM errors are recorded in the row.
    """
    with session_scope(session_factory) as session:
        claim = lifecycle.claim_task(session, parse_task_id(task_id), settings=settings, now=utcnow(),
                                     owner=current_owner(), owner_is_gone=owner_is_gone)
    if isinstance(claim, Skip):
        return TaskOutcome(task_id, "skipped", error=claim.reason)
    try:
        reply = _run_claim(claim, settings=settings, run_llm=run_llm)
    except Exception as exc:  # every LLM-side failure is classified and recorded, never lost
        return _record_error(claim, classify(exc), session_factory=session_factory, settings=settings)
    with session_scope(session_factory) as session:
        done = lifecycle.record_success(
            session, claim, result=reply.text[: settings.max_result_length], usage=reply.usage, now=utcnow()
        )
    if not done:
        return _outcome(claim, "superseded")
    usage = reply.usage
    tokens = {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens} if usage else {}
    return _outcome(claim, "completed", **tokens)


def backoff_delay(attempt: int, *, settings: Settings, requested: float | None = None) -> float:
    """Seconds before attempt `attempt + 1`: exponential with jitter, never sooner than the peer asked."""
    exponential = min(settings.retry_backoff_max_seconds, settings.retry_backoff_base_seconds * 2 ** (attempt - 1))
    jittered = exponential * random.uniform(1 - settings.retry_jitter_ratio, 1 + settings.retry_jitter_ratio)
    if requested is None:
        return round(jittered, 3)
    # Retry-After is a floor; a little jitter on top keeps a burst of 429s from retrying in lockstep.
    return round(requested + random.uniform(0, settings.retry_jitter_ratio * max(requested, 1.0)), 3)


def check_health(*, session_factory: sessionmaker[Session]) -> dict[str, str]:
    """Prove the worker can reach its database."""
    with session_scope(session_factory) as session:
        session.execute(text("SELECT 1"))
    return {"status": "ok", "database": "ok", "checked_at": utcnow().isoformat()}


def parse_task_id(task_id: Any) -> uuid.UUID:
    """Raises: TaskValidationError when `task_id` is not a UUID (or its string)."""
    if isinstance(task_id, uuid.UUID):
        return task_id
    try:
        return uuid.UUID(task_id)
    except (TypeError, ValueError, AttributeError):
        raise TaskValidationError(f"task id must be a UUID string, got {task_id!r:.80}") from None


@shared_task(bind=True, name=PROCESS_TASK_NAME, acks_late=True, reject_on_worker_lost=True, max_retries=None)
@monitor_task_execution("agent_task")
def process_agent_task(self, task_id: str) -> dict[str, Any]:
    """Process a task using an AI agent."""
    try:
        outcome = execute_agent_task(task_id, session_factory=self.app.session_factory, settings=self.app.settings)
    except Exception as exc:
        raise _retry_or_fail(self, classify(exc)) from exc
    if outcome.retry_in is not None:
        raise self.retry(countdown=outcome.retry_in)
    return outcome.as_dict()


@shared_task(bind=True, name=SWEEP_TASK_NAME)
@monitor_task_execution("sweep_stale_tasks")
def sweep_stale_tasks(self) -> dict[str, Any]:
    """Re-queue rows stuck without a live message (broker down at submit, lost with Redis, dead worker)."""
    return {"status": "ok", "requeued": requeue_stuck_tasks(app=self.app)}


@shared_task(bind=True, name=HEALTH_TASK_NAME)
@monitor_task_execution("health_check")
def health_check(self) -> dict[str, str]:
    """Report that this worker and its database are reachable."""
    return check_health(session_factory=self.app.session_factory)


def _retry_or_fail(task, error: RetryableError | PermanentError) -> Exception:
    settings: Settings = task.app.settings
    if isinstance(error, RetryableError) and task.request.retries < settings.db_unavailable_max_retries:
        delay = backoff_delay(task.request.retries + 1, settings=settings, requested=error.delay)
        return task.retry(exc=error, countdown=delay, throw=False)
    return error


def _run_claim(claim: Claim, *, settings: Settings, run_llm: RunLLM) -> LLMReply:
    if claim.agent is None:
        raise PermanentError(f"bad agent configuration: {claim.agent_error}")
    if claim.attempt > settings.task_max_attempts:
        # Only a run whose worker died gets here: the row was claimed but never settled.
        raise PermanentError(f"gave up after {claim.attempt - 1} attempts: the worker running it was lost each time")
    return run_llm(claim.agent, title=claim.title, description=claim.description, settings=settings)


def _record_error(
    claim: Claim, error: RetryableError | PermanentError, *, session_factory: sessionmaker[Session], settings: Settings
) -> TaskOutcome:
    retry = isinstance(error, RetryableError) and claim.attempt < settings.task_max_attempts
    exhausted = isinstance(error, RetryableError) and not retry
    message = f"gave up after {claim.attempt} attempts: {error}" if exhausted else str(error)
    with session_scope(session_factory) as session:
        record = lifecycle.record_retry if retry else lifecycle.record_failure
        owned = record(session, claim, error=message, now=utcnow())
    if not owned:
        return _outcome(claim, "superseded", error=message)
    if retry:
        return _outcome(claim, "retrying", error=message, retry_in=backoff_delay(claim.attempt, settings=settings, requested=error.delay))
    return _outcome(claim, "failed", error=message)


def _outcome(claim: Claim, status: str, **details) -> TaskOutcome:
    agent_id = str(claim.agent.id) if claim.agent else None
    return TaskOutcome(str(claim.task_id), status, attempt=claim.attempt, agent_id=agent_id, **details)


def _parse_item(index: int, item: Any, settings: Settings):
    try:
        return parse_task_input(item, settings=settings)
    except TaskValidationError as exc:
        raise TaskValidationError(f"item {index}: {exc}" if index else str(exc)) from None


def _enqueue(app: Celery, task_ids: list[uuid.UUID]) -> None:
    """Publish one message per task, then mark the still-pending ones queued."""
    if not task_ids:
        return
    _publish(app, task_ids)
    with session_scope(app.session_factory) as session:
        lifecycle.mark_queued(session, task_ids, now=utcnow())


def _publish(app: Celery, task_ids: list[uuid.UUID]) -> None:
    try:
        with app.producer_or_acquire() as producer:
            for task_id in task_ids:
                # ignore_result: the outcome lives in the task row, so neither side touches the result backend.
                app.send_task(PROCESS_TASK_NAME, args=[str(task_id)], task_id=str(task_id), producer=producer,
                              ignore_result=True)
    except (BrokerOperationalError, ConnectionError, OSError) as exc:
        raise BrokerUnavailableError(
            f"{len(task_ids)} task(s) saved as pending but not queued (broker unreachable: {exc}); "
            "the sweeper re-queues them"
        ) from exc


def _default_app() -> Celery:
    import worker  # late: worker imports this module to register the tasks on its app

    return worker.app
