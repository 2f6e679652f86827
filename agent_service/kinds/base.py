"""The task-kind seam: what a kind of agent work asks the model, and what it makes of the answer.

A kind is one file in this package implementing `TaskKind`, registered in `kinds.KINDS`. The LLM
process never sees a kind: it runs the plain `LLMRequest` that `build_request` returns.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from agent_service.errors import PermanentError
from agent_service.llm.messages import LLMReply, LLMRequest, Message, OutputSchema
from agent_service.store.agents import AgentSpec


class KindName(StrEnum):
    """The kinds of agent work: text in and out, a decision among options, tool calls over HTTP, JSON data."""

    TEXT = "text"
    DECISION = "decision"
    API = "api"
    DATA = "data"


@dataclass(frozen=True)
class TaskWork:
    """The part of a claimed task a kind reads: its agent and what the task says (its words, and its JSON
    payload when it has one)."""

    agent: AgentSpec
    title: str
    description: str
    payload: Any = None


def task_text(work: TaskWork, *, payload: Any = None) -> str:
    """The task's own words, as the user message gives them, and `payload` as JSON when there is one."""
    text = f"Task: {work.title}\n\nDescription: {work.description}"
    if payload is None:
        return text
    return f"{text}\n\nInput (JSON):\n{json.dumps(payload, indent=2, ensure_ascii=False)}"


def agent_request(work: TaskWork, user: str, *, output_schema: OutputSchema | None = None) -> LLMRequest:
    """The request of a one-turn kind: the agent's model, settings and prompt (as the system message), and
    `user` as the user's message; with `output_schema`, structured output in place of any JSON mode the
    agent's options ask for (the two are one provider setting)."""
    agent = work.agent
    options = agent.options if output_schema is None else agent.options.model_copy(update={"response_format": "text"})
    return LLMRequest(
        model=agent.model,
        temperature=agent.temperature,
        max_tokens=agent.max_tokens,
        options=options,
        messages=(Message("system", agent.prompt), Message("user", user)),
        output_schema=output_schema,
    )


def answered_text(reply: LLMReply) -> str:
    """The reply's text. Raises: PermanentError when the model refused to give the structured output asked
    for (asking again would only be refused again)."""
    if reply.refused:
        raise PermanentError(f"the model refused: {reply.text}")
    return reply.text


@dataclass(frozen=True)
class KindResult:
    """What a task produced: the text stored as its result, and structured data when the kind has any."""

    text: str
    data: Any = None


@dataclass(frozen=True)
class AgentDefinition:
    """The parts of an agent definition, as given when the agent is created, that a kind may need to check:
    its HTTP tools and the hosts they may call (api), the JSON Schema of its results (data) and its options
    (decision)."""

    kind: str
    tools: list[dict[str, Any]] | None = None
    output_schema: dict[str, Any] | None = None
    choices: list[str] | None = None
    allowed_hosts: list[str] | None = None  # api: the only hosts its tools may call


class TaskKind(Protocol):
    """One kind of agent work."""

    name: str

    def check_agent(self, agent: AgentDefinition) -> None:
        """Check what an agent of this kind must carry, when it is created. Raises: TaskValidationError whose
        message starts with the bad field (`output_schema: ...`)."""

    def check_task(self, work: TaskWork) -> None:
        """Check that a task of this kind can run as given (its payload, what its agent carries): when it is
        submitted, and again by `build_request`. Raises: PermanentError whose message starts with the bad field
        (`payload.options: ...`)."""

    def build_request(self, work: TaskWork) -> LLMRequest:
        """The request to send for this task."""

    def interpret(self, work: TaskWork, reply: LLMReply) -> KindResult:
        """The task's result from the model's reply. Raises: PermanentError or RetryableError when the
        reply cannot be used."""
