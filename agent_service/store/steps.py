"""The durable steps of multi-turn runs (any durable kind's, the api kind's among them) and their approvals:
plain functions on a caller-owned Session, no commits.

A step is written only while the claim that took it still owns the task (the same compare-and-set as every
transition in `store.lifecycle`), so a run that lost its claim can add nothing; the unique (task, position)
index keeps two runs from writing one position.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any, cast

from sqlalchemy import CursorResult, insert, select, update
from sqlalchemy.orm import Session

from agent_service.clock import aware
from agent_service.errors import ApprovalError, TaskNotFoundError
from agent_service.models import StepStatus, StepType, Task, TaskStatus, TaskStep, table_of
from agent_service.store import lifecycle
from agent_service.store.lifecycle import Charge, Claim

REJECTED_BY_REVIEWER = "rejected by a reviewer"


@dataclass(frozen=True)
class RecordedStep:
    """A step as its row records it, detached from the session."""

    position: int
    step_type: StepType
    status: StepStatus
    created_at: datetime
    content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    model: str | None = None
    tool_call_id: str | None = None
    tool_name: str | None = None
    arguments: Any = None
    idempotency_key: str | None = None
    decided_at: datetime | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


@dataclass(frozen=True)
class StepWrite:
    """One step row to insert, or (`exists`) to update in place, found by its task and position."""

    position: int
    values: dict[str, Any] = field(default_factory=dict)
    exists: bool = False


_RECORDED_COLUMNS = [getattr(TaskStep, column.name) for column in fields(RecordedStep)] + [TaskStep.task_id]
# A run's steps are written as Core statements: the ORM's bulk insert costs more CPU than the statement, on the
# worker's one interpreter, for every step of every run.
_STEPS = table_of(TaskStep)
_INSERT_STEPS = insert(_STEPS)


def load_steps(session: Session, task_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, list[RecordedStep]]:
    """The recorded steps of each task, in position order (one query for them all)."""
    steps: dict[uuid.UUID, list[RecordedStep]] = {task_id: [] for task_id in task_ids}
    query = select(*_RECORDED_COLUMNS).where(TaskStep.task_id.in_(list(task_ids))).order_by(TaskStep.position)
    for row in session.execute(query):
        values = row._asdict()
        steps[values.pop("task_id")].append(RecordedStep(**values))
    return steps


@dataclass(frozen=True)
class ClaimSteps:
    """The steps one claim's run writes at once, and the model turn's cost they add to the task's sums."""

    claim: Claim
    writes: Sequence[StepWrite]
    charge: Charge | None = None


def write_steps(session: Session, batch: Sequence[ClaimSteps], *, now: datetime) -> list[bool]:
    """Write each claim's steps, adding its `charge` to the task's sums, only while the claim still owns the
    task; the claims checked and charged in one statement, the new steps of them all inserted in another.
    Returns whether each claim did (nothing of it is written otherwise), in the order given."""
    owned = lifecycle.charge_steps(session, [(steps.claim, steps.charge) for steps in batch], now=now)
    kept = [steps for steps, still in zip(batch, owned, strict=True) if still]
    inserts = [
        {"task_id": s.claim.task_id, "position": w.position, "attempt": s.claim.attempt, "created_at": now, **w.values}
        for s in kept
        for w in s.writes
        if not w.exists
    ]
    connection = session.connection()
    # One executemany per set of columns: Core builds the statement from the columns its first row names.
    by_columns: dict[frozenset[str], list[dict[str, Any]]] = {}
    for row in inserts:
        by_columns.setdefault(frozenset(row), []).append(row)
    for rows in by_columns.values():
        connection.execute(_INSERT_STEPS, rows)
    for steps in kept:
        for write in steps.writes:
            if write.exists:
                connection.execute(
                    update(_STEPS)
                    .where(_STEPS.c.task_id == steps.claim.task_id, _STEPS.c.position == write.position)
                    .values(attempt=steps.claim.attempt, updated_at=now, **write.values)
                )
    return owned


