"""How a claim ends, and recording it: a group of settlements in one transaction, each becoming the task's
new state (completed, failed, retrying, deferred, paused) and the `TaskOutcome` the caller announces."""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from agent_service.admission.base import Decision
from agent_service.config import Settings
from agent_service.database import session_scope
from agent_service.errors import PermanentError, RetryableError, TaskValidationError, classify
from agent_service.execution.outcomes import Outcome, TaskOutcome
from agent_service.execution.plans import Paused
from agent_service.execution.retry import backoff_delay
from agent_service.kinds.base import KindResult
from agent_service.llm.messages import Usage
from agent_service.models import TaskStatus
from agent_service.monitoring import count_llm_usage
from agent_service.store import lifecycle
from agent_service.store.groups import note_tasks_ended
from agent_service.store.lifecycle import Charge, Claim, Finished, Skip

RECORD_ATTEMPTS = 5
# The outcomes that end a task (a superseded claim's task was ended by whoever superseded it).
_ENDING = (Outcome.COMPLETED, Outcome.FAILED)


@dataclass(frozen=True)
class Answer:
    """A run's result, with the model that gave it and what this attempt's calls cost (unrecorded so far)."""

    result: KindResult
    model: str
    usage: Usage | None
    charge: Charge | None


@dataclass(frozen=True)
class Unusable:
    """A reply that was paid for but cannot be the task's result (filtered, or refused by its kind)."""

    error: RetryableError | PermanentError
    charge: Charge | None
    text: str = ""  # the reply


# What a claim ends with: an answer, a paid reply it cannot use, a deferral by admission, a pause for a
# reviewer (durable runs), or the exception that stopped it.
Settlement = Answer | Unusable | Decision | Paused | BaseException


def count_charges(settlements: Iterable[Settlement]) -> None:
    """Count what these settlements charge in the LLM usage metrics."""
    for how in settlements:
        if isinstance(how, Answer | Unusable) and how.charge is not None:
            count_llm_usage(how.charge.model, tokens=how.charge.token_counts(), cost_usd=how.charge.cost_usd)


def record(
    group: list[tuple[Claim, Settlement]],
    *,
    session_factory: sessionmaker[Session],
    settings: Settings,
    clock: Callable[[], datetime],
    started: float,
) -> tuple[dict[uuid.UUID, TaskOutcome], list[str]]:
    """Record a group of outcomes in one transaction, each timed from `started` (the claim) to the commit,
    with the groups (of tasks) that this ends; returns the outcomes and the ids of those groups. The replies
    are paid for, so a database that is briefly unreachable (a restart, a failover) is waited for here rather
    than by a new attempt."""
    for attempt in itertools.count(1):
        try:
            with session_scope(session_factory) as session:
                now = clock()
                completed = _complete(session, group, settings=settings, now=now)
                outcomes = {
                    claim.task_id: _settle(session, claim, how, settings, now, completed=completed.get(claim.task_id))
                    for claim, how in group
                }
                # Only grouped tasks: an ungrouped one costs no query here.
                ended = [
                    claim.task_id for claim, _ in group if claim.group_id and outcomes[claim.task_id].status in _ENDING
                ]
                groups_ended = note_tasks_ended(session, ended, now=now)
            seconds = time.monotonic() - started
            return {task_id: replace(outcome, seconds=seconds) for task_id, outcome in outcomes.items()}, groups_ended
        except Exception as exc:
            if attempt == RECORD_ATTEMPTS or not isinstance(classify(exc), RetryableError):
                raise
            time.sleep(backoff_delay(attempt, settings=settings))
    raise AssertionError("unreachable")


