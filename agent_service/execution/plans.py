"""What a durable run's events are (a reply arrived, a tool call ended), what comes after one (a model call,
tool calls to wait on, the end, a pause), and the `Plan` of steps to write on the way (`execution.steps`)."""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field

from agent_service.errors import PermanentError, RetryableError
from agent_service.kinds.base import AskModel, KindResult, ToolRequest
from agent_service.llm.messages import LLMReply, ToolCall, Usage
from agent_service.models import StepStatus
from agent_service.store.lifecycle import Charge
from agent_service.store.steps import StepWrite
from agent_service.tools.outcomes import ToolOutcome


@dataclass(frozen=True)
class Replied:
    """A model turn's reply arrived (or was found kept in Redis), with the model that gave it and its cost."""

    reply: LLMReply
    model: str
    charge: Charge | None


@dataclass(frozen=True)
class ToolDone:
    """A tool call of the run ended."""

    future: Future[ToolOutcome]


@dataclass(frozen=True)
class AwaitTools:
    """Next: these tool calls, started, end."""

    futures: tuple[Future[ToolOutcome], ...]


@dataclass(frozen=True)
class RunEnded:
    """The run is over: its result (charged step by step, so nothing here) or why it failed."""

    result: KindResult | None = None
    model: str = ""
    usage: Usage | None = None
    error: PermanentError | RetryableError | None = None


@dataclass(frozen=True)
class Paused:
    """The run waits for a reviewer (recorded): the task is `awaiting_approval`, its claim given back."""

    reason: str


# What comes after an event; None: other tool calls of the turn are still under way.
Next = AskModel | AwaitTools | RunEnded | Paused | None
Event = Replied | ToolDone | None  # None: the run is resumed


@dataclass
class Call:
    """A tool call the run asked for, at its step position; `result` once the run may be told it."""

    position: int
    request: ToolRequest
    status: StepStatus | None = None
    result: str | None = None
    recorded: bool = False

    @property
    def call(self) -> ToolCall:
        return self.request.call


@dataclass
class Plan:
    """What one event leads to: the steps to write (with a model turn's charge), the calls to start once they
    are committed, and what comes next; `pause` to give the claim back for a reviewer."""

    writes: list[StepWrite]
    charge: Charge | None = None
    start: list[Call] = field(default_factory=list)
    next: Next = None
    pause: str | None = None
