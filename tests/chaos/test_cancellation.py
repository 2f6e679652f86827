"""Scenario 9: cancelling a queued or a running task (API and `python cli.py cancel`): it ends
cancelled, and never becomes completed, even when its LLM reply arrives later."""

from __future__ import annotations

import time

from agent_service.models import TaskStatus
from agent_service.submission.submit import cancel_task
from tests.chaos.harness import BROKERS_IN_FULL, limits_for_calls_of
from tests.support import run_cli, wait_until

SLOW_MS = 8000  # longer than a CLI process takes to start and cancel, on a busy machine too (4 s was not)
LIMITS = limits_for_calls_of(10)


def cancel_both_ways(run, task_ids: list[str]) -> None:
    """The first through the CLI, the second through the API."""
    cli, api = task_ids
    assert run_cli(run.settings, "cancel", cli).stdout.strip().endswith("cancelled")
    assert cancel_task(api, services=run.app.services) == "cancelled"


@BROKERS_IN_FULL
def test_cancelled_tasks_never_complete_whether_queued_or_running(scenario, llm):
    # Given two tasks queued before any worker runs, cancelled there
    run = scenario("9 cancel queued and running", **LIMITS)
    llm.add_fault(fault="slow", match=run.token, delay_ms=SLOW_MS)
    queued = run.submit(2, label="queued")
    cancel_both_ways(run, queued)
    # And two more that a worker is running, waiting on slow LLM replies, cancelled then
    run.start_worker("busy")
    running = run.submit(2, label="running")
    for task_id in running:
        run.wait_until_running(task_id)
    wait_until(lambda: len(llm.requests(run.prefix("running"))) == 2, what="LLM calls of the running tasks")
    cancel_both_ways(run, running)
    # When the LLM replies have arrived
    time.sleep(SLOW_MS / 1000 + 1.5)
    # Then all four stay cancelled, none logged completed, and the queued ones never reached the LLM
    assert {row.status for row in run.rows()} == {TaskStatus.CANCELLED}
    assert run.completions_logged() == {} and llm.requests(run.prefix("queued")) == []
    tally = run.tally()
    assert (tally.completed, tally.failed, tally.lost) == (0, 4, 0)
