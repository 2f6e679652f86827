"""The task-kind seam: what a kind of agent work asks the model, and what it makes of the answer.

A kind is one file in this package implementing `TaskKind`, registered in `kinds.KINDS`. The LLM
process never sees a kind: it runs the plain `LLMRequest` that `build_request` returns.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from llm.messages import LLMReply, LLMRequest
from store.agents import AgentSpec


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


@dataclass(frozen=True)
class KindResult:
    """What a task produced: the text stored as its result, and structured data when the kind has any."""

    text: str
    data: Any = None


class TaskKind(Protocol):
    """One kind of agent work."""

    name: str

    def build_request(self, work: TaskWork) -> LLMRequest:
        """The request to send for this task."""

    def interpret(self, work: TaskWork, reply: LLMReply) -> KindResult:
        """The task's result from the model's reply. Raises: PermanentError or RetryableError when the
        reply cannot be used."""
