"""The task-kind seam: a kind decides the turns of a task's run, and what their replies make.

A kind is one file in this package implementing `TaskKind`, registered with `kinds.register`. Its `start`
returns a `Run` for one task, which the pipeline drives as a loop of turns (think of a Temporal workflow,
or LangGraph's loop of nodes): `run.next(None)` gives the first turn, and `run.next(done)` (what the last
turn came to: `ModelReplied`, or `ToolsAnswered` with each call's result in order) the next one:

- `AskModel(request)`: a model call, through admission like any call;
- `CallTools(calls)`: tool calls, made concurrently; a call asked with `needs_approval` pauses the run for a
  reviewer first (the task gives its claim back and waits, holding no slot; a rejected call is never made
  and its result says so);
- `End(result)` or `End(error=...)`: the task's result, or why it fails.

A run is plain, deterministic code over what it is told: no I/O, no clock. That is what makes a run of a
`durable` kind resumable: the pipeline records each model turn and tool call as a step before the next one
starts, and after a crash, a retry, a deferral or an approval it replays the recorded replies and results
into a fresh run and goes on after the last step (`execution.steps`), never calling twice what was
recorded. A one-shot kind (`durable = False`: text, decision, data) records no steps: its run is asked
again from its start on each attempt, and its extra turn (a re-ask of a reply that was not the output asked
for) stays within one attempt. `OneShot` is such a run for a kind that builds one request and interprets
its reply. A kind raises PermanentError (or RetryableError) from `next` for a task that cannot run.

The LLM process never sees a kind: it runs the plain `LLMRequest` of each `AskModel`.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any, Protocol

from agent_service.errors import InvalidOutputError, PermanentError, RetryableError
from agent_service.llm.messages import LLMReply, LLMRequest, Message, OutputSchema, ToolCall
from agent_service.store.agents import AgentSpec
from agent_service.tools.definitions import ToolDefinition


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


@dataclass(frozen=True)
class AskModel:
    """Next: this model call. `after`: what was wrong with the reply this call asks again about (the task's
    error, its reply paid for, when this call cannot be made now)."""

    request: LLMRequest
    after: PermanentError | RetryableError | None = None


@dataclass(frozen=True)
class ToolRequest:
    """One tool call of a `CallTools` turn: the call as written (its id answers it in the conversation), the
    tool that makes it and the hosts it may reach; `problem`, why it cannot be made as written (never made,
    its result is the problem); `needs_approval`, a reviewer decides first."""

    call: ToolCall
    tool: ToolDefinition | None
    allowed_hosts: tuple[str, ...] = ()
    problem: str | None = None
    needs_approval: bool = False


@dataclass(frozen=True)
class CallTools:
    """Next: these tool calls, concurrently; the run is told their results together."""

    calls: tuple[ToolRequest, ...]


@dataclass(frozen=True)
class End:
    """The run is over: the task's result, or why it fails."""

    result: KindResult | None = None
    error: PermanentError | RetryableError | None = None


Turn = AskModel | CallTools | End


@dataclass(frozen=True)
class ModelReplied:
    """The model call's reply (its tool calls, if any, each with an id of its own)."""

    reply: LLMReply


@dataclass(frozen=True)
class ToolsAnswered:
    """The tool calls' results as a model reads them, in the order they were asked for."""

    results: tuple[str, ...]


Done = ModelReplied | ToolsAnswered


class Run(Protocol):
    """One task's run of turns."""

    def next(self, done: Done | None) -> Turn:
        """The next turn, after what the last one came to (None: the first turn). Raises: PermanentError or
        RetryableError when the task cannot go on (a reply that cannot be used, say)."""


class TaskKind(Protocol):
    """One kind of agent work."""

    name: str
    durable: bool  # each turn recorded as a step, a run resumed after its last one (multi-turn kinds)

    def check_agent(self, agent: AgentDefinition) -> None:
        """Check what an agent of this kind must carry, when it is created. Raises: TaskValidationError whose
        message starts with the bad field (`output_schema: ...`)."""

    def check_task(self, work: TaskWork) -> None:
        """Check that a task of this kind can run as given (its payload, what its agent carries): when it is
        submitted, and again when its run starts. Raises: PermanentError whose message starts with the bad
        field (`payload.options: ...`)."""

    def start(self, work: TaskWork) -> Run:
        """A run of this task, at its beginning."""


class OneShot:
    """The run of a one-turn kind: its request, then its reply's result; a reply that is not the output asked
    for is asked about again, once, with the reply and what is wrong with it."""

    def __init__(self, kind: OneShotKind, work: TaskWork) -> None:
        self._kind, self._work = kind, work
        self._request: LLMRequest | None = None
        self._reasked = False

    def next(self, done: Done | None) -> Turn:
        if not isinstance(done, ModelReplied):
            self._request = self._kind.build_request(self._work)
            return AskModel(self._request)
        try:
            return End(self._kind.interpret(self._work, done.reply))
        except InvalidOutputError as exc:
            if self._reasked or self._request is None:
                raise
            self._reasked = True
            return AskModel(_reasked(self._request, done.reply.text, exc), after=exc)


def _reasked(request: LLMRequest, text: str, error: InvalidOutputError) -> LLMRequest:
    correction = f"That reply cannot be used: {error}. Answer again with only the output asked for."
    return replace(request, messages=(*request.messages, Message("assistant", text), Message("user", correction)))


class OneShotKind(ABC):
    """A kind that asks the model once and makes the task's result from the reply: no steps, `OneShot` runs."""

    name: str
    durable = False

    @abstractmethod
    def build_request(self, work: TaskWork) -> LLMRequest:
        """The request to send for this task."""

    @abstractmethod
    def interpret(self, work: TaskWork, reply: LLMReply) -> KindResult:
        """The task's result from the model's reply. Raises: PermanentError or RetryableError when the
        reply cannot be used; InvalidOutputError when it is not the output asked for (asked again, once)."""

    def start(self, work: TaskWork) -> Run:
        return OneShot(self, work)
