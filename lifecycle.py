"""Task state transitions in the database: plain functions on a caller-owned Session, no commits.

Every transition is a conditional UPDATE (compare-and-set), so two workers holding the same
message can never both run a task, and a run that lost its claim can never complete it.
"""
from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session, selectinload

from config import Settings
from errors import TaskNotFoundError, TaskValidationError
from models import Agent, Task, TaskAttempt, TaskStatus
from schemas import AgentOptions, TaskInput

CLAIMABLE = (TaskStatus.PENDING, TaskStatus.QUEUED)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class AgentSpec:
    """What a run needs of its agent, detached from the session."""

    id: uuid.UUID
    prompt: str
    model: str
    temperature: float
    max_tokens: int
    options: AgentOptions


@dataclass(frozen=True)
class Claim:
    """This worker owns attempt `attempt` of the task until it records an outcome."""

    task_id: uuid.UUID
    attempt: int
    title: str
    description: str
    agent: AgentSpec | None
    agent_error: str | None = None


@dataclass(frozen=True)
class Skip:
    """The task is not to be run by this delivery, and why."""

    task_id: uuid.UUID
    status: TaskStatus
    reason: str


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


def insert_task(session: Session, data: TaskInput) -> tuple[Task, bool]:
    """Insert a pending task, or return the earlier one with the same idempotency key.

    Returns (task, created). Raises: TaskValidationError when the agent is unknown or inactive.
    """
    if data.idempotency_key is not None:
        existing = session.scalar(
            select(Task).where(Task.user_id == data.user_id, Task.idempotency_key == data.idempotency_key)
        )
        if existing is not None:
            return existing, False
    agent = session.get(Agent, data.agent_id)
    if agent is None:
        raise TaskValidationError(f"invalid task input: agent_id: no agent {data.agent_id}")
    if not agent.is_active:
        raise TaskValidationError(f"invalid task input: agent_id: agent {agent.name!r} is inactive")
    task = Task(**data.model_dump(), status=TaskStatus.PENDING, attempts=0)
    session.add(task)
    session.flush()
    return task, True


def mark_queued(session: Session, task_ids: list[uuid.UUID], *, now: datetime) -> int:
    """pending -> queued for tasks whose message was published; a run that already began is left alone."""
    result = session.execute(
        update(Task)
        .where(Task.id.in_(task_ids), Task.status == TaskStatus.PENDING)
        .values(status=TaskStatus.QUEUED, queued_at=now, updated_at=now)
    )
    return result.rowcount


def claim_task(
    session: Session, task_id: uuid.UUID, *, settings: Settings, now: datetime, owner: str,
    owner_is_gone: Callable[[str | None], bool] = lambda _owner: False,
) -> Claim | Skip:
    """Take the next attempt of a pending or queued task, or of an abandoned running one: its claim
    is older than the stale threshold or `owner_is_gone` says its process no longer exists.

    Raises: TaskNotFoundError when no such task exists.
    """
    attempt = _take(session, task_id, Task.status.in_(CLAIMABLE), now=now, owner=owner)
    task = session.get(Task, task_id, populate_existing=True)
    if task is None:
        raise TaskNotFoundError(f"no task {task_id}")
    if attempt is None and _is_abandoned(task, settings=settings, now=now, owner_is_gone=owner_is_gone):
        attempt = _take_over(session, task, now=now, owner=owner)
    if attempt is None:
        return Skip(task_id, task.status, _why_not_claimed(task))
    return _claim_of(task, attempt)


def _take(session: Session, task_id: uuid.UUID, condition, *, now: datetime, owner: str) -> int | None:
    return session.scalar(
        update(Task)
        .where(Task.id == task_id, condition)
        .values(status=TaskStatus.RUNNING, attempts=Task.attempts + 1, claimed_at=now, claimed_by=owner,
                updated_at=now, started_at=func.coalesce(Task.started_at, now))
        .returning(Task.attempts)
    )


def _is_abandoned(task: Task, *, settings: Settings, now: datetime, owner_is_gone) -> bool:
    if task.status != TaskStatus.RUNNING:
        return False
    stale = _aware(task.claimed_at) < now - timedelta(seconds=settings.stale_task_after_seconds)
    return stale or owner_is_gone(task.claimed_by)


def _take_over(session: Session, task: Task, *, now: datetime, owner: str) -> int | None:
    lost_attempt, lost_owner = task.attempts, task.claimed_by
    condition = and_(Task.status == TaskStatus.RUNNING, Task.attempts == lost_attempt)
    attempt = _take(session, task.id, condition, now=now, owner=owner)
    if attempt is not None:
        session.add(TaskAttempt(task_id=task.id, attempt=lost_attempt, outcome="lost", at=now,
                                error=f"the worker running it ({lost_owner}) was lost"))
        session.refresh(task)
    return attempt


def record_success(session: Session, claim: Claim, *, result: str, usage: Usage | None, now: datetime) -> bool:
    """running -> completed, only while this claim still owns the task. Returns whether it did."""
    return _settle(session, claim, now=now, status=TaskStatus.COMPLETED, result=result, error=None, **_usage_values(usage))


def record_failure(session: Session, claim: Claim, *, error: str, now: datetime) -> bool:
    """running -> failed with `error`, only while this claim still owns the task."""
    owned = _settle(session, claim, now=now, status=TaskStatus.FAILED, error=error)
    if owned:
        _remember_attempt(session, claim, outcome="failed", error=error, now=now)
    return owned


