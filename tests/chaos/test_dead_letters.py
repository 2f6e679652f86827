"""Scenario 10: dead letters. Tasks that failed for good or ran out of retries are listed by
`python cli.py failed`, replayed by `python cli.py replay ID` / `--all` with their attempt history
kept, and complete once the fault is gone. On RabbitMQ, a message handed back more than BROKER_DELIVERY_LIMIT
times is dead-lettered by the broker, and its task joins them."""

from __future__ import annotations

import pytest

from agent_service.messaging.routing import AGENT_QUEUE, DEAD_LETTER_QUEUE
from agent_service.models import TaskStatus
from tests.chaos.harness import RABBITMQ, limits_for_calls_of, sized
from tests.support import run_cli, wait_until

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


# The hanging call must still be under way when its worker is killed, a few seconds after it began.
HANG_LIMITS = limits_for_calls_of(20)


@pytest.mark.parametrize("broker", [RABBITMQ], indirect=True)
def test_a_message_handed_back_past_the_delivery_limit_is_dead_lettered_and_its_task_failed_for_replay(
    scenario, llm, broker
):
    # Given a task whose LLM call hangs, on quorum queues that allow one redelivery (BROKER_DELIVERY_LIMIT=1)
    run = scenario("10b dead-lettered by the broker", broker_delivery_limit=1, **HANG_LIMITS)
    hang = llm.add_fault(fault="hang", match=run.token)
    [task_id] = run.submit(1)
    # When two workers in turn die holding its message (a poison message that kills whoever takes it)
    for attempt, label in enumerate(("first", "second"), start=1):
        holder = run.start_worker(label)
        run.wait_until_running(task_id, attempt=attempt)
        run.kill_worker(holder)
    # Then the broker dead-letters the message instead of delivering it a third time, and the sweeper fails
    # the task, saying why
    llm.remove_fault(hang)
    run.start_worker("sweeper", beat=True)
    [row] = run.wait([task_id], timeout=sized(60, 120)).values()
    assert row.status == TaskStatus.FAILED and "BROKER_DELIVERY_LIMIT" in row.error
    # (the broker's counts lag by its statistics interval)
    wait_until(lambda: broker.messages(AGENT_QUEUE) + broker.messages(DEAD_LETTER_QUEUE) == 0, what="drained queues")
    # And it is a dead letter like any failed task: listed, and replayed it completes, once
    assert task_id[:8] in run_cli(run.settings, "failed").stdout
    assert task_id in run_cli(run.settings, "replay", task_id).stdout
    [row] = run.wait([task_id], timeout=sized(60, 120)).values()
    assert (row.status, row.replays) == (TaskStatus.COMPLETED, 1)
    tally = run.tally()
    assert (tally.completed, tally.lost, tally.duplicates) == (1, 0, 0)
