"""Scenario 1: a whole worker is SIGKILLed with tasks in flight, some with their LLM replies in hand but not
yet recorded; a new worker (with the beat-driven sweeper) finishes every task, each exactly once, leaves no
row running, and makes no call again that the LLM server had answered before the kill: the replies were
kept in Redis. Only the calls still unanswered at the kill are made again, and the row says how many."""

from __future__ import annotations

import redis

from agent_service.execution.replies import KEPT_PREFIX
from agent_service.models import TaskStatus
from tests.chaos.harness import BROKERS, sized
from tests.support import wait_until

TASKS = sized(40, 200)
UNANSWERED = 2
# Calls that hang must still be under way at the kill, a few seconds in: LLM timeout < soft < hard limit <
# visibility timeout < stale threshold, as Settings demands.
LIMITS = dict(
    llm_timeout_seconds=sized(10, 20),
    task_soft_time_limit_seconds=sized(11, 21),
    task_time_limit_seconds=sized(12, 22),
    broker_visibility_timeout_seconds=sized(14, 25),
    stale_task_after_seconds=sized(16, 30),
)


@BROKERS
def test_sigkilled_worker_loses_no_task_none_completes_twice_and_no_answered_call_is_made_again(
    scenario, llm, redis_server
):
    # Given a worker busy with tasks whose LLM calls take about 500 ms, and two whose calls hang
    run = scenario("1 SIGKILL whole worker", worker_concurrency=4, **LIMITS)
    hang = llm.add_fault(fault="hang", match=run.prefix("unanswered"))  # the first matching rule applies
    llm.add_fault(fault="slow", match=run.token, delay_ms=500)
    doomed = run.start_worker("doomed")
    run.submit(UNANSWERED, label="unanswered")
    run.submit(TASKS)
    wait_until(lambda: len(llm.requests(run.prefix("unanswered"))) == UNANSWERED, what="hanging calls", timeout=60)
    run.wait_for_progress(completed=4)
    wait_until(lambda: _a_call_under_way(run, "task"), what="call under way", timeout=30)
    kept = redis_server.client()
    with run.rows_locked():
        # And the database frozen for the scenario's rows, so that replies arrive but cannot be recorded
        # (nor new tasks claimed): wait for every answer under way to arrive and be kept
        wait_until(lambda: _replies_kept_for_every_answered_running_task(run, kept), what="kept replies", timeout=30)
        stranded = run.status_counts()
        # When its whole process group is SIGKILLed
        killed_at = run.kill_worker(doomed)
    calls_at_kill = run.calls_by_task()
    llm.remove_fault(hang)
    run.start_worker("rescuer", beat=True)
    # Then every task completes exactly once and no row stays running
    run.wait(timeout=sized(90, 300))
    calls = run.calls_by_task()
    answered = {title for title, made in calls_at_kill.items() if any(_answered_before(c, killed_at) for c in made)}
    made_again = {title: [c for c in calls[title] if c["at"] > killed_at] for title in calls_at_kill}
    repeated = sum(len(again) for again in made_again.values())
    tally = run.tally(repeated_calls=repeated)
    assert stranded["running"] > UNANSWERED, f"no reply was waiting to be recorded when the worker died: {stranded}"
    assert (tally.completed, tally.lost, tally.duplicates) == (TASKS + UNANSWERED, 0, 0)
    lost_attempts = [a for row in run.rows() for a in run.attempts(str(row.id)) if a.outcome == "lost"]
    assert len(lost_attempts) >= stranded["running"]
    assert {row.status for row in run.rows()} == {TaskStatus.COMPLETED}
    # And no call the server had answered before the kill was made again: only the unanswered ones were
    assert [title for title in answered if made_again.get(title)] == []
    assert {title for title, again in made_again.items() if again} == set(_titles(run, "unanswered"))
    assert repeated == UNANSWERED
    assert list(kept.scan_iter(f"{KEPT_PREFIX}*")) == []


def _a_call_under_way(run, label: str) -> bool:
    return any(call["ended"] is None for call in run.llm.requests(run.prefix(label)))


def _replies_kept_for_every_answered_running_task(run, kept: redis.Redis) -> bool:
    """No call of the answering group still under way, and a kept reply for every one of its running rows."""
    if _a_call_under_way(run, "task"):
        return False
    running = [row for row in run.rows("task") if row.status == TaskStatus.RUNNING]
    return all(kept.exists(f"{KEPT_PREFIX}{row.id}:{row.attempts}") for row in running)


def _answered_before(call: dict, moment: float) -> bool:
    return call["ended"] == "answered" and call["ended_at"] < moment


def _titles(run, label: str) -> list[str]:
    return [row.title for row in run.rows(label)]
