"""Agent tasks: submitting them, running one attempt, and the thin Celery task shells.

`create_agent_task` and `execute_agent_task` are plain functions with explicit collaborators;
the Celery tasks only decode the id, call them, and turn the outcome into a retry or a result.
"""
from __future__ import annotations

import itertools
import random
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, wait
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

from celery import Celery, shared_task
from celery_batches import Batches, SimpleRequest
from celery_batches.trace import apply_batches_task
from kombu.exceptions import OperationalError as BrokerOperationalError
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

import lifecycle
from config import Settings
from database import session_scope
from errors import BrokerUnavailableError, PermanentError, RetryableError, TaskValidationError, classify
from lifecycle import Claim, Skip, utcnow
from liveness import current_owner, owner_is_gone
from llm_runners import LLMRunner
from monitoring import monitor_task_execution
from schemas import LLMCall, LLMReply, TaskInput, item_error, parse_task_input

PROCESS_TASK_NAME = "worker.process_agent_task"
HEALTH_TASK_NAME = "worker.health_check"
SWEEP_TASK_NAME = "worker.sweep_stale_tasks"

RECORD_ATTEMPTS = 5


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
    items = list(items)
    inputs = [_parse_item(item, index=index, count=len(items), settings=app.settings) for index, item in enumerate(items)]
    with session_scope(app.session_factory) as session:
        rows = lifecycle.insert_tasks(session, inputs)
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
    task_id: str, *, session_factory: sessionmaker[Session], settings: Settings, llm: LLMRunner
) -> TaskOutcome:
    """Run one attempt of one task; see `execute_agent_tasks`."""
    return execute_agent_tasks([task_id], session_factory=session_factory, settings=settings, llm=llm)[0]


def execute_agent_tasks(
    task_ids: list[Any], *, session_factory: sessionmaker[Session], settings: Settings, llm: LLMRunner
) -> list[TaskOutcome]:
    """Run one attempt of each task: claim them all in one transaction, call the LLM for each (concurrently,
    on `llm`) with no connection held, and record the outcomes as the replies arrive: one transaction
    per group that arrived within `batch_flush_seconds`, so a slow reply never holds back the others.

    Returns one outcome per id, in order. Raises: what the database raises (the caller classifies it);
    LLM errors are classified and recorded in the rows.
    """
    ids = [_valid_id(task_id) for task_id in task_ids]
    with session_scope(session_factory) as session:
        claimed = lifecycle.claim_tasks(session, [i for i in ids if isinstance(i, uuid.UUID)], settings=settings,
                                        now=utcnow(), owner=current_owner(), owner_is_gone=owner_is_gone)
    claims = iter(claimed)
    steps = [next(claims) if isinstance(task_id, uuid.UUID) else task_id for task_id in ids]
    runs = [step for step in steps if isinstance(step, Claim)]
    settled: dict[uuid.UUID, TaskOutcome] = {}
    record = partial(_record, session_factory=session_factory, settings=settings)
    try:
        for group in _replies_as_they_arrive(runs, settings=settings, llm=llm):
            settled.update(record(group))
    except Exception as exc:
        # Cut short (the soft time limit, say): the claims not yet settled are settled with that error, since
        # a row left running under a live owner would wait for the stale threshold.
        settled.update(record([(claim, exc) for claim in runs if claim.task_id not in settled]))
    return [settled[step.task_id] if isinstance(step, Claim) else _not_run(step) for step in steps]


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


class AgentTaskBatches(Batches):
    """Buffers agent-task messages and hands them over as one batch (celery-batches); the batch size
    and flush interval come from the app's settings."""

    @property
    def flush_every(self) -> int:
        return self.app.settings.batch_max_size

    @property
    def flush_interval(self) -> float:
        return self.app.settings.batch_flush_seconds

    def Strategy(self, task, app: Celery, consumer) -> Callable:  # noqa: N802 (Celery's name)
        """Batches.Strategy, built again after each broker reconnection: Celery then clears the event loop's
        timer, so the flush timer must be armed anew. Batches kept its dead timer entry and flushed only full
        batches, so the few messages left in the buffer (holding every prefetch slot) were never run."""
        self._tref = None
        return super().Strategy(task, app, consumer)

    def flush(self, requests: list) -> Any:
        """Batches.flush, plus: when the pool loses the batch (its prefork child died, or hit the hard time
        limit) its late-acked messages go back to the queue at once. Batches.flush only acks on success, so a
        lost batch's messages stayed unacked, each holding a prefetch slot for good: after a few losses the
        worker consumed nothing more, not even the sweeper's messages. (This task is always acks_late.)"""
        batch = ([SimpleRequest.from_request(request) for request in requests],)
        return self._pool.apply_async(
            apply_batches_task, (self, batch, 0, None),
            callback=lambda _result: [request.acknowledge() for request in requests],
            error_callback=lambda _error: [request.reject(requeue=True) for request in requests],
        )