def record_retry(session: Session, claim: Claim, *, error: str, now: datetime) -> bool:
    """running -> queued for another attempt, keeping the last error."""
    values = {"status": TaskStatus.QUEUED, "error": error, "updated_at": now, "queued_at": now}
    owned = _update_owned(session, claim, values)
    if owned:
        _remember_attempt(session, claim, outcome="retried", error=error, now=now)
    return owned


def failed_tasks(session: Session, *, limit: int) -> list[Task]:
    """The dead letters: failed tasks, newest first, with their attempt history loaded."""
    query = (select(Task).where(Task.status == TaskStatus.FAILED).order_by(Task.finished_at.desc()).limit(limit)
             .options(selectinload(Task.attempt_history)))
    return list(session.scalars(query))


def reset_for_replay(session: Session, task_ids: list[uuid.UUID] | None, *, now: datetime) -> list[uuid.UUID]:
    """failed -> pending with a fresh attempt budget (None: every failed task); history is kept.

    Returns the ids that were reset; ids of tasks that are not failed are left alone.
    """
    condition = Task.status == TaskStatus.FAILED
    if task_ids is not None:
        condition = and_(condition, Task.id.in_(task_ids))
    return list(session.scalars(
        update(Task).where(condition)
        .values(status=TaskStatus.PENDING, attempts=0, replays=Task.replays + 1, error=None, result=None,
                started_at=None, finished_at=None, claimed_at=None, claimed_by=None, duration_ms=None, updated_at=now)
        .returning(Task.id)
    ))


def tasks_to_requeue(session: Session, *, settings: Settings, now: datetime, limit: int) -> list[uuid.UUID]:
    """Rows that may have no live message: pending too long, or queued/running past the stale threshold.

    Their `updated_at` is bumped so the next sweep leaves them alone unless they stay stuck.
    """
    stale_before = now - timedelta(seconds=settings.stale_task_after_seconds)
    stuck = or_(
        and_(Task.status == TaskStatus.PENDING,
             Task.updated_at < now - timedelta(seconds=settings.requeue_pending_after_seconds)),
        and_(Task.status == TaskStatus.QUEUED, Task.updated_at < stale_before),
        and_(Task.status == TaskStatus.RUNNING, Task.claimed_at < stale_before, Task.updated_at < stale_before),
    )
    ids = list(session.scalars(select(Task.id).where(stuck).order_by(Task.updated_at).limit(limit)))
    if ids:
        session.execute(update(Task).where(Task.id.in_(ids)).values(updated_at=now))
    return ids


def cancel_task(session: Session, task_id: uuid.UUID, *, now: datetime) -> TaskStatus:
    """Cancel a task that has not finished; a running attempt then cannot complete it.

    Returns the status the task ends with. Raises: TaskNotFoundError.
    """
    session.execute(
        update(Task)
        .where(Task.id == task_id, Task.status.in_((*CLAIMABLE, TaskStatus.RUNNING)))
        .values(status=TaskStatus.CANCELLED, finished_at=now, updated_at=now, error="cancelled")
    )
    task = session.get(Task, task_id, populate_existing=True)
    if task is None:
        raise TaskNotFoundError(f"no task {task_id}")
    return task.status


def _settle(session: Session, claim: Claim, *, now: datetime, status: TaskStatus, **values) -> bool:
    started_at = session.scalar(select(Task.started_at).where(Task.id == claim.task_id)) or now
    duration_ms = int((now - _aware(started_at)).total_seconds() * 1000)
    values.update(status=status, finished_at=now, updated_at=now, duration_ms=duration_ms)
    return _update_owned(session, claim, values)


def _update_owned(session: Session, claim: Claim, values: dict) -> bool:
    result = session.execute(
        update(Task)
        .where(Task.id == claim.task_id, Task.status == TaskStatus.RUNNING, Task.attempts == claim.attempt)
        .values(**values)
    )
    return result.rowcount == 1


def _remember_attempt(session: Session, claim: Claim, *, outcome: str, error: str, now: datetime) -> None:
    session.add(TaskAttempt(task_id=claim.task_id, attempt=claim.attempt, outcome=outcome, error=error, at=now))


def _claim_of(task: Task, attempt: int) -> Claim:
    agent, agent_error = _agent_spec(task.agent)
    return Claim(task.id, attempt, task.title, task.description or "", agent, agent_error)


def _agent_spec(agent: Agent) -> tuple[AgentSpec | None, str | None]:
    if not agent.is_active:
        return None, f"agent {agent.name!r} is inactive"
    try:
        options = AgentOptions.model_validate(agent.settings or {})
    except ValueError as exc:
        return None, f"agent {agent.name!r} has invalid settings: {exc}"
    spec = AgentSpec(agent.id, agent.prompt, agent.model, agent.temperature, agent.max_tokens, options)
    return spec, None


def _why_not_claimed(task: Task) -> str:
    if task.status == TaskStatus.RUNNING:
        return f"attempt {task.attempts} is running elsewhere"
    return f"already {task.status.value}"


def _usage_values(usage: Usage | None) -> dict:
    if usage is None:
        return {}
    return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens, "total_tokens": usage.total_tokens}


def _aware(moment: datetime) -> datetime:
    # SQLite hands timestamps back without a zone; they were written in UTC.
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
