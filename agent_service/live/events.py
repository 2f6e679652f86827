"""The vocabulary of live output: where a task's events live in Redis, what kinds there are, and how an
event is stored (two fields: `kind`, and `data` as JSON).

A task's stream is `agent_service:live:<task_id>`; `agent_service:following:<task_id>` exists while someone
follows it (each follower refreshes it, with a short TTL).
"""

from __future__ import annotations

import enum
import json
import uuid
from dataclasses import dataclass, field
from typing import Any

STREAM_PREFIX = "agent_service:live:"
FOLLOWER_PREFIX = "agent_service:following:"

TaskId = uuid.UUID | str


class EventKind(str, enum.Enum):
    """What an event on a task's stream reports."""

    STARTED = "started"  # an attempt called the model: {"attempt", "model"}
    TOKEN = "token"  # text the model produced since the last token event: {"text"}
    STEP = "step"  # a step of a multi-step run, as its writer describes it
    TOOL_CALL = "tool_call"  # the model called a tool: {"name", "arguments", ...}
    TOOL_RESULT = "tool_result"  # what the tool answered
    AWAITING_APPROVAL = "awaiting_approval"  # the run waits for `python cli.py approve|reject`
    RETRYING = "retrying"  # the attempt failed; another follows: {"attempt", "error", "retry_in"}
    DEFERRED = "deferred"  # admission held the task back; it runs later: {"reason", "retry_in"}
    ENDED = "ended"  # the last event: {"status", "result" or "error"}


@dataclass(frozen=True)
class LiveEvent:
    """One event read from a task's stream. `id` is the stream entry's id (`1764480000000-0`): ready as a
    server-sent event's `id:`, and a follower given it back as `last_event_id` resumes right after it."""

    id: str
    kind: EventKind
    data: dict[str, Any] = field(default_factory=dict)

    def sse(self) -> str:
        """The event as one server-sent event (`id:`, `event:`, `data:` lines)."""
        return f"id: {self.id}\nevent: {self.kind.value}\ndata: {json.dumps(self.data)}\n\n"


def stream_key(task_id: TaskId) -> str:
    """The Redis stream holding `task_id`'s events."""
    return f"{STREAM_PREFIX}{task_id}"


def follower_key(task_id: TaskId) -> str:
    """The Redis key that exists while someone follows `task_id`."""
    return f"{FOLLOWER_PREFIX}{task_id}"


def encode(kind: EventKind, data: dict[str, Any] | None = None) -> dict[str, str]:
    """An event's fields as stored in its stream entry."""
    return {"kind": kind.value, "data": json.dumps(data or {}, separators=(",", ":"))}


def decode(entry_id: bytes | str, fields: dict[bytes, bytes] | dict[str, str]) -> LiveEvent:
    """The event a stream entry holds (as redis-py reads it: bytes, or str with decode_responses)."""
    text = {_text(name): _text(value) for name, value in fields.items()}
    return LiveEvent(_text(entry_id), EventKind(text["kind"]), json.loads(text.get("data") or "{}"))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