@shared_task(bind=True, base=AgentTaskBatches, name=PROCESS_TASK_NAME, acks_late=True)
@monitor_task_execution("agent_task")
def process_agent_task(self, requests: list) -> list[dict[str, Any]]:
    """Process a batch of tasks using their AI agents; each message carries one task id."""
    app = self.app
    task_ids = [_task_id_argument(request) for request in requests]
    try:
        outcomes = execute_agent_tasks(task_ids, session_factory=app.session_factory, settings=app.settings,
                                       llm=app.llm_runner)
    except Exception as exc:
        return [_retry_later(app, request, classify(exc)) for request in requests]
    for outcome in outcomes:
        if outcome.retry_in is not None:
            _publish(app, [uuid.UUID(outcome.task_id)], countdown=outcome.retry_in)
    return [outcome.as_dict() for outcome in outcomes]


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


def _retry_later(app: Celery, request, error: RetryableError | PermanentError) -> dict[str, Any]:
    """The whole attempt failed before any row changed (the database is down): send the message again later.

    Celery's own retry is per message, and a batch has many; re-publishing with the retry count is the same thing.
    """
    task_id, retries = _task_id_argument(request), request.request_dict.get("retries") or 0
    if isinstance(error, PermanentError) or retries >= app.settings.db_unavailable_max_retries:
        # The row, if any, keeps its status; the sweeper re-queues it once it looks stuck.
        return TaskOutcome(str(task_id), "error", error=str(error)).as_dict()
    delay = backoff_delay(retries + 1, settings=app.settings, requested=error.delay)
    app.send_task(PROCESS_TASK_NAME, args=[task_id], task_id=request.id, countdown=delay, retries=retries + 1,
                  ignore_result=True)
    return TaskOutcome(str(task_id), "retrying", error=str(error), retry_in=delay).as_dict()


def _task_id_argument(request) -> Any:
    """The one positional argument a process_agent_task message must carry (anything else is rejected later)."""
    return request.args[0] if len(request.args) == 1 and not request.kwargs else request.args


def _replies_as_they_arrive(
    claims: list[Claim], *, settings: Settings, llm: LLMRunner
) -> Iterator[list[tuple[Claim, LLMReply | Exception]]]:
    """Each claim with its LLM reply (or the exception it raised), in groups: the first reply to arrive and
    every other one that arrives within the next `batch_flush_seconds`. Claims that must not run are
    answered first, without a call."""
    refusals = [(claim, _refusal(claim, settings=settings)) for claim in claims]
    if refused := [(claim, refusal) for claim, refusal in refusals if refusal]:
        yield refused
    runs = [claim for claim, refusal in refusals if not refusal]
    futures = llm.submit([LLMCall(claim.agent, claim.title, claim.description) for claim in runs])
    pending = dict(zip(futures, runs))
    while pending:
        first, _ = wait(pending, return_when=FIRST_COMPLETED)
        more, _ = wait(pending.keys() - first, timeout=settings.batch_flush_seconds)
        yield [(pending.pop(future), future.exception() or future.result()) for future in first | more]


def _record(
    group: list[tuple[Claim, LLMReply | Exception]], *, session_factory: sessionmaker[Session], settings: Settings
) -> dict[uuid.UUID, TaskOutcome]:
    """Record a group of outcomes in one transaction. The replies are paid for, so a database that is
    briefly unreachable (a restart, a failover) is waited for here rather than by a new attempt."""
    for attempt in itertools.count(1):
        try:
            with session_scope(session_factory) as session:
                return {claim.task_id: _settle(session, claim, reply, settings=settings) for claim, reply in group}
        except Exception as exc:
            if attempt == RECORD_ATTEMPTS or not isinstance(classify(exc), RetryableError):
                raise
            time.sleep(backoff_delay(attempt, settings=settings))


