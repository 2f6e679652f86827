"""Agents' rows as runs and submissions read them, and the detached spec a run needs of its agent."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from pydantic import Field, ValidationError, field_validator
from sqlalchemy import Row, bindparam, select
from sqlalchemy.orm import Session

from agent_service.llm.messages import ModelOptions
from agent_service.models import Agent, table_of

AGENTS = table_of(Agent)
_AGENTS_OF = select(AGENTS).where(AGENTS.c.id.in_(bindparam("p_agents", expanding=True)))


class AgentSettings(ModelOptions):
    """An agent's `settings` JSON: the model options it sends with each call, and the service's own
    per-agent options, which never reach the model."""

    truncate_to_fit: bool = Field(
        False, description="a task too long for the model's context is sent again, once, cut to fit, not failed"
    )
    cache_ttl_seconds: int = Field(
        0, ge=0, description="answer repeated deterministic calls (temperature 0) from Redis this long; 0: never"
    )
    choices: list[str] | None = Field(
        None, min_length=2, description="decision kind: the options to choose from, unless a task gives its own"
    )
    allowed_hosts: list[str] = Field(
        default_factory=list, description="api kind: the hosts its tools may call (`api.example.com`, `*.example.com`)"
    )
    max_steps: int = Field(10, ge=1, le=100, description="api kind: the most model turns one task may take")
    time_budget_seconds: float = Field(
        300, gt=0, description="api kind: the longest a task's steps may take, from its first"
    )

    @field_validator("choices")
    @classmethod
    def _distinct_choices(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and len(set(value)) != len(value):
            raise ValueError("must be distinct")
        return value

    def model_options(self) -> ModelOptions:
        return ModelOptions.model_validate(self.model_dump(include=set(ModelOptions.model_fields)))


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
    cache_ttl_seconds: int = 0
    tools: tuple[dict[str, Any], ...] = ()  # api kind: the tool definitions, as stored (see `tools`)
    output_schema: dict[str, Any] | None = None  # data kind: the JSON Schema of the result
    choices: tuple[str, ...] | None = None
    allowed_hosts: tuple[str, ...] = ()
    max_steps: int = 10
    time_budget_seconds: float = 300


def agent_spec(agent: Any) -> tuple[AgentSpec | None, str | None]:
    """The spec of an agent row (ORM object or Core row), or None and why it cannot run."""
    if not agent.is_active:
        return None, f"agent {agent.name!r} is inactive"
    try:
        settings = AgentSettings.model_validate(agent.settings or {})
    except ValidationError as exc:
        return None, f"agent {agent.name!r} has invalid settings: {exc}"
    spec = AgentSpec(
        agent.id,
        agent.prompt,
        agent.model,
        agent.temperature,
        agent.max_tokens,
        settings.model_options(),
        kind=agent.kind,
        fallback_model=agent.fallback_model,
        truncate_to_fit=settings.truncate_to_fit,
        cache_ttl_seconds=settings.cache_ttl_seconds,
        tools=tuple(agent.tools or ()),
        output_schema=agent.output_schema,
        choices=tuple(settings.choices) if settings.choices else None,
        allowed_hosts=tuple(settings.allowed_hosts),
        max_steps=settings.max_steps,
        time_budget_seconds=settings.time_budget_seconds,
    )
    return spec, None


def agents_by_id(session: Session, agent_ids: list[uuid.UUID]) -> dict[uuid.UUID, Row[Any]]:
    """The rows of these agents (those that exist), by id, read as Core rows: `agent_spec` takes them."""
    if not agent_ids:
        return {}
    return {agent.id: agent for agent in session.connection().execute(_AGENTS_OF, {"p_agents": agent_ids})}
