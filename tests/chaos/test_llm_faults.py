"""Scenario 6: LLM storms. Each fault kind ends as the table says (status, attempts = LLM calls);
rate-limit bursts wait for Retry-After; a silent server is cut off by the client timeout."""

from __future__ import annotations

import itertools
import time

import pytest

from agent_service.models import TaskStatus
from tests.chaos.harness import LIMITS, sized

MAX_ATTEMPTS = 4
# case: (fault rule, final status, attempts (= LLM calls), start of the error)
EXPECTED = {
    "500 once": ({"fault": "500", "times": 1}, TaskStatus.COMPLETED, 2, None),
    "502 once": ({"fault": "502", "times": 1}, TaskStatus.COMPLETED, 2, None),
    "503 once": ({"fault": "503", "times": 1}, TaskStatus.COMPLETED, 2, None),
    "429 once": ({"fault": "429", "times": 1, "retry_after": 1}, TaskStatus.COMPLETED, 2, None),
    "dropped connection once": ({"fault": "drop", "times": 1}, TaskStatus.COMPLETED, 2, None),
    "malformed reply once": ({"fault": "malformed", "times": 1}, TaskStatus.COMPLETED, 2, None),
    "empty reply once": ({"fault": "empty", "times": 1}, TaskStatus.COMPLETED, 2, None),
    "503 always": (
        {"fault": "503"},
        TaskStatus.FAILED,
        MAX_ATTEMPTS,
        f"gave up after {MAX_ATTEMPTS} attempts: LLM request failed (503)",
    ),
    "insufficient_quota": ({"fault": "insufficient_quota"}, TaskStatus.FAILED, 1, "LLM quota exhausted"),
    "400": ({"fault": "400"}, TaskStatus.FAILED, 1, "LLM request failed (400)"),
    "401": ({"fault": "401"}, TaskStatus.FAILED, 1, "LLM request failed (401)"),
    "403": ({"fault": "403"}, TaskStatus.FAILED, 1, "LLM request failed (403)"),
    "404": ({"fault": "404"}, TaskStatus.FAILED, 1, "LLM request failed (404)"),
}
STORM_TASKS = sized(20, 200)
BURST_TASKS = sized(6, 30)
RETRY_AFTER = sized(2, 3)


@pytest.fixture(scope="module")
def storm(build_scenario):
    """One worker for the module's LLM faults, each test tagging its tasks with a label."""
    run = build_scenario("6 LLM faults", task_max_attempts=MAX_ATTEMPTS)
    run.start_worker("storm", beat=True)
    yield run
    run.close()


@pytest.fixture(autouse=True)
def own_wall_time(storm) -> None:
    storm.started = time.monotonic()


def fault_on(run, llm, label: str, **rule) -> None:
    llm.add_fault(match=f"{run.prefix(label)} #", **rule)


def calls_per_task(run, llm, label: str) -> dict:
    return {row.id: (row, llm.requests(row.title)) for row in run.rows(label)}


def test_each_llm_fault_ends_as_the_table_of_expected_outcomes_says(storm, llm):
    # Given one task per fault kind, its LLM calls answered with that fault
    for case, (rule, *_) in EXPECTED.items():
        fault_on(storm, llm, f"table/{case}", **rule)
        storm.submit(1, label=f"table/{case}")
    # When they have all run
    storm.wait(timeout=sized(60, 120))
    # Then each ended with the expected status, attempts and LLM calls, and a clear error when it failed
    actual = {}
    for case in EXPECTED:
        [(row, calls)] = calls_per_task(storm, llm, f"table/{case}").values()
        error = row.error[: len(EXPECTED[case][3])] if row.error and EXPECTED[case][3] else None
        actual[case] = (EXPECTED[case][0], row.status, row.attempts, error)
        assert len(calls) == row.attempts, case
    assert actual == EXPECTED
    storm.tally("table/", name="6a LLM fault table (13 kinds)")


def test_a_30_percent_5xx_storm_loses_nothing_and_every_call_is_accounted_for(storm, llm):
    # Given 30% of the LLM calls of a batch of tasks fail with a 500
    fault_on(storm, llm, "storm", fault="500", rate=0.3)
    storm.submit(STORM_TASKS, label="storm")
    # When they have all run
    storm.wait(timeout=sized(60, 240))
    # Then each completed on its first good reply, or failed after the whole budget of 500s: one call per attempt
    for row, calls in calls_per_task(storm, llm, "storm").values():
        statuses = [call["status"] for call in calls]
        assert len(calls) == row.attempts
        if row.status == TaskStatus.COMPLETED:
            assert statuses == [500] * (row.attempts - 1) + [200]
        else:
            assert (row.status, statuses) == (TaskStatus.FAILED, [500] * MAX_ATTEMPTS)
    tally = storm.tally("storm", name="6b 30% 5xx storm")
    assert tally.lost == 0 and tally.duplicates == 0 and tally.completed >= 0.9 * STORM_TASKS


def test_rate_limited_tasks_wait_for_retry_after_before_calling_again(storm, llm):
    # Given a burst of 429s with Retry-After, one for each task's first call
    fault_on(storm, llm, "burst", fault="429", times=BURST_TASKS, retry_after=RETRY_AFTER)
    storm.submit(BURST_TASKS, label="burst")
    storm.wait(timeout=60)
    # Then every task completed, and no task called again sooner than it was told to
    for row, calls in calls_per_task(storm, llm, "burst").values():
        assert row.status == TaskStatus.COMPLETED
        gaps = [later["at"] - first["at"] for first, later in itertools.pairwise(calls) if first["status"] == 429]
        assert gaps and min(gaps) >= RETRY_AFTER, (row.title, gaps)
    tally = storm.tally("burst", name="6c 429 burst with Retry-After")
    assert tally.llm_calls >= 2 * BURST_TASKS


def test_a_silent_llm_server_is_cut_off_by_the_client_timeout_on_every_attempt(storm, llm):
    # Given an LLM server that accepts the call and never answers
    fault_on(storm, llm, "hang", fault="hang")
    [task_id] = storm.submit(1, label="hang")
    # When the task has run out of attempts
    [row] = storm.wait([task_id], timeout=MAX_ATTEMPTS * (LIMITS["llm_timeout_seconds"] + 5)).values()
    # Then every attempt ended with the client timeout, about LLM_TIMEOUT_SECONDS after its call began
    assert row.status == TaskStatus.FAILED and row.error.endswith("LLM request timed out")
    attempts, calls = storm.attempts(task_id), llm.requests(row.title)
    assert len(attempts) == len(calls) == MAX_ATTEMPTS
    timeout = LIMITS["llm_timeout_seconds"]
    for attempt, call in zip(attempts, calls):
        assert "timed out" in attempt.error
        assert timeout - 0.1 <= attempt.at.timestamp() - call["at"] <= timeout + 1.5
    storm.tally("hang", name="6d LLM hangs (client timeout)")
