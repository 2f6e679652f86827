"""ORM mappings for agents and their tasks: columns and relationships only, no queries."""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Any, cast

from sqlalchemy import JSON, DateTime, Enum, ForeignKey, Index, Numeric, String, Table, Text, func
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    """Declarative base of every table."""


def table_of(model: type[Base]) -> Table:
    """The Table a model maps, for Core statements (SQLAlchemy types `__table__` as any FromClause)."""
    return cast(Table, model.__table__)


class TaskStatus(str, enum.Enum):
    """Where a task is in its lifecycle: pending -> queued -> running -> completed | failed | cancelled.

    With fair-share dispatch (DISPATCH_MODE=fair) a task starts `waiting` instead of pending: it waits in the
    database, with no message, until a dispatcher publishes it (waiting -> queued). A run that reaches a tool
    marked `requires_approval` stops in `awaiting_approval`, holding no worker slot, until someone approves or
    rejects the call (-> queued) or the approval expires (-> failed)."""

    WAITING = "waiting"
    PENDING = "pending"
    QUEUED = "queued"
    RUNNING = "running"
    AWAITING_APPROVAL = "awaiting_approval"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATUSES


FINAL_STATUSES = frozenset({TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED})

_timestamp = DateTime(timezone=True)
# USD to the 1e-10: a small call costs millionths of a dollar. Read back as float, the unit of the metrics.
_usd = Numeric(20, 10, asdecimal=False)


def _enum(vocabulary: type[enum.Enum], name: str) -> Enum:
    """A PostgreSQL enum type holding the vocabulary's values (not its member names)."""
    return Enum(vocabulary, name=name, values_callable=lambda e: [m.value for m in e])


