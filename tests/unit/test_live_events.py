"""Live output's vocabulary: how events are stored and served, and what each delivery tells followers."""

from __future__ import annotations

import json

from agent_service.execution.outcomes import Outcome, TaskOutcome
from agent_service.live.events import EventKind, LiveEvent, decode, encode, stream_key
from agent_service.live.publisher import Update
from agent_service.models import TaskStatus
from agent_service.store.lifecycle import Finished


def test_an_event_reads_back_as_it_was_written_from_bytes_or_text():
    fields = encode(EventKind.TOKEN, {"text": "héllo"})
    as_bytes = {name.encode(): value.encode() for name, value in fields.items()}
    assert decode(b"1-0", as_bytes) == decode("1-0", fields) == LiveEvent("1-0", EventKind.TOKEN, {"text": "héllo"})


def test_an_event_is_one_server_sent_event_whose_id_resumes_the_stream():
    event = LiveEvent("1764480000000-0", EventKind.ENDED, {"status": "completed"})
    lines = event.sse().split("\n")
    assert lines[:2] == ["id: 1764480000000-0", "event: ended"]
    assert json.loads(lines[2].removeprefix("data: ")) == {"status": "completed"}
    assert event.sse().endswith("\n\n")


def test_a_tasks_stream_is_named_by_its_id():
    assert stream_key("6d1f") == "agent_service:live:6d1f"


def test_a_finished_delivery_ends_the_stream_with_the_status_and_result():
    finished = Finished(TaskStatus.COMPLETED, result="All done.")
    update = TaskOutcome("t1", Outcome.COMPLETED, finished=finished).live_update()
    assert update == Update("t1", EventKind.ENDED, {"status": "completed", "result": "All done."})


def test_a_retried_or_deferred_delivery_says_so_and_one_that_changed_nothing_says_nothing():
    retrying = TaskOutcome("t1", Outcome.RETRYING, attempt=1, error="429", retry_in=2.0).live_update()
    assert retrying == Update("t1", EventKind.RETRYING, {"attempt": 1, "error": "429", "retry_in": 2.0})
    deferred = TaskOutcome("t1", Outcome.DEFERRED, error="paused", retry_in=3.0).live_update()
    assert deferred == Update("t1", EventKind.DEFERRED, {"reason": "paused", "retry_in": 3.0})
    assert TaskOutcome("t1", Outcome.SKIPPED, error="running elsewhere").live_update() is None
