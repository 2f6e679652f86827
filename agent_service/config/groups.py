"""Groups: tasks submitted together, whose `on_complete` task is sent once the last one ends."""

from __future__ import annotations

from pydantic import BaseModel, Field


class GroupSettings(BaseModel):
    """Task groups: where a finished group's on_complete task goes."""

    group_callback_queue: str = Field(
        "celery", min_length=1, description="the queue a group's on_complete task is sent to (Celery's default)"
    )
