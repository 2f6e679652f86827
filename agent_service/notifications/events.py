"""What a notification says: its type (one vocabulary for the payload, the metric and the docs), its severity,
the labels that identify it (repeats with the same type and labels are collapsed) and the payload a receiver
gets, with a Slack-compatible `text`.

An event carries only what the service itself names: ids, labels, counts and its own one-line summaries. No
prompt, result, error text from a provider or key ever goes in one (the sender also blanks every secret of
the settings from the body, should one slip into a summary).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

SERVICE = "agent-service"


class EventType(enum.StrEnum):
    """What happened."""

    TASK_DEAD_LETTERED = "task_dead_lettered"  # a task failed for good (`python cli.py failed` lists it)
    BREAKER_OPENED = "breaker_opened"  # a model's circuit breaker opened, or opened again after its probe failed
    BREAKER_CLOSED = "breaker_closed"  # its probe call succeeded: the model is called again
    SPEND_CAP_REACHED = "spend_cap_reached"  # a user's or agent's spend cap holds (or refuses) its tasks
    PAUSED = "paused"  # `python cli.py pause`
    RESUMED = "resumed"  # `python cli.py resume`
    DATABASE_UNREACHABLE = "database_unreachable"  # a worker cannot reach its database
    DATABASE_REACHABLE = "database_reachable"  # a worker that was held back by it reaches it again
    WORKER_START_FAILED = "worker_start_failed"  # a worker process could not get ready to run tasks


class Severity(enum.StrEnum):
    """How soon a person should look."""

    CRITICAL = "critical"
    WARNING = "warning"
    INFO = "info"


SEVERITIES = {
    EventType.TASK_DEAD_LETTERED: Severity.WARNING,
    EventType.BREAKER_OPENED: Severity.CRITICAL,
    EventType.BREAKER_CLOSED: Severity.INFO,
    EventType.SPEND_CAP_REACHED: Severity.WARNING,
    EventType.PAUSED: Severity.WARNING,
    EventType.RESUMED: Severity.INFO,
    EventType.DATABASE_UNREACHABLE: Severity.CRITICAL,
    EventType.DATABASE_REACHABLE: Severity.INFO,
    EventType.WORKER_START_FAILED: Severity.CRITICAL,
}
# Events about one host: its host is one of their labels, so that two hosts' are never collapsed into one.
PER_HOST = frozenset({EventType.DATABASE_UNREACHABLE, EventType.DATABASE_REACHABLE, EventType.WORKER_START_FAILED})
_MARKS = {Severity.CRITICAL: ":red_circle:", Severity.WARNING: ":warning:", Severity.INFO: ":white_check_mark:"}


@dataclass(frozen=True)
class Event:
    """One occurrence: `summary` is one line the service wrote; `labels` identify it (agent, model, provider,
    cap, ...); `details` add what differs between repeats (a task id, an attempt count)."""

    type: EventType
    summary: str
    labels: Mapping[str, str] = field(default_factory=dict)
    details: Mapping[str, str | int | float | bool | None] = field(default_factory=dict)

    @property
    def severity(self) -> Severity:
        return SEVERITIES[self.type]

    def key(self, host: str) -> str:
        """What repeats share: the type and the labels (and the host, for an event about one host)."""
        labels = {**self.labels, "host": host} if self.type in PER_HOST else self.labels
        return "|".join([self.type.value, *(f"{name}={labels[name]}" for name in sorted(labels))])


def payload(
    event: Event, *, host: str, pid: int, at: float, repeats: int = 0, window_seconds: float = 0.0
) -> dict[str, Any]:
    """The JSON object a receiver gets. `repeats` > 0 makes it a summary: that many more occurrences of
    `event` (the first of them shown) arrived within `window_seconds` after the one already sent."""
    severity = event.severity
    summary = event.summary
    if repeats:
        summary = f"{summary} (and {repeats} more like it within {window_seconds:g} s)"
    return {
        "text": f"{_MARKS[severity]} [{severity.value}] {summary} ({SERVICE} on {host})",
        "service": SERVICE,
        "event": event.type.value,
        "severity": severity.value,
        "summary": summary,
        "labels": dict(event.labels),
        "details": dict(event.details),
        "repeats": repeats,
        "window_seconds": window_seconds,
        "host": host,
        "pid": pid,
        "timestamp": datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
    }
