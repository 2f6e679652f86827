"""A durable run's steps as live events, in one form whether the worker publishes them as it records them or a
follower who arrives later reads them back from the database (`step_values`: a step row's columns by name).

A step event's key (`covered`) is its kind and step position: a follower that emitted the recorded steps drops
the same events when it then reads them on the stream.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agent_service.live.events import EventKind
from agent_service.models import StepStatus, StepType

TEXT_CHARS = 500  # of a step's text or a tool's result, in a live event
_ANSWERED = (StepStatus.SUCCEEDED, StepStatus.FAILED, StepStatus.REJECTED)
_CALLED = (StepStatus.STARTED, StepStatus.SUCCEEDED, StepStatus.FAILED)
_STEP_KINDS = (EventKind.STEP, EventKind.TOOL_CALL, EventKind.TOOL_RESULT, EventKind.AWAITING_APPROVAL)

StepEvent = tuple[EventKind, dict[str, Any]]


def written(position: int, values: Mapping[str, Any]) -> list[StepEvent]:
    """What followers see as a step is written: a model turn (`step`), a tool call's answer (`tool_result`) or
    its wait for a reviewer (`awaiting_approval`); a tool call being sent is `called`."""
    status = values.get("status")
    if values.get("step_type") is StepType.MODEL_TURN:
        return [(EventKind.STEP, _turn(position, values))]
    if status is StepStatus.AWAITING_APPROVAL:
        return [(EventKind.AWAITING_APPROVAL, _call(position, values.get("tool_name"), values.get("arguments")))]
    if status in _ANSWERED:
        return [(EventKind.TOOL_RESULT, _result(position, values))]
    return []


def called(position: int, name: str | None, arguments: Any) -> StepEvent:
    """A tool call as it is sent."""
    return EventKind.TOOL_CALL, _call(position, name, arguments)


def recorded(position: int, values: Mapping[str, Any]) -> list[StepEvent]:
    """The events a follower saw of a recorded step, had it followed all along: a model turn's `step`; a tool
    call's wait for a reviewer if it had one, its sending if it was sent, its answer once answered."""
    if values.get("step_type") is StepType.MODEL_TURN:
        return [(EventKind.STEP, _turn(position, values))]
    status, name, arguments = values.get("status"), values.get("tool_name"), values.get("arguments")
    events: list[StepEvent] = []
    if status is StepStatus.AWAITING_APPROVAL or values.get("decided_at") is not None:
        events.append((EventKind.AWAITING_APPROVAL, _call(position, name, arguments)))
    if status in _CALLED:
        events.append(called(position, name, arguments))
    if status in _ANSWERED:
        events.append((EventKind.TOOL_RESULT, _result(position, values)))
    return events


def covered(kind: EventKind, data: Mapping[str, Any]) -> tuple[EventKind, int] | None:
    """The key of a step event (its kind and position), None for any other event."""
    position = data.get("position")
    return (kind, position) if kind in _STEP_KINDS and isinstance(position, int) else None


def _turn(position: int, values: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "position": position,
        "model": values.get("model"),
        "text": (values.get("content") or "")[:TEXT_CHARS],
        "tools": [call["name"] for call in values.get("tool_calls") or ()],
        "prompt_tokens": values.get("prompt_tokens"),
        "completion_tokens": values.get("completion_tokens"),
    }


def _call(position: int, name: str | None, arguments: Any) -> dict[str, Any]:
    return {"position": position, "name": name, "arguments": arguments}


def _result(position: int, values: Mapping[str, Any]) -> dict[str, Any]:
    status = values.get("status")
    text = (values.get("content") or "")[:TEXT_CHARS]
    return {
        "position": position,
        "name": values.get("tool_name"),
        "status": getattr(status, "value", status),
        "result": text,
    }
