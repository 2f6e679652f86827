"""Task ids as callers and messages give them: strings (or UUIDs) parsed once, with a clear error for the rest."""

from __future__ import annotations

import uuid
from typing import Any

from agent_service.errors import TaskValidationError


def parse_task_id(task_id: Any) -> uuid.UUID:
    """Raises: TaskValidationError when `task_id` is not a UUID (or its string)."""
    if isinstance(task_id, uuid.UUID):
        return task_id
    try:
        return uuid.UUID(task_id)
    except (TypeError, ValueError, AttributeError):
        raise TaskValidationError(f"invalid task id: a task id must be a UUID string, got {task_id!r:.80}") from None
