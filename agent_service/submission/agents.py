"""Agents as callers define them: creating one from validated input, finding one by id or name."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from agent_service.errors import TaskValidationError
from agent_service.models import Agent
from agent_service.submission.validation import parse_agent_input


def create_agent(session: Session, data: dict[str, Any]) -> Agent:
    """Validate and insert an agent. Raises: TaskValidationError (bad fields or a taken name)."""
    spec = parse_agent_input(data)
    if session.scalar(select(Agent.id).where(Agent.name == spec.name)) is not None:
        raise TaskValidationError(f"an agent named {spec.name!r} already exists")
    agent = Agent(**spec.model_dump(exclude={"settings"}), settings=spec.settings.model_dump(exclude_defaults=True))
    session.add(agent)
    session.flush()
    return agent


def find_agent(session: Session, ref: str) -> Agent | None:
    """An agent by id or by name; None when there is none."""
    try:
        return session.get(Agent, uuid.UUID(ref))
    except ValueError:
        return session.scalar(select(Agent).where(Agent.name == ref))
