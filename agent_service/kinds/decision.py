"""The `decision` kind: the model chooses one of the task's options (or its agent's), with a rationale and a
confidence, as structured output validated by a pydantic model built for those options."""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from agent_service.errors import InvalidOutputError, PermanentError, validation_problems
from agent_service.kinds.base import (
    AgentDefinition,
    KindName,
    KindResult,
    OneShotKind,
    TaskWork,
    agent_request,
    answered_text,
    task_text,
)
from agent_service.llm.messages import LLMReply, LLMRequest, OutputSchema

INSTRUCTION = "Choose exactly one of the options, and say why and how confident you are (0 to 1)."


class Decision(BaseModel):
    """The shape of a decision; `choice` is narrowed to the task's options by `decision_model`."""

    model_config = ConfigDict(extra="forbid")

    choice: str
    rationale: str
    confidence: float = Field(ge=0, le=1)


class DecisionKind(OneShotKind):
    """The agent's prompt as the system message; the task's words, its options and the rest of its payload
    as the user's. The result is the choice, with the rationale and confidence as its data."""

    name: str = KindName.DECISION

    def check_agent(self, agent: AgentDefinition) -> None:
        """A decision agent may carry its choices (checked with its settings) or leave them to its tasks."""

    def check_task(self, work: TaskWork) -> None:
        options(work)

    def build_request(self, work: TaskWork) -> LLMRequest:
        choices = options(work)
        listed = "\n".join(f"- {option}" for option in choices)
        user = f"{task_text(work, payload=_context(work.payload))}\n\nOptions:\n{listed}\n\n{INSTRUCTION}"
        return agent_request(work, user, output_schema=decision_schema(choices))

    def interpret(self, work: TaskWork, reply: LLMReply) -> KindResult:
        """Raises: PermanentError when the model refused; InvalidOutputError (re-asked once) with pydantic's
        account of what is wrong when the reply is not a decision among the options."""
        text = answered_text(reply)
        try:
            decision = decision_model(options(work)).model_validate_json(text)
        except ValidationError as exc:
            raise InvalidOutputError(f"the reply is not a valid decision: {validation_problems(exc)}") from None
        line = f"{decision.choice} (confidence {decision.confidence:.2f}): {decision.rationale}"
        return KindResult(text=line, data=decision.model_dump())


def options(work: TaskWork) -> tuple[str, ...]:
    """The task's options (`payload["options"]`), or else its agent's choices.
    Raises: PermanentError when there are none, or the task's are not at least two distinct strings."""
    given = work.payload.get("options") if isinstance(work.payload, dict) else None
    if given is None:
        if work.agent.choices is None:
            raise PermanentError("payload.options: a decision task needs options, or an agent with settings.choices")
        return work.agent.choices
    if not (isinstance(given, list) and all(isinstance(option, str) and option.strip() for option in given)):
        raise PermanentError("payload.options: must be a list of non-empty strings")
    if len(given) < 2 or len(set(given)) != len(given):
        raise PermanentError(f"payload.options: must be at least 2 distinct strings, got {given!r:.200}")
    return tuple(given)


def _context(payload: Any) -> Any:
    """The payload without its options: what else the task tells the model (None when nothing)."""
    if not isinstance(payload, dict):
        return payload
    return {key: value for key, value in payload.items() if key != "options"} or None


@lru_cache(maxsize=256)
def decision_model(choices: tuple[str, ...]) -> type[Decision]:
    """The `Decision` model whose `choice` is one of `choices`: its JSON Schema is the structured output asked
    for, and it validates the reply."""
    return create_model("Decision", __base__=Decision, choice=(Literal[choices], ...))  # type: ignore[arg-type]


@lru_cache(maxsize=256)
def decision_schema(choices: tuple[str, ...]) -> OutputSchema:
    """The structured output asked for a decision among `choices`: `decision_model`'s JSON Schema, made once
    per set of choices (pydantic takes about 0.5 ms to make it)."""
    return OutputSchema("decision", json.dumps(decision_model(choices).model_json_schema()))
