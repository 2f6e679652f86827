"""What a run submits and how the bench sees it done: agent tasks (rows in `tasks`) or floor no-ops
(entries in a Redis list). Both answer the same questions: how many are done, when each was
enqueued and finished, and whether each ran exactly once."""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis
from celery import Celery
from sqlalchemy import delete, func, select, true

from agent_service.database import session_scope
from agent_service.models import FINAL_STATUSES, Task, TaskStatus
from agent_service.tasks import create_agent_tasks
from bench.floor import DONE_KEY, NOOP_TASK_NAME


@dataclass(frozen=True)
class Completions:
    """Enqueue and finish times (epoch seconds) of the completed tasks, the failed count, and how many
    completed tasks did not run exactly once (more than one attempt, or a duplicate delivery)."""

    enqueued: list[float]
    finished: list[float]
    failed: int
    not_exactly_once: int


class AgentTaskLoad:
    """Agent tasks submitted through `tasks.create_agent_tasks`, followed through their rows; a task counts as
    done when it reaches `ends_as` (completed, or failed for a load meant to fail)."""

    def __init__(
        self, app: Celery, *, agent_id: str, user_id: str = "bench", ends_as: TaskStatus = TaskStatus.COMPLETED
    ) -> None:
        self.app = app
        self.agent_id = agent_id
        self.user_id = user_id
        self.ends_as = ends_as

    def submit(self, first: int, count: int) -> None:
        items = [
            {
                "title": f"bench task {index}",
                "description": "Summarise the benchmark in one line.",
                "agent_id": self.agent_id,
                "user_id": self.user_id,
            }
            for index in range(first, first + count)
        ]
        create_agent_tasks(items, app=self.app)

    def forget(self) -> None:
        """Delete every task row (after a warm-up); the agent stays."""
        with session_scope(self.app.services.session_factory) as session:
            session.execute(delete(Task))

    def finished_count(self) -> int:
        with session_scope(self.app.services.session_factory) as session:
            return session.scalar(select(func.count()).where(Task.status.in_(FINAL_STATUSES)))

    def completions(self, *, own_only: bool = False) -> Completions:
        """Every task's completion (`own_only`: those of this load's user alone)."""
        completed = Task.status == self.ends_as
        mine = Task.user_id == self.user_id if own_only else true()
        with session_scope(self.app.services.session_factory) as session:
            rows = session.execute(select(Task.created_at, Task.finished_at).where(completed, mine)).all()
            failed, not_once = session.execute(
                select(
                    func.count().filter(Task.status == TaskStatus.FAILED),
                    func.count().filter(completed, Task.attempts != 1),
                ).where(mine)
            ).one()
        return Completions(
            [row.created_at.timestamp() for row in rows],
            [row.finished_at.timestamp() for row in rows],
            failed=failed,
            not_exactly_once=not_once,
        )


class NoopLoad:
    """Floor no-ops published straight to the broker; each delivery appends to a Redis list."""

    def __init__(self, app: Celery, *, redis_url: str) -> None:
        self.app = app
        self.done = redis.Redis.from_url(redis_url)
        self.submitted = 0

    def submit(self, first: int, count: int) -> None:
        with self.app.producer_or_acquire() as producer:
            for _ in range(count):
                self.app.send_task(NOOP_TASK_NAME, args=[time.time()], producer=producer, ignore_result=True)
        self.submitted += count

    def forget(self) -> None:
        self.done.delete(DONE_KEY)
        self.submitted = 0

    def finished_count(self) -> int:
        return self.done.llen(DONE_KEY)

    def completions(self) -> Completions:
        pairs = [entry.split() for entry in self.done.lrange(DONE_KEY, 0, -1)]
        duplicates = max(0, len(pairs) - self.submitted)
        return Completions(
            [float(sent) for sent, _ in pairs],
            [float(done) for _, done in pairs],
            failed=0,
            not_exactly_once=duplicates,
        )
