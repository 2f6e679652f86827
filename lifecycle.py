"""Task state transitions in the database: plain functions on a caller-owned Session, no commits.

Every transition is a conditional UPDATE (compare-and-set), so two workers holding the same
message can never both run a task, and a run that lost its claim can never complete it.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session

from config import Settings
from errors import TaskNotFoundError, TaskValidationError
from models import Agent, Task, TaskStatus
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


def claim_task(session: Session, task_id: uuid.UUID, *, settings: Settings, now: datetime) -> Claim | Skip:
    """Take the next attempt of a task: queued/pending, or running but stale (its worker died).

    Raises: TaskNotFoundError when no such task exists.
    """
    stale_before = now - timedelta(seconds=settings.stale_task_after_seconds)
    attempt = session.scalar(
        update(Task)
        .where(
            Task.id == task_id,
            or_(Task.status.in_(CLAIMABLE), and_(Task.status == TaskStatus.RUNNING, Task.claimed_at < stale_before)),
        )
        .values(
            status=TaskStatus.RUNNING,
            attempts=Task.attempts + 1,
            claimed_at=now,
            updated_at=now,
            started_at=func.coalesce(Task.started_at, now),
        )
        .returning(Task.attempts)
    )
    task = session.get(Task, task_id, populate_existing=True)
    if task is None:
        raise TaskNotFoundError(f"no task {task_id}")
    if attempt is None:
        return Skip(task_id, task.status, _why_not_claimed(task))
    return _claim_of(task, attempt)


def record_success(session: Session, claim: Claim, *, result: str, usage: Usage | None, now: datetime) -> bool:
    """running -> completed, only while this claim still owns the task. Returns whether it did."""
    return _settle(session, claim, now=now, status=TaskStatus.COMPLETED, result=result, error=None, **_usage_values(usage))


def record_failure(session: Session, claim: Claim, *, error: str, now: datetime) -> bool:
    """running -> failed with `error`, only while this claim still owns the task."""
    return _settle(session, claim, now=now, status=TaskStatus.FAILED, error=error)


def record_retry(session: Session, claim: Claim, *, error: str, now: datetime) -> bool:
    """running -> queued for another attempt, keeping the last error."""
    values = {"status": TaskStatus.QUEUED, "error": error, "updated_at": now, "queued_at": now}
    return _update_owned(session, claim, values)


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
