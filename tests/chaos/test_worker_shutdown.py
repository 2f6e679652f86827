"""Scenario 2: a warm shutdown mid-load, a pool child killed mid-task, and a poison task that kills
its process on every attempt."""

from __future__ import annotations

import os
import signal

from agent_service.models import TaskStatus
from tests.chaos.harness import sized
from tests.support import wait_until

TASKS = sized(30, 100)
SLOW_MS = 1500  # long enough to catch the attempt running, well inside LLM_TIMEOUT_SECONDS
# A pool child exists only in the prefork pool; the warm shutdown runs on the worker's default pool.
PREFORK = dict(worker_pool="prefork", worker_concurrency=2)


def kill_running_child(run, llm, task_id: str, *, attempt: int) -> None:
    """SIGKILL the pool child while attempt `attempt` of the task waits on the LLM (its pid is in the claim)."""
    row = run.wait_until_running(task_id, attempt=attempt)
    wait_until(lambda: len(llm.requests(row.title)) >= attempt, what=f"LLM call of attempt {attempt}")
    os.kill(int(row.claimed_by.rpartition("/")[2]), signal.SIGKILL)


def test_warm_shutdown_mid_load_hands_every_task_to_the_other_worker(scenario, llm):
    # Given two workers sharing a load of ~500 ms tasks
    run = scenario("2a warm shutdown, SIGTERM", worker_concurrency=2)
    llm.add_fault(fault="slow", match=run.token, delay_ms=500)
    leaving = run.start_worker("leaving")
    run.start_worker("staying")
    run.submit(TASKS)
    run.wait_for_progress(completed=4)
    # When one worker's main process gets SIGTERM
    leaving.send_signal(signal.SIGTERM)
    # Then it exits cleanly after its running tasks, and the other finishes the rest: none lost, none twice
    assert leaving.wait(timeout=60) == 0
    run.wait(timeout=sized(60, 180))
    tally = run.tally()
    assert (tally.completed, tally.lost, tally.duplicates) == (TASKS, 0, 0)


def test_task_of_a_killed_pool_child_completes_on_a_retry(scenario, llm):
    # Given a worker running a task
    run = scenario("2b pool child SIGKILLed", **PREFORK)
    llm.add_fault(fault="slow", match=run.token, delay_ms=SLOW_MS)
    run.start_worker("survivor")
    [task_id] = run.submit(1)
    # When the pool child running it is SIGKILLed
    kill_running_child(run, llm, task_id, attempt=1)
    # Then the redelivery takes it over at once and completes it; the history shows the lost attempt
    [row] = run.wait(timeout=30).values()
    assert (row.status, row.attempts) == (TaskStatus.COMPLETED, 2)
    assert [(a.attempt, a.outcome) for a in run.attempts(task_id)] == [(1, "lost")]
    tally = run.tally()
    assert (tally.llm_calls, tally.duplicates) == (2, 0)


def test_poison_task_that_kills_its_process_fails_after_the_attempt_budget(scenario, llm):
    # Given a worker (with the sweeper: a child killed just after its fork is not always noticed by the pool,
    # and its job then ends at the hard time limit, acked, leaving the row to the sweeper) and a task
    # whose every attempt kills the process running it
    run = scenario("2c poison task, child killed each try", **PREFORK)
    llm.add_fault(fault="slow", match=run.token, delay_ms=SLOW_MS)
    run.start_worker("survivor", beat=True)
    [task_id] = run.submit(1)
    budget = run.settings.task_max_attempts
    for attempt in range(1, budget + 1):
        kill_running_child(run, llm, task_id, attempt=attempt)
    # Then the next delivery fails it without calling the LLM again: no endless redelivery loop
    [row] = run.wait(timeout=30).values()
    assert row.status == TaskStatus.FAILED and row.attempts == budget + 1
    assert row.error == f"gave up after {budget} attempts: the worker running it was lost each time"
    assert [a.outcome for a in run.attempts(task_id)] == ["lost"] * budget + ["failed"]
    assert run.tally().llm_calls == budget
