"""The design's way to submit work from the checkout, `from tasks import create_agent_task`: it hands on the
functions of `agent_service.tasks` (an installed package offers the same as `from agent_service import ...`)."""

from agent_service.tasks import (
    approve_task,
    create_agent_task,
    create_agent_tasks,
    follow_agent_task,
    group_progress,
    reject_task,
)

__all__ = [
    "approve_task",
    "create_agent_task",
    "create_agent_tasks",
    "follow_agent_task",
    "group_progress",
    "reject_task",
]
