"""What a caller following a task (`follow_agent_task`) reads of it from the database: its recorded steps and
its end, in the form of its live events (`live.follow.TaskRecord`), each read in one short transaction."""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any

from sqlalchemy.orm import Session

from agent_service.database import session_scope
from agent_service.live import steps as live_steps
from agent_service.live.follow import Recorded
from agent_service.live.publisher import ended_update
from agent_service.services import Services
from agent_service.store import lifecycle, steps
from agent_service.store import tasks as store_tasks


class FollowedTask:
    """A task's row and steps as a follower reads them. Raises at construction: TaskNotFoundError."""

    def __init__(self, task_id: uuid.UUID, *, services: Services) -> None:
        self._task_id, self._services = task_id, services
        with session_scope(services.session_factory) as session:
            store_tasks.task_status(session, task_id)

    def recorded(self) -> Recorded:
        """Its steps so far (one query) and its end, read in one transaction."""
        with session_scope(self._services.session_factory) as session:
            ended = self._ended(session)
            found = steps.load_steps(session, [self._task_id])[self._task_id]
        events = [event for step in found for event in live_steps.recorded(step.position, dataclasses.asdict(step))]
        return Recorded(events, ended)

    def ended(self) -> dict[str, Any] | None:
        """Its `ended` event's data once it has ended, else None."""
        with session_scope(self._services.session_factory) as session:
            return self._ended(session)

    def _ended(self, session: Session) -> dict[str, Any] | None:
        finished = lifecycle.finished_state(session, self._task_id)
        if finished is None:
            return None
        return ended_update(self._task_id, finished.status, result=finished.result, error=finished.error).data