def _refusal(claim: Claim, *, settings: Settings) -> PermanentError | None:
    if claim.agent is None:
        return PermanentError(f"bad agent configuration: {claim.agent_error}")
    if claim.attempt > settings.task_max_attempts:
        # Only a run whose worker died gets here: the row was claimed but never settled.
        return PermanentError(f"gave up after {claim.attempt - 1} attempts: the worker running it was lost each time")
    return None


def _settle(session: Session, claim: Claim, reply: LLMReply | Exception, *, settings: Settings) -> TaskOutcome:
    if isinstance(reply, Exception):
        return _record_error(session, claim, classify(reply), settings=settings)
    done = lifecycle.record_success(session, claim, result=reply.text[: settings.max_result_length],
                                    usage=reply.usage, now=utcnow())
    if not done:
        return _outcome(claim, "superseded")
    usage = reply.usage
    tokens = {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens} if usage else {}
    return _outcome(claim, "completed", **tokens)


def _record_error(
    session: Session, claim: Claim, error: RetryableError | PermanentError, *, settings: Settings
) -> TaskOutcome:
    retry = isinstance(error, RetryableError) and claim.attempt < settings.task_max_attempts
    exhausted = isinstance(error, RetryableError) and not retry
    message = f"gave up after {claim.attempt} attempts: {error}" if exhausted else str(error)
    record = lifecycle.record_retry if retry else lifecycle.record_failure
    if not record(session, claim, error=message, now=utcnow()):
        return _outcome(claim, "superseded", error=message)
    if retry:
        delay = backoff_delay(claim.attempt, settings=settings, requested=error.delay)
        return _outcome(claim, "retrying", error=message, retry_in=delay)
    return _outcome(claim, "failed", error=message)


def _valid_id(task_id: Any) -> uuid.UUID | TaskValidationError:
    try:
        return parse_task_id(task_id)
    except TaskValidationError as exc:
        return exc


def _not_run(step: Skip | TaskValidationError) -> TaskOutcome:
    if isinstance(step, Skip):
        return TaskOutcome(str(step.task_id), "skipped", error=step.reason)
    return TaskOutcome("invalid", "rejected", error=str(step))


def _outcome(claim: Claim, status: str, **details) -> TaskOutcome:
    agent_id = str(claim.agent.id) if claim.agent else None
    return TaskOutcome(str(claim.task_id), status, attempt=claim.attempt, agent_id=agent_id, **details)


def _parse_item(item: Any, *, index: int, count: int, settings: Settings) -> TaskInput:
    try:
        return parse_task_input(item, settings=settings)
    except TaskValidationError as exc:
        raise item_error(str(exc), index=index, count=count) from None


def _enqueue(app: Celery, task_ids: list[uuid.UUID]) -> None:
    """Publish one message per task, then mark the still-pending ones queued."""
    if not task_ids:
        return
    _publish(app, task_ids)
    with session_scope(app.session_factory) as session:
        lifecycle.mark_queued(session, task_ids, now=utcnow())


def _publish(app: Celery, task_ids: list[uuid.UUID], *, countdown: float | None = None) -> None:
    try:
        with app.producer_or_acquire() as producer:
            for task_id in task_ids:
                # ignore_result: the outcome lives in the task row, so neither side touches the result backend.
                app.send_task(PROCESS_TASK_NAME, args=[str(task_id)], task_id=str(task_id), producer=producer,
                              ignore_result=True, countdown=countdown)
    except (BrokerOperationalError, ConnectionError, OSError) as exc:
        raise BrokerUnavailableError(
            f"{len(task_ids)} task(s) saved as pending but not queued (broker unreachable: {exc}); "
            "the sweeper re-queues them"
        ) from exc


def _default_app() -> Celery:
    import worker  # late: worker imports this module to register the tasks on its app

    return worker.app
