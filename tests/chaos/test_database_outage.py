"""Scenario 4: PostgreSQL goes away mid-run (a fast restart, or every worker connection terminated).
Tasks retry and complete once it is back; no row stays running past the stale threshold."""

from __future__ import annotations

import pytest

from tests.chaos.harness import sized

TASKS = sized(30, 150)
OUTAGES = {
    "restart": lambda pg, database: pg.restart(),
    "terminate backends": lambda pg, database: pg.terminate_connections(database),
}


@pytest.mark.parametrize("outage", OUTAGES)
def test_tasks_complete_after_the_database_comes_back(outage, scenario, llm, pg, chaos_db):
    # Given a worker with beat, busy with ~300 ms tasks on the private PostgreSQL cluster
    run = scenario(f"4 PostgreSQL {outage}", worker_concurrency=4)
    llm.add_fault(fault="slow", match=run.token, delay_ms=300)
    run.start_worker("survivor", beat=True)
    run.submit(TASKS)
    run.wait_for_progress(completed=4)
    # When the database restarts, or kills every worker connection, mid-run
    OUTAGES[outage](pg, chaos_db)
    # Then every task completes, once, within the stale threshold plus a sweep or two
    run.wait(timeout=sized(90, 300))
    tally = run.tally()
    assert (tally.completed, tally.lost, tally.duplicates) == (TASKS, 0, 0)
