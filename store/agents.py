"""The detached spec a run needs of its agent, read off the agent's row."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from llm.messages import ModelOptions


@dataclass(frozen=True)
class AgentSpec:
    """What a run needs of its agent, detached from the session."""

    id: uuid.UUID
    prompt: str
    model: str
    temperature: float
    max_tokens: int
    options: ModelOptions
    kind: str = "text"
    fallback_model: str | None = None  # called instead of `model` while its circuit breaker is open
    truncate_to_fit: bool = False


class AgentSettings(ModelOptions):
    """An agent's settings (its `settings` column): the model options, and what the service may do with its
    tasks. `truncate_to_fit`: a task too long for the model's context is sent again, once, with its
    description cut to fit, rather than failed."""

    truncate_to_fit: bool = False


def agent_spec(agent: Any) -> tuple[AgentSpec | None, str | None]:
    """The spec of an agent row (ORM object or Core row), or None and why it cannot run."""
    if not agent.is_active:
        return None, f"agent {agent.name!r} is inactive"
    try:
        settings = AgentSettings.model_validate(agent.settings or {})
    except ValidationError as exc:
        return None, f"agent {agent.name!r} has invalid settings: {exc}"
    options = ModelOptions.model_validate(settings.model_dump(exclude={"truncate_to_fit"}))
    spec = AgentSpec(
        agent.id,
        agent.prompt,
        agent.model,
        agent.temperature,
        agent.max_tokens,
        options,
        fallback_model=agent.fallback_model,
        truncate_to_fit=settings.truncate_to_fit,
    )
    return spec, None
