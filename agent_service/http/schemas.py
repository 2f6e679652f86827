"""The documented bodies of the API's answers, and the schema of a submitted task. Tasks are answered in the
records the command line prints with `--json` (`terminal.records`), under the same field names."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from agent_service.models import TaskStatus
from agent_service.submission.validation import TaskInput


class TaskSummary(BaseModel):
    """A task as a listing shows it (`python cli.py list --json`)."""

    id: uuid.UUID
    kind: str
    status: TaskStatus
    attempts: int
    total_tokens: int | None
    cost_usd: float | None
    duration_ms: int | None
    created_at: datetime
    finished_at: datetime | None
    user_id: str
    agent_id: uuid.UUID
    title: str
    result: str | None
    error: str | None


class TaskDetails(TaskSummary):
    """Everything about one task (`python cli.py status --json`): its input, its result (`result_data` for a
    decision or data task), usage and cost, why it waits, its attempts and its steps."""

    description: str | None
    idempotency_key: str | None
    priority: int
    payload: Any
    group_id: str | None
    result_data: Any
    model: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    cached_tokens: int | None
    unpriced_calls: int
    waiting_reason: str | None
    replays: int
    updated_at: datetime
    queued_at: datetime | None
    started_at: datetime | None
    attempt_history: list[dict[str, Any]]
    steps: list[dict[str, Any]]


class TaskPage(BaseModel):
    """One page of tasks, newest first; `next_cursor` asks for the next page (None: this is the last)."""

    tasks: list[TaskSummary]
    next_cursor: str | None


class Submitted(BaseModel):
    """A task stored and queued (or the earlier one with the same idempotency key)."""

    id: uuid.UUID


class SubmittedBatch(BaseModel):
    """The tasks of a batch, in the order submitted."""

    ids: list[uuid.UUID]


class Cancelled(BaseModel):
    """The status a cancelled task ends with: `cancelled`, or the final status it had already reached."""

    id: uuid.UUID
    status: TaskStatus


class Decision(BaseModel):
    """A reviewer's decision on the tool calls a task awaits approval for."""

    note: str | None = Field(None, max_length=2000, description="why; a rejection's note reaches the model")


class Decided(BaseModel):
    """The tools approved or rejected; the task is queued to go on."""

    id: uuid.UUID
    tools: list[str]


class FollowToken(BaseModel):
    """Lets a page follow one task (`GET /v1/tasks/{id}/events?token=...`) until `expires_at`."""

    token: str
    expires_at: datetime


class GroupView(BaseModel):
    """A group's progress (`python cli.py group --json`)."""

    group_id: str
    user_id: str
    tasks: int
    unfinished: int
    counts: dict[str, int]
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float | None
    unpriced_tasks: int
    created_at: datetime
    ended_at: datetime | None
    callback: str | None
    callback_sent_at: datetime | None


class StatsGroup(BaseModel):
    """The figures of one group of finished tasks (`python cli.py stats --json`)."""

    by: str
    group: str
    tasks: int
    completed: int
    failed: int
    success_rate: float | None
    avg_duration_ms: float | None
    p95_duration_ms: float | None
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    cost_usd: float
    unpriced_tasks: int


class Stats(BaseModel):
    """The tenant's tasks finished in the last `since_seconds`, by group."""

    since_seconds: int
    groups: list[StatsGroup]


class Health(BaseModel):
    """A probe's answer when all is well."""

    status: str = "ok"


def submission_schema() -> dict[str, Any]:
    """The JSON Schema of one submitted task: `create_agent_task`'s input without `user_id`, which is the key's
    tenant."""
    schema = TaskInput.model_json_schema()
    schema["properties"].pop("user_id")
    schema["required"].remove("user_id")
    schema["title"] = "TaskSubmission"
    return schema


def batch_schema() -> dict[str, Any]:
    """The JSON Schema of a batch: its tasks, and optionally the group of the tenant's they join."""
    return {
        "title": "TaskBatch",
        "type": "object",
        "additionalProperties": False,
        "required": ["tasks"],
        "properties": {
            "tasks": {"type": "array", "minItems": 1, "items": {"$ref": "#/components/schemas/TaskSubmission"}},
            "group": {"type": "string", "minLength": 1, "maxLength": 200},
        },
    }
