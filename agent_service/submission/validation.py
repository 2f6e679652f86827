"""Validated input: what a caller may submit as a task or an agent, with clear errors for the rest."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from typing import Annotated, Any, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from agent_service.config import Settings
from agent_service.errors import TaskValidationError, validation_problems
from agent_service.kinds import KINDS
from agent_service.kinds.base import AgentDefinition, KindName, TaskKind
from agent_service.kinds.data import check_output_schema
from agent_service.store.agents import AgentSettings

Model = TypeVar("Model", bound=BaseModel)


def _storable_text(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL bytes")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError("must be valid unicode (no lone surrogates)") from exc
    return value


# Strict strings, their length checked first (so errors speak of characters), then storability.
_Storable = AfterValidator(_storable_text)
Text = Annotated[StrictStr, _Storable]
Title = Annotated[StrictStr, StringConstraints(min_length=1), _Storable]
Name = Annotated[StrictStr, StringConstraints(min_length=1, max_length=200), _Storable]
Prompt = Annotated[StrictStr, StringConstraints(min_length=1, max_length=50_000), _Storable]
MAX_PRIORITY = 9
# What an error's first words say was refused: "invalid task input: title: ...".
TASK_INPUT = "task input"
AGENT_DEFINITION = "agent definition"


def _known_kind(value: str) -> str:
    """A kind registered in `kinds.KINDS` (a kind added as a file of `kinds/` registers itself)."""
    if value not in KINDS:
        names = [repr(name) for name in KINDS]
        expected = f"{', '.join(names[:-1])} or {names[-1]}" if len(names) > 1 else "".join(names)
        raise PydanticCustomError("enum", "Input should be {expected}", {"expected": expected})
    return value


KnownKind = Annotated[str, AfterValidator(_known_kind)]


class TaskInput(BaseModel):
    """A task as submitted to `create_agent_task`; sizes are bounded by Settings."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, frozen=True, use_enum_values=True)

    title: Title
    description: Text | None = None
    agent_id: uuid.UUID
    user_id: Name
    idempotency_key: Name | None = None
    # Higher first: with fair-share dispatch, a waiting task of higher priority is published before any other.
    priority: Annotated[StrictInt, Field(ge=0, le=MAX_PRIORITY)] = 0
    kind: KnownKind | None = None  # this task's kind, instead of its agent's
    payload: Any = None  # the task's JSON input

    @field_validator("payload")
    @classmethod
    def _json_within_configured_size(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None:
            return value
        try:
            # The JSON PostgreSQL stores: NaN and Infinity are not JSON.
            size = len(json.dumps(value, allow_nan=False, ensure_ascii=False).encode())
        except (TypeError, ValueError) as exc:
            raise ValueError(f"must be JSON (objects, arrays, strings, numbers, booleans, null): {exc}") from None
        limit = (info.context or {})["settings"].max_payload_bytes
        if size > limit:
            raise ValueError(f"is {size} bytes as JSON; the limit is {limit} (MAX_PAYLOAD_BYTES)")
        return value

    @field_validator("title", "description")
    @classmethod
    def _within_configured_size(cls, value: str | None, info: ValidationInfo) -> str | None:
        settings: Settings = (info.context or {})["settings"]
        limit = settings.max_title_length if info.field_name == "title" else settings.max_description_length
        if value is not None and len(value) > limit:
            raise ValueError(f"is {len(value)} characters long; the limit is {limit}")
        return value


class AgentInput(BaseModel):
    """An agent definition as given to `python cli.py create-agent`; what its kind needs is checked by the
    kind (`TaskKind.check_agent`) once the fields are valid."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, use_enum_values=True)

    name: Name
    prompt: Prompt
    model: Name
    fallback_model: Name | None = None
    temperature: float = Field(0.7, ge=0, le=2)
    max_tokens: int = Field(1000, ge=1, le=200_000)
    settings: AgentSettings = AgentSettings()
    kind: KnownKind = KindName.TEXT
    tools: list[dict[str, Any]] | None = None  # api: the HTTP tools the model may call
    # The JSON Schema of a data task's results; any agent may carry one, for tasks that ask for the data kind.
    output_schema: dict[str, Any] | None = None

    @field_validator("output_schema")
    @classmethod
    def _usable_schema(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            check_output_schema(value)
        return value

    @model_validator(mode="after")
    def _fallback_is_another_model(self) -> AgentInput:
        if self.fallback_model == self.model:
            raise ValueError("fallback_model must name a model other than model")
        return self


def parse_task_input(data: Any, *, settings: Settings) -> TaskInput:
    """Validate raw task data. Raises: TaskValidationError naming every bad field."""
    if isinstance(data, TaskInput):
        data = data.model_dump()
    return _parse(TaskInput, data, context={"settings": settings})


def parse_agent_input(data: Any, *, kinds: Mapping[str, TaskKind] = KINDS) -> AgentInput:
    """Validate raw agent data, then what its kind needs (a kind not among `kinds` yet needs nothing more).
    Raises: TaskValidationError naming every bad field, or the field its kind refuses
    (`invalid agent definition: tools[0].url: ...`)."""
    agent = _parse(AgentInput, data, context=None, what=AGENT_DEFINITION)
    try:
        _check_for_kind(agent, kinds=kinds)
    except TaskValidationError as exc:
        raise TaskValidationError(f"invalid {AGENT_DEFINITION}: {exc}") from None
    return agent


def _check_for_kind(agent: AgentInput, *, kinds: Mapping[str, TaskKind]) -> None:
    # Only an api agent has tools, and it must have some; whether they are right is the api kind's check.
    if agent.kind == KindName.API and not agent.tools:
        raise TaskValidationError("tools: an api agent needs a non-empty list of tool definitions")
    if agent.kind != KindName.API and agent.tools is not None:
        raise TaskValidationError(f"tools: only an api agent calls tools, not a {agent.kind} one")
    kind = kinds.get(agent.kind)
    if kind is not None:
        settings = agent.settings
        definition = AgentDefinition(
            agent.kind, agent.tools, agent.output_schema, settings.choices, allowed_hosts=settings.allowed_hosts
        )
        kind.check_agent(definition)


def parse_model(model: type[Model], data: Any) -> Model:
    """Validate raw data as `model`. Raises: TaskValidationError naming every bad field."""
    return _parse(model, data, context=None)


def _parse(model: type[Model], data: Any, *, context: dict[str, Any] | None, what: str = TASK_INPUT) -> Model:
    if not isinstance(data, dict):
        raise TaskValidationError(f"{model.__name__} must be a mapping, not {type(data).__name__}")
    try:
        return model.model_validate(data, context=context)
    except ValidationError as exc:
        raise TaskValidationError(f"invalid {what}: {validation_problems(exc)}") from None