def not_run(step: Skip | TaskValidationError, started: float) -> TaskOutcome:
    """The outcome of a delivery that is not to run: an invalid id, an unknown task, or one to skip."""
    seconds = time.monotonic() - started
    if isinstance(step, TaskValidationError):
        return TaskOutcome("invalid", Outcome.REJECTED, error=str(step), seconds=seconds)
    if step.status is None:
        return TaskOutcome(
            str(step.task_id), Outcome.REJECTED, error=f"task not found: {step.task_id}", seconds=seconds
        )
    return TaskOutcome(str(step.task_id), Outcome.SKIPPED, error=step.reason, finished=step.finished, seconds=seconds)


def _complete(
    session: Session, group: list[tuple[Claim, Settlement]], *, settings: Settings, now: datetime
) -> dict[uuid.UUID, bool]:
    """The group's answers recorded as their tasks' results, together; whether each claim still owned its task."""
    answers = [
        lifecycle.Success(
            claim,
            result=how.result.text[: settings.max_result_length],
            model=how.model,
            charge=how.charge,
            result_data=how.result.data,
        )
        for claim, how in group
        if isinstance(how, Answer)
    ]
    owned = lifecycle.record_successes(session, answers, now=now) if answers else []
    return {answer.claim.task_id: kept for answer, kept in zip(answers, owned, strict=True)}


def _settle(
    session: Session, claim: Claim, how: Settlement, settings: Settings, now: datetime, *, completed: bool | None
) -> TaskOutcome:
    """`how` recorded as the claim's end (an answer's already was: `completed` says whether it still owned its
    task), and the outcome to announce."""
    if isinstance(how, Paused):  # recorded with its steps: the task awaits a reviewer, its claim given back
        return _outcome(claim, Outcome.PAUSED, error=how.reason)
    if isinstance(how, Decision):
        if not lifecycle.record_deferral(session, claim, reason=how.reason, now=now):
            return _superseded(session, claim)
        return _outcome(claim, Outcome.DEFERRED, error=how.reason, retry_in=how.retry_in)
    if isinstance(how, BaseException):
        return _record_error(session, claim, classify(how), settings=settings, now=now)
    if isinstance(how, Unusable):
        return _record_error(session, claim, how.error, settings=settings, now=now, charge=how.charge)
    if not completed:
        return _superseded(session, claim)
    result = how.result.text[: settings.max_result_length]
    usage = how.usage
    tokens = {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens} if usage else {}
    finished = Finished(TaskStatus.COMPLETED, result=result, usage=usage)
    return _outcome(claim, Outcome.COMPLETED, finished=finished, **tokens)


def _record_error(
    session: Session,
    claim: Claim,
    error: RetryableError | PermanentError,
    *,
    settings: Settings,
    now: datetime,
    charge: Charge | None = None,
) -> TaskOutcome:
    retry = isinstance(error, RetryableError) and claim.attempt < settings.task_max_attempts
    exhausted = isinstance(error, RetryableError) and not retry
    message = f"gave up after {claim.attempt} attempts: {error}" if exhausted else str(error)
    write = lifecycle.record_retry if retry else lifecycle.record_failure
    if not write(session, claim, error=message, charge=charge, now=now):
        return _superseded(session, claim, error=message)
    if retry:
        requested = error.delay if isinstance(error, RetryableError) else None
        delay = backoff_delay(claim.attempt, settings=settings, requested=requested)
        return _outcome(claim, Outcome.RETRYING, error=message, retry_in=delay)
    return _outcome(claim, Outcome.FAILED, error=message, finished=Finished(TaskStatus.FAILED, error=message))


def _superseded(session: Session, claim: Claim, **details: Any) -> TaskOutcome:
    """The claim was lost: the task was cancelled, or another delivery took it over (and settles it)."""
    return _outcome(claim, Outcome.SUPERSEDED, finished=lifecycle.finished_state(session, claim.task_id), **details)


def _outcome(claim: Claim, status: Outcome, **details: Any) -> TaskOutcome:
    agent_id = str(claim.agent.id) if claim.agent else None
    return TaskOutcome(str(claim.task_id), status, attempt=claim.attempt, agent_id=agent_id, **details)
