"""What every chaos scenario does: size itself, start its own workers, submit tagged tasks, wait, and
count the outcome (completed, failed, lost, duplicate completions, LLM calls) into a results row."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path

import pytest
from sqlalchemy import select

from agent_service.clock import utcnow
from agent_service.config import Settings
from agent_service.database import session_scope
from agent_service.devtools.processes import ROOT, start_worker, stop_process
from agent_service.messaging.publisher import publish_tasks
from agent_service.models import Agent, Task, TaskAttempt, TaskStatus
from agent_service.tasks import create_agent_tasks
from agent_service.worker import create_celery_app
from tests.support import LLMControl, add_agent, make_settings, wait_for_final, wait_until

SCALE = os.environ.get("CHAOS_SCALE", "short")
FULL = SCALE == "full"
LOG_DIR = ROOT / ".local" / "chaos-logs"
RESULTS_JSON = ROOT / ".local" / ("chaos-results.json" if FULL else f"chaos-results-{SCALE}.json")

# LLM timeout < soft limit < hard limit < Redis visibility timeout < sweeper threshold, and a liveness lease below
# that threshold, as Settings demands.
LIMITS = {
    "short": dict(
        llm_timeout_seconds=2,
        task_soft_time_limit_seconds=3,
        task_time_limit_seconds=4,
        broker_visibility_timeout_seconds=6,
        stale_task_after_seconds=8,
        worker_lease_seconds=6,
        sweep_interval_seconds=1,
        requeue_pending_after_seconds=2,
        worker_soft_shutdown_seconds=10,
    ),
    "full": dict(
        llm_timeout_seconds=10,
        task_soft_time_limit_seconds=20,
        task_time_limit_seconds=25,
        broker_visibility_timeout_seconds=30,
        stale_task_after_seconds=40,
        worker_lease_seconds=20,
        sweep_interval_seconds=5,
        requeue_pending_after_seconds=5,
        worker_soft_shutdown_seconds=30,
    ),
}["full" if FULL else "short"]


REDIS, RABBITMQ = "redis", "rabbitmq"
# The scenarios that involve the broker run on both (the `broker` fixture); the short form (`make test`) runs
# the RabbitMQ side of the representative ones only, `make chaos` all of them.
BROKERS = pytest.mark.parametrize("broker", [REDIS, RABBITMQ], indirect=True)
BROKERS_IN_FULL = pytest.mark.parametrize("broker", [REDIS, RABBITMQ] if FULL else [REDIS], indirect=True)


def limits_for_calls_of(seconds: int) -> dict[str, int]:
    """Time limits in the order Settings demands, for a scenario whose LLM calls may take up to `seconds`."""
    return dict(
        llm_timeout_seconds=seconds,
        task_soft_time_limit_seconds=seconds + 1,
        task_time_limit_seconds=seconds + 2,
        broker_visibility_timeout_seconds=seconds + 4,
        worker_lease_seconds=seconds + 4,
        stale_task_after_seconds=seconds + 6,
    )


def sized(short, full):
    """The short value under `pytest`, the full one under `make chaos` (CHAOS_SCALE=full)."""
    return full if FULL else short


def chaos_settings(*, database_url: str, redis_url: str, llm_url: str, **overrides) -> Settings:
    return make_settings(
        database_url=database_url, redis_url=redis_url, openai_base_url=f"{llm_url}/v1", **{**LIMITS, **overrides}
    )


@dataclass
class Tally:
    """One row of the results table."""

    scenario: str
    tasks: int
    completed: int
    failed: int
    lost: int
    duplicates: int
    llm_calls: int
    seconds: float
    scale: str = SCALE
    repeated_calls: int | None = None  # calls made again after a crash (only those unanswered at the kill)
    recovery_seconds: float | None = None  # from the fault to the lost worker's tasks resumed elsewhere

    @property
    def extra_llm_calls(self) -> int:
        return self.llm_calls - self.tasks


@dataclass
class Scenario:
    """A scenario's own settings, app, workers and tagged tasks; `token` isolates its LLM requests."""

    name: str
    settings: Settings
    llm: LLMControl
    token: str = field(default_factory=lambda: f"chaos-{uuid.uuid4().hex[:10]}")
    submitted: int = 0
    workers: list[subprocess.Popen] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        shutil.rmtree(self.log_dir, ignore_errors=True)

    @cached_property
    def app(self):
        return create_celery_app(self.settings)

    @property
    def session_factory(self):
        return self.app.services.session_factory

    @property
    def log_dir(self) -> Path:
        return LOG_DIR / self.name

    @cached_property
    def agent(self) -> Agent:
        return add_agent(self.session_factory, prefix="chaos")

    # ---------------------------------------------------------------- workers

    def start_worker(self, label: str, *, beat: bool = False, through: tuple[str, ...] = ()) -> subprocess.Popen:
        """A `celery worker` on this scenario's settings (pool and concurrency included); with `beat`,
        it also runs the sweeper on its schedule; `through`: the command that runs it (on another host)."""
        extra = ("-B", "--schedule", str(self.log_dir / f"{label}-beat-schedule")) if beat else ()
        process = start_worker(
            env=self.settings.as_env(),
            log_path=self.log_dir / f"{label}.log",
            name=f"{self.name}-{label}".replace(" ", "-"),
            extra_args=extra,
            through=through,
        )
        self.workers.append(process)
        return process

    def close(self) -> None:
        for process in self.workers:
            stop_process(process)
        self.app.services.engine.dispose()

    @staticmethod
    def kill_worker(process: subprocess.Popen) -> float:
        """SIGKILL the worker's whole process group: main process, pool children and beat. Returns when
        (wall-clock time, as the LLM server logs it)."""
        killed_at = time.time()
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
        return killed_at

    # ---------------------------------------------------------------- tasks

    def submit(self, count: int, *, label: str = "task", agent: Agent | None = None) -> list[str]:
        agent = agent or self.agent
        self.submitted += count
        items = [
            {
                "title": f"{self.prefix(label)} #{self.submitted - count + i:05d}",
                "agent_id": str(agent.id),
                "user_id": "chaos",
            }
            for i in range(count)
        ]
        return create_agent_tasks(items, app=self.app)

    def prefix(self, label: str | None = None) -> str:
        """The start of the titles of this scenario's tasks (with `label`: of the groups so labelled);
        a title is `{prefix} #00042`, so `{prefix} #` matches one group and a full title one task."""
        return f"{self.token} {label}" if label else self.token

    def wait(self, task_ids: list[str] | None = None, *, timeout: float) -> dict[str, Task]:
        """Every task (or those of `task_ids`) once final; on a timeout the assertion says which workers still
        run and what they last logged at warning level or above, since CI keeps no other trace of them."""
        ids = task_ids or [str(row.id) for row in self.rows()]
        try:
            return wait_for_final(self.session_factory, ids, timeout=timeout)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.workers_report()}") from None

    def workers_report(self, lines: int = 12) -> str:
        """Each worker's exit code (None: still running), then the last `lines` warnings or errors logged."""
        states = ", ".join(f"pid {worker.pid}: {worker.poll()}" for worker in self.workers)
        problems = [
            f"{entry['ts']:.3f} {entry['level']} {entry['logger']}: {entry['message'][:300]}"
            for log in sorted(self.log_dir.glob("*.log"))
            for entry in map(_json_line, log.read_bytes().splitlines())
            if entry.get("level") in ("warning", "error", "critical")
        ]
        return "\n".join([f"workers (exit code): {states}", *problems[-lines:]])

    def rows(self, label: str | None = None) -> list[Task]:
        with session_scope(self.session_factory) as session:
            return list(session.scalars(select(Task).where(Task.title.startswith(self.prefix(label)))))

    def status_counts(self) -> Counter:
        return Counter(row.status.value for row in self.rows())

    def wait_for_progress(self, *, completed: int, running: int = 1, timeout: float = 60) -> None:
        """Poll until at least `completed` of the scenario's tasks completed and `running` are running."""
        wait_until(
            lambda: (counts := self.status_counts())["completed"] >= completed and counts["running"] >= running,
            what=f"{completed} completed and {running} running tasks",
            timeout=timeout,
        )

    @contextmanager
    def rows_locked(self, label: str | None = None) -> Iterator[None]:
        """Hold a row lock on every task of the scenario (with `label`: of that group): a worker can neither
        claim one nor record an outcome until the block ends (a database too slow to answer, frozen)."""
        with session_scope(self.session_factory) as session:
            session.execute(select(Task.id).where(Task.title.startswith(self.prefix(label))).with_for_update())
            yield

    def defer(self, count: int, *, countdown: float, label: str = "deferred") -> list[str]:
        """Add `count` queued tasks whose only message carries a `countdown`, as a deferred or retried task's
        does (a worker that receives one holds it in its memory until then, unclaimed); returns their ids."""
        rows = [
            Task(
                id=uuid.uuid4(),
                title=f"{self.prefix(label)} #{self.submitted + i:05d}",
                agent_id=self.agent.id,
                user_id="chaos",
                status=TaskStatus.QUEUED,
                queued_at=utcnow(),
            )
            for i in range(count)
        ]
        self.submitted += count
        with session_scope(self.session_factory) as session:
            session.add_all(rows)
        publish_tasks(self.app, [row.id for row in rows], countdown=countdown)
        return [str(row.id) for row in rows]

    def calls_by_task(self) -> dict[str, list[dict]]:
        """The LLM server's log of the scenario's calls, by the title of the task that made each."""
        calls: dict[str, list[dict]] = {}
        for call in self.llm.requests(self.prefix()):
            title = re.search(rf"{re.escape(self.prefix())} .*? #\d{{5}}", call["text"])
            calls.setdefault(title.group(0) if title else "?", []).append(call)
        return calls

    def attempts(self, task_id: str) -> list[TaskAttempt]:
        with session_scope(self.session_factory) as session:
            query = select(TaskAttempt).where(TaskAttempt.task_id == uuid.UUID(task_id)).order_by(TaskAttempt.id)
            return list(session.scalars(query))

    def wait_until_running(self, task_id: str, *, attempt: int = 1, timeout: float = 30) -> Task:
        """Poll until attempt `attempt` (or a later one) of the task is running; returns the row."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with session_scope(self.session_factory) as session:
                row = session.get(Task, uuid.UUID(task_id))
            if row.status == TaskStatus.RUNNING and row.attempts >= attempt:
                return row
            if row.status.is_final:
                raise AssertionError(f"task {task_id} ended {row.status.value} before attempt {attempt} ran")
            time.sleep(0.05)
        raise AssertionError(f"attempt {attempt} of task {task_id} was not running after {timeout}s")

    # ---------------------------------------------------------------- counting

    def completions_logged(self) -> Counter:
        """How many times each task id was logged as completed, across every worker of the scenario."""
        return Counter(entry.get("task_id") for entry in self._outcomes_logged("*") if entry["status"] == "completed")

    def logged_outcomes(self, label: str, *, status: str) -> set[str]:
        """The ids of the tasks the worker `label` logged an outcome `status` for."""
        return {entry.get("task_id") for entry in self._outcomes_logged(label) if entry["status"] == status}

    def _outcomes_logged(self, label: str) -> Iterator[dict]:
        for log in self.log_dir.glob(f"{label}.log"):
            for line in log.read_bytes().splitlines():
                entry = _json_line(line)
                if entry.get("task") == "agent_task" and "status" in entry:
                    yield entry

    def worker_log(self) -> str:
        return "".join(log.read_text(errors="replace") for log in sorted(self.log_dir.glob("*.log")))

    def tally(
        self,
        label: str | None = None,
        *,
        name: str | None = None,
        repeated_calls: int | None = None,
        recovery_seconds: float | None = None,
    ) -> Tally:
        """Count the outcome (of the `label` group), store it as a results row and return it."""
        rows = self.rows(label)
        completed = sum(row.status == TaskStatus.COMPLETED for row in rows)
        failed = sum(row.status in (TaskStatus.FAILED, TaskStatus.CANCELLED) and bool(row.error) for row in rows)
        logged = self.completions_logged()
        duplicates = sum(max(0, logged[str(row.id)] - 1) for row in rows)
        tally = Tally(
            name or self.name,
            len(rows),
            completed,
            failed,
            len(rows) - completed - failed,
            duplicates,
            len(self.llm.requests(self.prefix(label))),
            round(time.monotonic() - self.started, 1),
            repeated_calls=repeated_calls,
            recovery_seconds=recovery_seconds,
        )
        record(tally)
        return tally


def _json_line(line: bytes) -> dict:
    if not line.startswith(b"{"):
        return {}
    try:
        return json.loads(line)
    except ValueError:
        return {}


def record(tally: Tally) -> None:
    """Add (or replace) the scenario's row in the results file that the terminal summary prints."""
    rows = {row["scenario"]: row for row in load_results()}
    rows[tally.scenario] = {**asdict(tally), "extra_llm_calls": tally.extra_llm_calls}
    RESULTS_JSON.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_JSON.write_text(json.dumps(list(rows.values()), indent=1))


def load_results() -> list[dict]:
    return json.loads(RESULTS_JSON.read_text()) if RESULTS_JSON.exists() else []
