"""What the liveness-lease scenarios read: which worker process owns which task, when a lost owner's tasks
were taken over, the replies kept for running tasks, and the calls made after a fault."""

from __future__ import annotations

import subprocess
import time

import redis

from agent_service.config.maintenance import MaintenanceSettings
from agent_service.execution.replies import KEPT_PREFIX
from agent_service.models import TaskStatus
from tests.chaos.harness import Scenario
from tests.support import wait_until

DEFAULT_LEASE = MaintenanceSettings.model_fields["worker_lease_seconds"].default
DEFAULT_SWEEP = MaintenanceSettings.model_fields["sweep_interval_seconds"].default
# The broker and the stale threshold as shipped: an hour and two before they would bring a task back.
SLOW_BROKER = dict(broker_visibility_timeout_seconds=3600, stale_task_after_seconds=7200, worker_concurrency=8)


def wait_for_owner(run: Scenario, worker: subprocess.Popen) -> str:
    """The claim owner the worker's process writes in the rows it claims (host/pid namespace/pid)."""
    wait_until(lambda: owner_of(run, worker), what=f"a task claimed by worker {worker.pid}", timeout=60)
    return owner_of(run, worker)


def owner_of(run: Scenario, worker: subprocess.Popen) -> str:
    owners = {row.claimed_by for row in run.rows() if row.claimed_by and row.claimed_by.endswith(f"/{worker.pid}")}
    return owners.pop() if owners else ""


def held_by(run: Scenario, owner: str) -> list[str]:
    return [str(row.id) for row in run.rows() if row.status == TaskStatus.RUNNING and row.claimed_by == owner]


def replies_kept_for_every_running_task(run: Scenario, kept: redis.Redis) -> bool:
    """No call of the scenario under way, and a kept reply for every running row."""
    if any(call["ended"] is None for call in run.llm.requests(run.prefix())):
        return False
    running = [row for row in run.rows() if row.status == TaskStatus.RUNNING]
    return all(kept.exists(f"{KEPT_PREFIX}{row.id}:{row.attempts}") for row in running)


def wait_for_takeover(run: Scenario, held: list[str], owner: str, *, since: float, timeout: float) -> float:
    """Wait until no task of `held` is running under `owner` any more; seconds from `since` (wall clock)."""

    def taken_over() -> bool:
        rows = {str(row.id): row for row in run.rows()}
        return all(rows[t].status != TaskStatus.RUNNING or rows[t].claimed_by != owner for t in held)

    wait_until(taken_over, what="the lost worker's tasks taken over", timeout=timeout)
    return round(time.time() - since, 1)


def calls_after(run: Scenario, held: list[str], moment: float) -> int:
    """How many LLM calls the tasks of `held` made after `moment` (wall clock, as the LLM server logs it)."""
    titles = {row.title for row in run.rows() if str(row.id) in held}
    return sum(1 for title, calls in run.calls_by_task().items() if title in titles for c in calls if c["at"] > moment)
