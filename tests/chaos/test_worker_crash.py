"""Scenario 1: a whole worker is SIGKILLed with tasks in flight; a new worker (with the beat-driven
sweeper) finishes every task, each exactly once, and leaves no row running."""

from __future__ import annotations

from models import TaskStatus
from tests.chaos.harness import sized

TASKS = sized(40, 200)


def test_sigkilled_worker_loses_no_task_and_none_completes_twice(scenario, llm):
    # Given a worker busy with tasks whose LLM calls take about 500 ms
    run = scenario("1 SIGKILL whole worker", worker_concurrency=4)
    llm.add_fault(fault="slow", match=run.token, delay_ms=500)
    doomed = run.start_worker("doomed")
    run.submit(TASKS)
    run.wait_for_progress(completed=4)
    # When its whole process group is SIGKILLed mid-flight, and a new worker with beat starts
    run.kill_worker(doomed)
    stranded = run.status_counts()
    run.start_worker("rescuer", beat=True)
    # Then every task completes exactly once and no row stays running
    run.wait(timeout=sized(90, 300))
    tally = run.tally()
    assert stranded["running"] > 0, f"nothing was in flight when the worker died: {stranded}"
    assert (tally.completed, tally.lost, tally.duplicates) == (TASKS, 0, 0)
    lost_attempts = [a for row in run.rows() for a in run.attempts(str(row.id)) if a.outcome == "lost"]
    assert len(lost_attempts) >= stranded["running"]
    assert {row.status for row in run.rows()} == {TaskStatus.COMPLETED}
