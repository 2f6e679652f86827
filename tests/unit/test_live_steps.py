"""A step's live events: the same whether published as the step is written or read back by a late follower."""

from __future__ import annotations

from datetime import UTC, datetime

from agent_service.live import steps
from agent_service.live.events import EventKind
from agent_service.models import StepStatus, StepType

TURN = {
    "step_type": StepType.MODEL_TURN,
    "status": StepStatus.SUCCEEDED,
    "model": "gpt-4o-mini",
    "content": "Let me check.",
    "tool_calls": [{"id": "c1", "name": "pay", "arguments": "{}"}],
    "prompt_tokens": 11,
    "completion_tokens": 4,
}


def test_a_recorded_model_turn_makes_the_step_event_its_writing_made():
    assert steps.recorded(0, TURN) == steps.written(0, TURN)
    [(kind, data)] = steps.written(0, TURN)
    assert (kind, data["tools"], data["prompt_tokens"]) == (EventKind.STEP, ["pay"], 11)


def test_a_recorded_approved_call_replays_its_wait_its_sending_and_its_result():
    # Given a call that waited for a reviewer, then was made
    waiting = {"step_type": StepType.TOOL_CALL, "status": StepStatus.AWAITING_APPROVAL, "tool_name": "pay"}
    waiting["arguments"] = {"item": "tickets"}
    done = {**waiting, "status": StepStatus.SUCCEEDED, "content": "HTTP 201", "decided_at": datetime.now(UTC)}
    # Then a late follower sees what one who followed all along saw
    live = [*steps.written(1, waiting), steps.called(1, "pay", {"item": "tickets"}), *steps.written(1, done)]
    assert steps.recorded(1, done) == live
    assert [steps.covered(kind, data) for kind, data in live] == [
        (EventKind.AWAITING_APPROVAL, 1),
        (EventKind.TOOL_CALL, 1),
        (EventKind.TOOL_RESULT, 1),
    ]


def test_events_other_than_steps_are_never_taken_for_recorded_ones():
    assert steps.covered(EventKind.TOKEN, {"text": "hi"}) is None
    assert steps.covered(EventKind.ENDED, {"status": "completed"}) is None
