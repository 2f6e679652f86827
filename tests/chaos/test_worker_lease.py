"""Scenario 12: a worker lost, or paused, while the broker would wait an hour to redeliver its messages
(BROKER_VISIBILITY_TIMEOUT_SECONDS and STALE_TASK_AFTER_SECONDS at their defaults). What brings its tasks back
is its liveness lease: once it has not been renewed for WORKER_LEASE_SECONDS, the sweeper publishes them
again (on Redis it hands back the messages the worker had received, too) and another worker takes them over.
At full size (`make chaos`) the lease and the sweep run at their defaults (30 s and 15 s), and a SIGKILLed
worker's tasks must be resumed within 60 s.

12a SIGKILL: every task completes once, and no call answered before the kill is made again (the replies
were kept); the deferred tasks it had received and not claimed (their messages held delivered by Redis) run
elsewhere, in their first attempt, without waiting for the visibility timeout. 12b SIGSTOP shorter than the
lease: the paused worker keeps its tasks and completes them itself.
12c SIGSTOP longer than the lease: another worker takes them over and completes them once; the woken worker
cannot complete them again, its late outcome is discarded."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import redis

from agent_service.models import TaskStatus
from tests.chaos.harness import FULL, Scenario, sized
from tests.chaos.takeover import (
    DEFAULT_LEASE,
    DEFAULT_SWEEP,
    SLOW_BROKER,
    calls_after,
    held_by,
    owner_of,
    replies_kept_for_every_running_task,
    wait_for_owner,
    wait_for_takeover,
)
from tests.support import wait_until

KILL = dict(
    SLOW_BROKER,
    worker_lease_seconds=sized(3, DEFAULT_LEASE),
    sweep_interval_seconds=sized(1, DEFAULT_SWEEP),
)
# A call in flight when the worker is paused must outlive the short pause: LLM timeout < soft < hard limit.
PAUSE = dict(
    SLOW_BROKER,
    worker_lease_seconds=sized(9, DEFAULT_LEASE),
    sweep_interval_seconds=sized(1, DEFAULT_SWEEP),
    llm_timeout_seconds=sized(20, 40),
    task_soft_time_limit_seconds=sized(25, 45),
    task_time_limit_seconds=sized(30, 50),
)
# At most two thirds of the lease: the last renewal may have been a third of it before the pause.
SHORT_PAUSE = PAUSE["worker_lease_seconds"] / 3


def test_sigkilled_workers_tasks_and_messages_are_resumed_by_another_once_its_lease_expires_none_twice_no_call_again(
    scenario, llm, redis_server
):
    # Given a worker whose tasks' calls take 500 ms (the rescuer, which runs beat, starts just before the kill)
    run = scenario("12a SIGKILL, lease", **KILL)
    llm.add_fault(fault="slow", match=run.token, delay_ms=500)
    doomed = run.start_worker("doomed")
    broker = redis_server.client()
    # And deferred tasks (their one message has a countdown) that only the doomed worker received and holds in
    # its memory, unclaimed: on Redis their messages stay delivered, unacknowledged, for the visibility timeout
    # (fewer than the worker prefetches, 8, so that it receives them all)
    deferred = run.defer(sized(4, 6), countdown=sized(10, 30))
    wait_until(lambda: set(deferred) <= delivered(broker), what="the doomed worker's deferred tasks", timeout=60)
    # And tasks running on it
    tasks = sized(24, 200)
    run.submit(tasks)
    owner = wait_for_owner(run, doomed)
    wait_until(lambda: len(held_by(run, owner)) >= 2, what="tasks running on the doomed worker", timeout=60)
    with run.rows_locked():
        # And every reply under way arrived and was kept, none recorded yet (the rows are locked)
        wait_until(lambda: replies_kept_for_every_running_task(run, broker), what="kept replies", timeout=30)
        held = held_by(run, owner)
        assert not set(held) & set(deferred)
        run.start_worker("rescuer", beat=True)
        # When the doomed worker's whole process group is SIGKILLed
        killed_at = run.kill_worker(doomed)
    # Then another worker has taken over each of its tasks once its lease expired
    resumed_after = wait_for_takeover(run, held, owner, since=killed_at, timeout=sized(60, 120))
    # And ran the deferred tasks, in their first attempt: their messages were handed back (not after an hour)
    rescued = run.wait(deferred, timeout=sized(60, 120))
    assert {(row.status, row.attempts) for row in rescued.values()} == {(TaskStatus.COMPLETED, 1)}
    handed_back_after = round(max(row.finished_at.timestamp() for row in rescued.values()) - killed_at, 1)
    run.wait(timeout=sized(60, 300))
    tally = run.tally(
        recovery_seconds=max(resumed_after, handed_back_after), repeated_calls=calls_after(run, held, killed_at)
    )
    # And every task completed exactly once, none lost, and no call was made again: each was answered and kept
    assert (tally.completed, tally.lost, tally.duplicates) == (tasks + len(deferred), 0, 0)
    assert tally.repeated_calls == 0 and tally.llm_calls == tasks + len(deferred)
    assert all(run.attempts(task_id)[0].outcome == "lost" for task_id in held)
    if FULL:  # with the default lease and sweep: lost within a minute
        assert tally.recovery_seconds <= 60, f"resumed {tally.recovery_seconds:.1f} s after the kill"


def test_paused_worker_keeps_its_tasks_within_its_lease_and_loses_them_once_past_it_completing_none_twice(
    scenario, llm
):
    # Given two workers (one running beat) busy with tasks whose calls take a second
    run = scenario("12b/c SIGSTOP, lease", **PAUSE)
    llm.add_fault(fault="slow", match=run.token, delay_ms=1000)
    paused = run.start_worker("paused")
    other = run.start_worker("other", beat=True)
    run.submit(sized(16, 100), label="short")
    owner = wait_for_owner(run, paused)
    held = wait_for_calls_under_way(run, owner)
    # When the worker is stopped (SIGSTOP) for a third of its lease, then continued
    pause(paused, seconds=SHORT_PAUSE)
    # Then it kept those tasks and completed each itself, in its one attempt: nothing was taken over
    for task_id, row in run.wait(held, timeout=60).items():
        assert (row.status, row.attempts, row.claimed_by) == (TaskStatus.COMPLETED, 1, owner), task_id
        assert run.attempts(task_id) == []
    run.wait(timeout=sized(60, 300))

    # Given more tasks, some under way on the same worker
    run.submit(sized(16, 100), label="long")
    held = wait_for_calls_under_way(run, owner)
    # When it is stopped past its lease: until the other worker has taken over and completed its tasks
    os.killpg(paused.pid, signal.SIGSTOP)
    try:
        stopped_at = time.monotonic()
        rescued = run.wait(held, timeout=PAUSE["worker_lease_seconds"] + 60)
        pause_seconds = time.monotonic() - stopped_at
    finally:
        os.killpg(paused.pid, signal.SIGCONT)
    rescuer = owner_of(run, other)
    assert {(row.status, row.attempts, row.claimed_by) for row in rescued.values()} == {
        (TaskStatus.COMPLETED, 2, rescuer)
    }
    # Then the woken worker's late outcomes are discarded: it reports each such task superseded, never completed
    wait_until(lambda: set(held) <= superseded_on(run, "paused"), what="the woken worker's late outcomes", timeout=60)
    run.wait(timeout=sized(60, 300))
    tally = run.tally(recovery_seconds=round(pause_seconds, 1))
    assert (tally.lost, tally.duplicates, tally.completed) == (0, 0, tally.tasks)
    assert all(run.attempts(task_id)[0].outcome == "lost" for task_id in held)


def delivered(broker: redis.Redis) -> set[str]:
    """The ids of the tasks whose message the Redis broker holds as delivered and not yet acknowledged."""
    return {json.loads(entry)[0]["headers"]["id"] for entry in broker.hvals("unacked")}


def wait_for_calls_under_way(run: Scenario, owner: str) -> list[str]:
    """Wait until the owner runs tasks whose calls are under way at the LLM server; their ids."""

    def under_way() -> bool:
        # The tasks held first, then the calls: a call seen under way is one of a task still held. The held set is
        # read once, not per row, which took seconds, by when the calls seen under way had ended.
        held = set(held_by(run, owner))
        calling = {title for title, calls in run.calls_by_task().items() if any(c["ended"] is None for c in calls)}
        return any(row.title in calling for row in run.rows() if str(row.id) in held)

    wait_until(under_way, what="calls under way on the worker", timeout=60)
    return held_by(run, owner)


def pause(worker: subprocess.Popen, *, seconds: float) -> None:
    """SIGSTOP the worker's process group (main process, LLM process, beat) for `seconds`: a long GC pause or
    a stalled disk, as the rest of the system sees it."""
    os.killpg(worker.pid, signal.SIGSTOP)
    try:
        time.sleep(seconds)
    finally:
        os.killpg(worker.pid, signal.SIGCONT)


def superseded_on(run: Scenario, label: str) -> set[str]:
    """The tasks whose claim the worker `label` reported lost (taken over) when it came to record them."""
    return run.logged_outcomes(label, status="superseded")
