"""Scenario 10: dead letters. Tasks that failed for good or ran out of retries are listed by
`python cli.py failed`, replayed by `python cli.py replay ID` / `--all` with their attempt history
kept, and complete once the fault is gone."""

from __future__ import annotations

from agent_service.models import TaskStatus
from tests.chaos.harness import sized
from tests.support import run_cli

EXHAUSTED, REFUSED = sized(2, 10), sized(1, 5)


def test_failed_tasks_are_listed_replayed_and_keep_their_history(scenario, llm):
    # Given tasks that ran out of retries (503) and tasks refused for good (401)
    run = scenario("10 dead letters replayed")
    run.start_worker("replayer")
    rules = [
        llm.add_fault(fault=fault, match=f"{run.prefix(label)} #")
        for fault, label in (("503", "exhausted"), ("401", "refused"))
    ]
    exhausted, refused = run.submit(EXHAUSTED, label="exhausted"), run.submit(REFUSED, label="refused")
    assert {row.status for row in run.wait(timeout=60).values()} == {TaskStatus.FAILED}
    # When they are listed, the fault is removed, and they are replayed (one by id, the rest with --all)
    listing = run_cli(run.settings, "failed", "--limit", "500").stdout
    for rule in rules:
        llm.http.delete(f"/control/faults/{rule}").raise_for_status()
    by_id = run_cli(run.settings, "replay", refused[0])
    every = run_cli(run.settings, "replay", "--all")
    # Then all were listed, and all complete, with the history of their failed run kept
    assert all(task_id[:8] in listing for task_id in exhausted + refused)
    assert refused[0] in by_id.stdout and f"replayed {EXHAUSTED + REFUSED - 1} task(s)" in every.stdout
    rows = run.wait(timeout=60)
    assert {(row.status, row.replays, row.attempts) for row in rows.values()} == {(TaskStatus.COMPLETED, 1, 1)}
    budget = run.settings.task_max_attempts
    assert {tuple(a.outcome for a in run.attempts(t)) for t in exhausted} == {("retried",) * (budget - 1) + ("failed",)}
    assert {tuple(a.outcome for a in run.attempts(t)) for t in refused} == {("failed",)}
    tally = run.tally()
    assert (tally.completed, tally.lost, tally.duplicates) == (EXHAUSTED + REFUSED, 0, 0)
