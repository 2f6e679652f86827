"""What one delivery of a task did: the vocabulary of outcomes, shared by the pipeline, the task shells,
the logs and the metrics."""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, fields
from typing import Any

from agent_service.live.events import EventKind
from agent_service.live.publisher import Update, ended_update
from agent_service.models import TaskStatus
from agent_service.store.lifecycle import Finished


class Outcome(enum.StrEnum):
    """How one delivery of a task ended."""

    COMPLETED = "completed"  # the task completed
    FAILED = "failed"  # the task failed for good
    RETRYING = "retrying"  # this attempt failed; another is due after `retry_in`
    DEFERRED = "deferred"  # admission said not yet; the attempt was given back, to run after `retry_in`
    PAUSED = "paused"  # a tool call awaits a reviewer: the attempt was given back until approve or reject
    SUPERSEDED = "superseded"  # the claim was lost (cancelled, or taken over) before the outcome was recorded
    SKIPPED = "skipped"  # not run: finished already, or running elsewhere
    REJECTED = "rejected"  # not run: the message named no task (no task id, or no such task)
    ERROR = "error"  # the delivery itself failed before any row changed

    @property
    def is_error(self) -> bool:
        return self in (Outcome.FAILED, Outcome.ERROR)


@dataclass(frozen=True)
class TaskOutcome:
    """What one delivery of a task did; `retry_in` is set when another delivery is due, `finished` when the
    task is finished (by this delivery or before it), `seconds` is the delivery's claim-to-settle time."""

    task_id: str
    status: Outcome
    attempt: int | None = None
    agent_id: str | None = None
    error: str | None = None
    retry_in: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finished: Finished | None = None
    seconds: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """The scalar fields that are set, JSON-ready (what a log line carries)."""
        values = {
            field.name: getattr(self, field.name)
            for field in fields(self)
            if field.name != "finished" and getattr(self, field.name) is not None
        }
        values["status"] = self.status.value
        return values

    def message_result(self) -> dict[str, Any] | None:
        """Celery's result for the message that carried this delivery: the task's final state, or an error
        for a message that names no task; None while another delivery is due (or running elsewhere)."""
        if self.finished is not None:
            return _final_state(self.task_id, self.finished)
        if self.status in (Outcome.REJECTED, Outcome.ERROR):
            return {"status": "error", "error": self.error}
        return None

    def live_update(self) -> Update | None:
        """What this delivery tells the task's followers (`live`): that the task ended, that another attempt
        follows, or that it waits; None for a delivery that changed nothing (rejected, run elsewhere)."""
        if self.finished is not None:
            finished = self.finished
            return ended_update(self.task_id, finished.status, result=finished.result, error=finished.error)
        if self.status is Outcome.RETRYING:
            details = {"attempt": self.attempt, "error": self.error, "retry_in": self.retry_in}
            return Update(self.task_id, EventKind.RETRYING, details)
        if self.status is Outcome.DEFERRED:
            return Update(self.task_id, EventKind.DEFERRED, {"reason": self.error, "retry_in": self.retry_in})
        return None


def _final_state(task_id: str, finished: Finished) -> dict[str, Any]:
    state: dict[str, Any] = {"status": finished.status.value, "task_id": task_id}
    if finished.result is not None:
        state["result"] = finished.result
    if finished.usage is not None:
        state["usage"] = asdict(finished.usage)
    if finished.error is not None and finished.status is not TaskStatus.CANCELLED:
        state["error"] = finished.error
    return state
