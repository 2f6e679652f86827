"""Agent Service: AI-agent jobs on Celery, PostgreSQL and LangChain.

An application submits and follows work with the names below (`from agent_service import create_agent_task`);
workers run `celery -A agent_service.worker worker` (or `agent-service worker`). The names load on first use,
so importing a submodule (`agent_service.config`, say) does not build the Celery app.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("agent_service.tasks"), name)
    raise AttributeError(f"module 'agent_service' has no attribute {name!r}")