class Agent(Base):
    """An AI agent: the system prompt and model settings that tasks run with."""

    __tablename__ = "agents"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    prompt: Mapped[str] = mapped_column(Text)
    model: Mapped[str] = mapped_column(String(200))
    fallback_model: Mapped[str | None] = mapped_column(String(200))  # used while `model`'s breaker is open
    temperature: Mapped[float] = mapped_column(default=0.7)
    max_tokens: Mapped[int] = mapped_column(default=1000)
    settings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    kind: Mapped[str] = mapped_column(String(20), default="text", server_default="text")  # see kinds.KINDS
    tools: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)  # the api kind's HTTP tools
    output_schema: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # the data kind's JSON Schema
    is_active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(_timestamp, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(_timestamp, server_default=func.now(), onupdate=func.now())

    tasks: Mapped[list[Task]] = relationship(back_populates="agent")

    def __repr__(self) -> str:
        return f"Agent(id={self.id!s}, name={self.name!r}, model={self.model!r}, active={self.is_active})"


class Task(Base):
    """One unit of agent work and everything known about its runs."""

    __tablename__ = "tasks"
    __table_args__ = (
        Index("ix_tasks_status_updated_at", "status", "updated_at"),
        Index("ix_tasks_user_idempotency_key", "user_id", "idempotency_key", unique=True),
        # The dispatcher's order: by status, each user's tasks by priority, then age (store/dispatch.py).
        Index("ix_tasks_dispatch_order", "status", "user_id", "priority", "created_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    title: Mapped[str] = mapped_column(String(1000))
    description: Mapped[str | None] = mapped_column(Text)
    agent_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("agents.id"), index=True)
    user_id: Mapped[str] = mapped_column(String(200), index=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    status: Mapped[TaskStatus] = mapped_column(_enum(TaskStatus, "task_status"), default=TaskStatus.PENDING)
    kind: Mapped[str | None] = mapped_column(String(20))  # overrides the agent's kind for this task
    payload: Mapped[Any] = mapped_column(JSON, nullable=True)  # the task's JSON input, if any
    group_id: Mapped[str | None] = mapped_column(ForeignKey("task_groups.id"), index=True)
    result: Mapped[str | None] = mapped_column(Text)
    result_data: Mapped[Any] = mapped_column(JSON, nullable=True)  # the structured result of a decision or data task
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(default=0)
    # Usage and cost summed over every paid attempt (a retried one too); None until a call reports usage.
    prompt_tokens: Mapped[int | None]
    completion_tokens: Mapped[int | None]
    total_tokens: Mapped[int | None]
    cached_tokens: Mapped[int | None]
    cost_usd: Mapped[float | None] = mapped_column(_usd)  # None also once any call had no price
    unpriced_calls: Mapped[int] = mapped_column(default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(_timestamp, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(_timestamp, server_default=func.now(), onupdate=func.now())
    queued_at: Mapped[datetime | None] = mapped_column(_timestamp)
    started_at: Mapped[datetime | None] = mapped_column(_timestamp)
    claimed_at: Mapped[datetime | None] = mapped_column(_timestamp)
    claimed_by: Mapped[str | None] = mapped_column(String(300))
    replays: Mapped[int] = mapped_column(default=0, server_default="0")
    waiting_reason: Mapped[str | None] = mapped_column(Text)
    model: Mapped[str | None] = mapped_column(String(200))  # the model that answered (a fallback, say)
    priority: Mapped[int] = mapped_column(default=0, server_default="0")
    finished_at: Mapped[datetime | None] = mapped_column(_timestamp)
    duration_ms: Mapped[int | None]

    agent: Mapped[Agent] = relationship(back_populates="tasks")
    attempt_history: Mapped[list[TaskAttempt]] = relationship(order_by="TaskAttempt.id", viewonly=True)
    steps: Mapped[list[TaskStep]] = relationship(order_by="TaskStep.position", viewonly=True)

    def __repr__(self) -> str:
        return f"Task(id={self.id!s}, status={self.status.value}, attempts={self.attempts}, title={self.title[:40]!r})"


class TaskAttempt(Base):
    """One attempt that did not complete its task: retried, failed, or lost with its worker; with what its
    call cost when the provider answered (a reply that could not be used is paid for all the same)."""

    __tablename__ = "task_attempts"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    task_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), index=True)
    attempt: Mapped[int]
    outcome: Mapped[str] = mapped_column(String(20))
    error: Mapped[str | None] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(_timestamp, server_default=func.now())
    model: Mapped[str | None] = mapped_column(String(200))
    prompt_tokens: Mapped[int | None]
    completion_tokens: Mapped[int | None]
    cached_tokens: Mapped[int | None]
    cost_usd: Mapped[float | None] = mapped_column(_usd)

    def __repr__(self) -> str:
        return f"TaskAttempt(task_id={self.task_id!s}, attempt={self.attempt}, outcome={self.outcome!r})"


class StepType(str, enum.Enum):
    """What a recorded step of a multi-step run was."""

    MODEL_TURN = "model_turn"
    TOOL_CALL = "tool_call"


class StepStatus(str, enum.Enum):
    """Where a step is. A model turn is recorded `succeeded` once its reply arrived. A tool call is `started`
    before a non-idempotent call goes out (so that it is never sent twice), `succeeded` or `failed` with the
    result the model is given, or waits on a person: `awaiting_approval` -> `approved` (then called) or
    `rejected` (the rejection is its result), or `expired`."""

    STARTED = "started"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    AWAITING_APPROVAL = "awaiting_approval"
    APPROVED = "approved"
    REJECTED = "rejected"
    EXPIRED = "expired"


class TaskStep(Base):
    """One durable step of a multi-step run: a model turn (its text, the tool calls it asked for, what it
    cost) or one tool call (its arguments and result, and any approval). A run resumed after a crash or a
    retry starts after the last recorded step, so no recorded step is repeated or paid twice."""

    __tablename__ = "task_steps"
    __table_args__ = (Index("ix_task_steps_task_position", "task_id", "position", unique=True),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    task_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"))
    position: Mapped[int]  # 0, 1, 2... in the order the run took them
    step_type: Mapped[StepType] = mapped_column(_enum(StepType, "step_type"))
    status: Mapped[StepStatus] = mapped_column(_enum(StepStatus, "step_status"))
    attempt: Mapped[int]  # the task attempt that recorded it
    created_at: Mapped[datetime] = mapped_column(_timestamp, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(_timestamp, server_default=func.now(), onupdate=func.now())
    content: Mapped[str | None] = mapped_column(Text)  # a model turn's text; a tool call's result as the model saw it
    duration_ms: Mapped[int | None]
    # A model turn: the calls it asked for ([{"id", "name", "arguments"}]), the model and what it cost.
    tool_calls: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    model: Mapped[str | None] = mapped_column(String(200))
    prompt_tokens: Mapped[int | None]
    completion_tokens: Mapped[int | None]
    cached_tokens: Mapped[int | None]
    cost_usd: Mapped[float | None] = mapped_column(_usd)
    # A tool call: which call of which turn, its arguments, and the key a non-idempotent call is sent with.
    tool_call_id: Mapped[str | None] = mapped_column(String(200))
    tool_name: Mapped[str | None] = mapped_column(String(64))
    arguments: Mapped[Any] = mapped_column(JSON, nullable=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    # An approval: until when it may be given, the note it was given with, and when.
    approval_expires_at: Mapped[datetime | None] = mapped_column(_timestamp)
    approval_note: Mapped[str | None] = mapped_column(Text)
    decided_at: Mapped[datetime | None] = mapped_column(_timestamp)

    def __repr__(self) -> str:
        step = f"{self.step_type.value} {self.tool_name or self.model}: {self.status.value}"
        return f"TaskStep(task_id={self.task_id!s}, position={self.position}, {step})"


class TaskGroup(Base):
    """Tasks submitted together under a caller's name, with the Celery task to run once every one of them
    has ended (`callback`, optional). `ended_at` is set exactly once, by the transaction that ends the last
    task; `callback_sent_at` once its callback is published."""

    __tablename__ = "task_groups"

    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(200))
    callback: Mapped[str | None] = mapped_column(String(300))
    created_at: Mapped[datetime] = mapped_column(_timestamp, server_default=func.now())
    ended_at: Mapped[datetime | None] = mapped_column(_timestamp)
    callback_sent_at: Mapped[datetime | None] = mapped_column(_timestamp)

    def __repr__(self) -> str:
        return f"TaskGroup(id={self.id!r}, user_id={self.user_id!r}, ended_at={self.ended_at})"


class LimitScope(str, enum.Enum):
    """Whom a limit override applies to."""

    AGENT = "agent"
    USER = "user"
    MODEL = "model"


class LimitOverride(Base):
    """A setting of an admission control for one agent, user or model, overriding the service-wide value
    from Settings: for example (user, "u1", "daily_spend_cap_usd", "5")."""

    __tablename__ = "limit_overrides"
    __table_args__ = (Index("ix_limit_overrides_scope_subject_name", "scope", "subject", "name", unique=True),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    scope: Mapped[LimitScope] = mapped_column(_enum(LimitScope, "limit_scope"))
    subject: Mapped[str] = mapped_column(String(200))
    name: Mapped[str] = mapped_column(String(100))
    value: Mapped[str] = mapped_column(String(200))
    updated_at: Mapped[datetime] = mapped_column(_timestamp, server_default=func.now(), onupdate=func.now())

    def __repr__(self) -> str:
        return f"LimitOverride({self.scope.value} {self.subject!r}: {self.name}={self.value!r})"


class WorkerLease(Base):
    """A task-running process's liveness lease: the process (`owner`, as tasks' `claimed_by` names it) renews
    `expires_at` while it lives; once that has passed, the tasks it claimed may be taken over. Times are the
    database's clock, so hosts' clocks need not agree (execution.liveness)."""

    __tablename__ = "worker_leases"

    owner: Mapped[str] = mapped_column(String(300), primary_key=True)
    started_at: Mapped[datetime] = mapped_column(_timestamp)
    renewed_at: Mapped[datetime] = mapped_column(_timestamp)
    expires_at: Mapped[datetime] = mapped_column(_timestamp, index=True)

    def __repr__(self) -> str:
        return f"WorkerLease(owner={self.owner!r}, expires_at={self.expires_at})"


class ApiKey(Base):
    """A key of the HTTP API, bound to one tenant (the `user_id` of the tasks it submits and the only tasks it
    sees). Only the SHA-256 of the key is kept; the key itself is shown once, when it is made."""

    __tablename__ = "api_keys"
    __table_args__ = (Index("ix_api_keys_key_hash", "key_hash", unique=True),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    tenant: Mapped[str] = mapped_column(String(200), index=True)
    key_hash: Mapped[str] = mapped_column(String(64))
    name: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(_timestamp, server_default=func.now())
    revoked_at: Mapped[datetime | None] = mapped_column(_timestamp)

    def __repr__(self) -> str:
        return f"ApiKey(id={self.id}, tenant={self.tenant!r}, revoked_at={self.revoked_at})"
