"""Validated input: what a caller may submit as a task or an agent, with clear errors for the rest."""

from __future__ import annotations

import uuid
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

from config import Settings
from errors import TaskValidationError
from store.agents import AgentSettings

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


class TaskInput(BaseModel):
    """A task as submitted to `create_agent_task`; sizes are bounded by Settings."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, frozen=True)

    title: Title
    description: Text | None = None
    agent_id: uuid.UUID
    user_id: Name
    idempotency_key: Name | None = None
    # Higher first: with fair-share dispatch, a waiting task of higher priority is published before any other.
    priority: Annotated[StrictInt, Field(ge=0, le=MAX_PRIORITY)] = 0

    @field_validator("title", "description")
    @classmethod
    def _within_configured_size(cls, value: str | None, info: ValidationInfo) -> str | None:
        settings: Settings = (info.context or {})["settings"]
        limit = settings.max_title_length if info.field_name == "title" else settings.max_description_length
        if value is not None and len(value) > limit:
            raise ValueError(f"is {len(value)} characters long; the limit is {limit}")
        return value


class AgentInput(BaseModel):
    """An agent definition as given to `python cli.py create-agent`."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    name: Name
    prompt: Prompt
    model: Name
    fallback_model: Name | None = None
    temperature: float = Field(0.7, ge=0, le=2)
    max_tokens: int = Field(1000, ge=1, le=200_000)
    settings: AgentSettings = AgentSettings()

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


def parse_agent_input(data: Any) -> AgentInput:
    """Validate raw agent data. Raises: TaskValidationError naming every bad field."""
    return _parse(AgentInput, data, context=None)


def _parse(model: type[Model], data: Any, *, context: dict[str, Any] | None) -> Model:
    if not isinstance(data, dict):
        raise TaskValidationError(f"{model.__name__} must be a mapping, not {type(data).__name__}")
    try:
        return model.model_validate(data, context=context)
    except ValidationError as exc:
        raise TaskValidationError(_describe(exc)) from None


def _describe(exc: ValidationError) -> str:
    problems = [f"{'.'.join(str(p) for p in err['loc']) or 'input'}: {err['msg']}" for err in exc.errors()]
    return "invalid task input: " + "; ".join(problems)