def decide_approval(
    session: Session, task_id: uuid.UUID, *, approved: bool, note: str | None, now: datetime, status: TaskStatus
) -> list[str]:
    """Record a reviewer's decision on every tool call the task awaits approval for, and move the task to
    `status` (pending, or waiting for the dispatcher) for its run to go on. A rejected call's result, which its
    model reads, is "rejected by a reviewer: <note>". Returns the names of the tools decided on.

    Raises: TaskNotFoundError; ApprovalError when the task does not await approval, or its approval expired
    (the sweeper then fails it)."""
    task = session.get(Task, task_id, with_for_update=True, populate_existing=True)
    if task is None:
        raise TaskNotFoundError(f"no task {task_id}")
    if task.status != TaskStatus.AWAITING_APPROVAL:
        raise ApprovalError(f"task {task_id} is not awaiting approval: it is {task.status.value}")
    waiting = list(
        session.scalars(
            select(TaskStep)
            .where(TaskStep.task_id == task_id, TaskStep.status == StepStatus.AWAITING_APPROVAL)
            .order_by(TaskStep.position)
        )
    )
    expired = [step for step in waiting if step.approval_expires_at and aware(step.approval_expires_at) <= now]
    if expired:
        raise ApprovalError(
            f"the approval of task {task_id} expired at {aware(expired[0].approval_expires_at or now)}"
            " (its tool call is not made; the task fails)"
        )
    decided: dict[str, Any] = dict(approval_note=note, decided_at=now, updated_at=now)
    if approved:
        decided.update(status=StepStatus.APPROVED)
    else:
        decided.update(status=StepStatus.REJECTED, content=rejection(note))
    session.execute(
        update(TaskStep).where(TaskStep.id.in_([step.id for step in waiting])).values(**decided),
        execution_options={"synchronize_session": False},
    )
    session.execute(
        update(Task)
        .where(Task.id == task_id, Task.status == TaskStatus.AWAITING_APPROVAL)
        .values(status=status, waiting_reason=None, updated_at=now)
    )
    return [step.tool_name or "" for step in waiting]


def rejection(note: str | None) -> str:
    """What the model reads as the result of a call a reviewer rejected."""
    return f"{REJECTED_BY_REVIEWER}: {note}" if note else REJECTED_BY_REVIEWER


def fail_expired_approvals(session: Session, *, now: datetime, limit: int) -> list[uuid.UUID]:
    """Fail the tasks (at most `limit`) whose pending approval expired, each with "approval for tool X expired
    after N s", and mark those steps expired. Returns the ids of the tasks failed here (ended: a group's
    bookkeeping may count them)."""
    query = (
        select(TaskStep.task_id, TaskStep.tool_name, TaskStep.created_at, TaskStep.approval_expires_at)
        .join(Task, Task.id == TaskStep.task_id)
        .where(
            TaskStep.status == StepStatus.AWAITING_APPROVAL,
            TaskStep.approval_expires_at <= now,
            Task.status == TaskStatus.AWAITING_APPROVAL,
        )
        .order_by(TaskStep.approval_expires_at)
        .limit(limit)
    )
    failed: list[uuid.UUID] = []
    for task_id, tool_name, created_at, expires_at in session.execute(query):
        if task_id in failed:
            continue
        waited = (aware(expires_at or now) - aware(created_at)).total_seconds()
        error = f"approval for tool {tool_name} expired after {waited:g} s"
        ended = session.execute(
            update(Task)
            .where(Task.id == task_id, Task.status == TaskStatus.AWAITING_APPROVAL)
            .values(status=TaskStatus.FAILED, error=error, waiting_reason=None, finished_at=now, updated_at=now)
        )
        if cast(CursorResult[Any], ended).rowcount == 1:
            session.execute(
                update(TaskStep)
                .where(TaskStep.task_id == task_id, TaskStep.status == StepStatus.AWAITING_APPROVAL)
                .values(status=StepStatus.EXPIRED, updated_at=now)
            )
            failed.append(task_id)
    return failed


def step_rows(session: Session, task_id: uuid.UUID) -> list[TaskStep]:
    """The task's steps, in position order (for `python cli.py status`)."""
    return list(session.scalars(select(TaskStep).where(TaskStep.task_id == task_id).order_by(TaskStep.position)))
