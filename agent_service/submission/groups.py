"""Groups as callers name them at submission (`create_agent_tasks(items, group=..., on_complete=...)`), and
their progress. The database side, and how a group ends exactly once, is `store.groups`."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, StrictStr, StringConstraints

from agent_service.database import session_scope
from agent_service.errors import TaskNotFoundError, TaskValidationError
from agent_service.services import Services
from agent_service.store import groups
from agent_service.store.groups import GroupProgress
from agent_service.submission.validation import Name, TaskInput, parse_model

# A Celery task name as Celery writes them: dotted Python identifiers (`myapp.tasks.report`).
CallbackName = Annotated[
    StrictStr, StringConstraints(max_length=300, pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
]


class GroupInput(BaseModel):
    """A group named at submission, with the Celery task to send when all its tasks have ended."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, frozen=True)

    group: Name
    on_complete: CallbackName | None = None


def parse_group(group: str | None, on_complete: str | None, *, tasks: list[TaskInput]) -> GroupInput | None:
    """The group these tasks are submitted to, or None.
    Raises: TaskValidationError for a bad name, an on_complete without a group, a group of no tasks or of
    several users' tasks."""
    if group is None:
        if on_complete is not None:
            raise TaskValidationError("invalid task input: on_complete: needs a group")
        return None
    wanted = parse_model(GroupInput, {"group": group, "on_complete": on_complete})
    users = {task.user_id for task in tasks}
    if len(users) != 1:
        problem = "has no task" if not users else f"has tasks of {len(users)} users; a group belongs to one user"
        raise TaskValidationError(f"invalid task input: group: {wanted.group!r} {problem}")
    return wanted


def group_progress(group_id: str, *, services: Services) -> GroupProgress:
    """Raises: TaskNotFoundError for an unknown group."""
    with session_scope(services.session_factory) as session:
        progress = groups.group_progress(session, group_id)
    if progress is None:
        raise TaskNotFoundError(f"no group {group_id!r}")
    return progress
