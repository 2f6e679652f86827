"""Tasks, groups and statistics as records for scripts: plain dicts of JSON values under stable field names, the
same for `--json` (one object per line) and for the tab-separated rows a command prints when its standard output
is not a terminal. Field names are documented in docs/reference/cli.md; a renamed field breaks scripts."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from enum import Enum
from typing import Any

from agent_service.models import Task, TaskAttempt, TaskStep
from agent_service.store.groups import GroupProgress
from agent_service.store.stats import TaskStats

# A listing's record of a task, in column order.
TASK_FIELDS = (
    "id",
    "kind",
    "status",
    "attempts",
    "total_tokens",
    "cost_usd",
    "duration_ms",
    "created_at",
    "finished_at",
    "user_id",
    "agent_id",
    "title",
    "result",
    "error",
)


def task_record(task: Task) -> dict[str, Any]:
    """A listing's record of a task (`list`, `failed`)."""
    values = {name: getattr(task, name, None) for name in TASK_FIELDS}
    values["kind"] = task.kind or task.agent.kind
    return {name: json_value(values[name]) for name in TASK_FIELDS}


def task_details(task: Task, *, steps: list[TaskStep]) -> dict[str, Any]:
    """Everything `status` shows of a task: every column, its kind, its attempt history and its steps."""
    record = _columns(task)
    record["kind"] = task.kind or task.agent.kind
    record["attempt_history"] = [_columns(attempt) for attempt in task.attempt_history]
    record["steps"] = [_columns(step) for step in steps]
    return record


def group_record(progress: GroupProgress) -> dict[str, Any]:
    """`group`: a group's progress, its counts by status under `counts`."""
    record = {field.name: json_value(getattr(progress, field.name)) for field in dataclasses.fields(progress)}
    record["counts"] = {status.value: count for status, count in progress.counts.items()}
    record["unfinished"] = progress.unfinished
    return record


# A `stats` record, in column order.
STATS_FIELDS = (
    "by",
    "group",
    "tasks",
    "completed",
    "failed",
    "success_rate",
    "avg_duration_ms",
    "p95_duration_ms",
    "prompt_tokens",
    "cached_tokens",
    "completion_tokens",
    "cost_usd",
    "unpriced_tasks",
)


def stats_record(figures: TaskStats, *, by: str) -> dict[str, Any]:
    """`stats`: one group's figures, named by what it groups (`by`: agent, user, model or all)."""
    values = {"by": by, "success_rate": figures.success_rate}
    return {name: json_value(values[name] if name in values else getattr(figures, name)) for name in STATS_FIELDS}


def json_value(value: Any) -> Any:
    """`value` as JSON has it: times in ISO 8601, amounts as numbers, enums and ids as their strings."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Mapping):
        return {str(key): json_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_value(item) for item in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)  # uuid.UUID


def _columns(row: Task | TaskAttempt | TaskStep) -> dict[str, Any]:
    """Every column of a mapped row, as JSON has it."""
    return {column.name: json_value(getattr(row, column.name)) for column in type(row).__table__.columns}
