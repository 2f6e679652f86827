"""Task statistics for `python cli.py stats`: per agent, user or model (or all together), the tasks finished
since a moment, their success rate, average and 95th-percentile duration, tokens and cost. Computed in SQL;
SQLite has no percentile, so there the p95 is computed from the durations in Python."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Float, case, cast, func, literal, select
from sqlalchemy.orm import Session

from agent_service.models import FINAL_STATUSES, Agent, Task, TaskStatus


class GroupBy(str, enum.Enum):
    """What `task_stats` groups by."""

    AGENT = "agent"
    USER = "user"
    MODEL = "model"


@dataclass(frozen=True)
class TaskStats:
    """The figures of one group of finished tasks. `cost_usd` leaves out tasks with an unpriced call, which
    `unpriced_tasks` counts."""

    group: str
    tasks: int
    completed: int
    failed: int
    avg_duration_ms: float | None
    p95_duration_ms: float | None
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    cost_usd: float
    unpriced_tasks: int

    @property
    def success_rate(self) -> float | None:
        settled = self.completed + self.failed
        return self.completed / settled if settled else None


def task_stats(session: Session, *, by: GroupBy | None, since: datetime, user_id: str | None = None) -> list[TaskStats]:
    """Figures of the tasks (of `user_id` alone, if given) that finished since `since`, grouped `by` agent (its
    name), user or model (the one that answered; "-" when none did), or all together; the most costly group
    first."""
    postgres = session.get_bind().dialect.name == "postgresql"
    group = _group_column(by)
    p95 = (
        func.percentile_cont(0.95).within_group(Task.duration_ms).label("p95")
        if postgres
        else literal(None).label("p95")
    )
    query = (
        select(
            group.label("group"),
            func.count().label("tasks"),
            func.count(case((Task.status == TaskStatus.COMPLETED, 1))).label("completed"),
            func.count(case((Task.status == TaskStatus.FAILED, 1))).label("failed"),
            func.avg(cast(Task.duration_ms, Float)).label("avg"),
            p95,
            func.coalesce(func.sum(Task.prompt_tokens), 0).label("prompt"),
            func.coalesce(func.sum(Task.completion_tokens), 0).label("completion"),
            func.coalesce(func.sum(Task.cached_tokens), 0).label("cached"),
            func.coalesce(func.sum(Task.cost_usd), 0.0).label("cost"),
            func.count(case((Task.unpriced_calls > 0, 1))).label("unpriced"),
        )
        .select_from(Task)
        .where(*_finished_since(since, user_id))
    )
    if by is not None:  # all together: no GROUP BY (PostgreSQL refuses to group by a constant)
        query = query.group_by(group)
    if by is GroupBy.AGENT:
        query = query.join(Agent, Agent.id == Task.agent_id)
    rows = [row for row in session.execute(query).all() if row.tasks]  # all together, of no task: no group
    stats = [_stats(row, None if postgres else _p95_in_python(session, by, row.group, since, user_id)) for row in rows]
    return sorted(stats, key=lambda figures: (-figures.cost_usd, -figures.tasks, figures.group))


def _finished_since(since: datetime, user_id: str | None) -> list[Any]:
    conditions = [Task.status.in_(FINAL_STATUSES), Task.finished_at >= since]
    return conditions if user_id is None else [*conditions, Task.user_id == user_id]


def _group_column(by: GroupBy | None) -> Any:
    if by is GroupBy.AGENT:
        return Agent.name
    if by is GroupBy.USER:
        return Task.user_id
    if by is GroupBy.MODEL:
        return func.coalesce(Task.model, "-")
    return literal("all")


def _stats(row: Any, p95: float | None) -> TaskStats:
    return TaskStats(
        group=str(row.group),
        tasks=row.tasks,
        completed=row.completed,
        failed=row.failed,
        avg_duration_ms=float(row.avg) if row.avg is not None else None,
        p95_duration_ms=float(row.p95) if row.p95 is not None else p95,
        prompt_tokens=int(row.prompt),
        completion_tokens=int(row.completion),
        cached_tokens=int(row.cached),
        cost_usd=float(row.cost),
        unpriced_tasks=row.unpriced,
    )


def _p95_in_python(
    session: Session, by: GroupBy | None, group: Any, since: datetime, user_id: str | None
) -> float | None:
    """The 95th percentile of one group's durations, interpolated as PostgreSQL's percentile_cont does."""
    query = select(Task.duration_ms).where(*_finished_since(since, user_id), Task.duration_ms.is_not(None))
    if by is not None:
        query = query.where(_group_column(by) == group)
        if by is GroupBy.AGENT:
            query = query.join(Agent, Agent.id == Task.agent_id)
    durations = sorted(duration for duration in session.scalars(query) if duration is not None)
    if not durations:
        return None
    position = 0.95 * (len(durations) - 1)
    low, high = math.floor(position), math.ceil(position)
    return durations[low] + (durations[high] - durations[low]) * (position - low)
