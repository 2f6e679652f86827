"""The outcome of one delivery, as the task shell returns it and the logs and metrics see it."""

from __future__ import annotations

from agent_service.execution.outcomes import Outcome, TaskOutcome


def test_an_outcome_as_a_dict_is_json_ready_and_leaves_out_what_is_not_set():
    outcome = TaskOutcome("t-1", Outcome.RETRYING, attempt=2, error="LLM rate limited (429)", retry_in=3.5)
    assert outcome.as_dict() == {
        "task_id": "t-1",
        "status": "retrying",
        "attempt": 2,
        "error": "LLM rate limited (429)",
        "retry_in": 3.5,
    }


def test_a_completed_outcome_carries_its_token_counts():
    outcome = TaskOutcome("t-1", Outcome.COMPLETED, attempt=1, agent_id="a", prompt_tokens=7, completion_tokens=3)
    assert outcome.as_dict() == {
        "task_id": "t-1",
        "status": "completed",
        "attempt": 1,
        "agent_id": "a",
        "prompt_tokens": 7,
        "completion_tokens": 3,
    }


def test_only_failures_and_delivery_errors_count_as_errors():
    assert {outcome for outcome in Outcome if outcome.is_error} == {Outcome.FAILED, Outcome.ERROR}


def test_outcome_values_are_the_words_logs_and_metrics_use():
    # Stored in logs and metric labels: renaming a member must not change what dashboards match on.
    assert [outcome.value for outcome in Outcome] == [
        "completed",
        "failed",
        "retrying",
        "deferred",
        "paused",
        "superseded",
        "skipped",
        "rejected",
        "error",
    ]
    assert Outcome("deferred") is Outcome.DEFERRED


def test_an_outcome_reads_as_its_value_in_labels_and_log_lines():
    # Metric labels and log lines take str() of the outcome a task shell passes in.
    assert (str(Outcome.COMPLETED), f"{Outcome.ERROR}") == ("completed", "error")
