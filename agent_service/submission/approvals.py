"""A reviewer's decision on the tool calls a task awaits approval for: approve (the calls are made) or reject
(the model reads the rejection as their result). Either way the task is queued again, like a new task, and
its run resumes after its last recorded step."""

from __future__ import annotations

from celery import Celery

from agent_service.clock import utcnow
from agent_service.database import session_scope
from agent_service.ids import parse_task_id
from agent_service.services import Services
from agent_service.store import steps
from agent_service.submission.submit import first_status, queue


def approve_task(task_id: str, *, app: Celery, services: Services, note: str | None = None) -> list[str]:
    """Approve the tool calls task `task_id` awaits approval for and queue it; returns the tools approved.
    Raises: TaskValidationError (not a UUID), TaskNotFoundError, ApprovalError (not awaiting approval, or its
    approval expired), BrokerUnavailableError (decided, and left for the sweeper or dispatcher to queue)."""
    return _decide(task_id, approved=True, note=note, app=app, services=services)


def reject_task(task_id: str, *, app: Celery, services: Services, note: str | None = None) -> list[str]:
    """Reject them instead: they are never made, and the model reads "rejected by a reviewer: <note>" as
    their result. Raises: as `approve_task`."""
    return _decide(task_id, approved=False, note=note, app=app, services=services)


def _decide(task_id: str, *, approved: bool, note: str | None, app: Celery, services: Services) -> list[str]:
    parsed = parse_task_id(task_id)
    with session_scope(services.session_factory) as session:
        tools = steps.decide_approval(
            session, parsed, approved=approved, note=note, now=utcnow(), status=first_status(services.settings)
        )
    queue(app, services, [parsed])
    return tools
