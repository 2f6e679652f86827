"""What one delivery of a task did: the vocabulary of outcomes, shared by the pipeline, the task shells,
the logs and the metrics."""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass
from typing import Any


class Outcome(str, enum.Enum):
    """How one delivery of a task ended."""

    COMPLETED = "completed"  # the task completed
    FAILED = "failed"  # the task failed for good
    RETRYING = "retrying"  # this attempt failed; another is due after `retry_in`
    DEFERRED = "deferred"  # admission said not yet; the attempt was given back, to run after `retry_in`
    SUPERSEDED = "superseded"  # the claim was lost (cancelled, or taken over) before the outcome was recorded
    SKIPPED = "skipped"  # not run: finished already, running elsewhere, or missing
    REJECTED = "rejected"  # not run: the message did not carry a task id
    ERROR = "error"  # the delivery itself failed before any row changed

    @property
    def is_error(self) -> bool:
        return self in (Outcome.FAILED, Outcome.ERROR)


@dataclass(frozen=True)
class TaskOutcome:
    """What one delivery of a task did; `retry_in` is set when another delivery is due."""

    task_id: str
    status: Outcome
    attempt: int | None = None
    agent_id: str | None = None
    error: str | None = None
    retry_in: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, without the fields that are not set."""
        values = {key: value for key, value in asdict(self).items() if value is not None}
        values["status"] = self.status.value
        return values
