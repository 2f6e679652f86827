"""The plain values an LLM call takes and gives back. They cross into the LLM process, so they carry no
task kind, no database row and nothing that needs more than the standard library and pydantic."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

from agent_service.llm.send_slots import SendSlot

Role = Literal["system", "user", "assistant", "tool"]


class ToolCall(NamedTuple):
    """A call of a tool the model asked for: the provider's call id, the tool's name and its arguments as the
    JSON text the model wrote (parsed and checked by the caller, since a model may write anything)."""

    id: str
    name: str
    arguments: str


class Message(NamedTuple):
    """One chat message. An assistant message may carry the tool calls it asked for; a tool message answers
    the call `tool_call_id`."""

    role: Role
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None


class ToolSpec(NamedTuple):
    """A tool offered to the model: its name, what it does, and the JSON Schema of its arguments (as JSON
    text, so that a request stays hashable and cheap to send to the LLM process)."""

    name: str
    description: str
    parameters_json: str


class OutputSchema(NamedTuple):
    """Structured output asked of the model: a name and the JSON Schema its reply must follow (JSON text)."""

    name: str
    schema_json: str


class ModelOptions(BaseModel):
    """Extra model settings an agent may carry; anything else is a configuration error."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    top_p: float | None = Field(None, ge=0, le=1)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    seed: int | None = None
    stop: list[str] | None = None
    response_format: Literal["text", "json_object"] = "text"


# Estimating a prompt's tokens before the call: OpenAI's rule of thumb for English (tiktoken needs its
# encodings from the network), plus the chat format's own tokens around each message and the reply's priming.
CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 3
REPLY_PRIMING_TOKENS = 3


@dataclass(frozen=True)
class LLMRequest:
    """One chat completion to run: the model, its settings and the messages, in order; the tools the model
    may call and the structured output asked for, if any; for a task someone follows live, the Redis
    stream its tokens are published to as they arrive; for a call admitted by the rate limits, the slot it
    holds, which it must leave within; and, when traced, the W3C traceparent of the task's span that the call's
    span hangs under."""

    model: str
    temperature: float
    max_tokens: int
    options: ModelOptions
    messages: tuple[Message, ...]
    tools: tuple[ToolSpec, ...] = ()
    output_schema: OutputSchema | None = None
    stream_key: str | None = None
    send_slot: SendSlot | None = None
    traceparent: str | None = None

    def estimated_prompt_tokens(self) -> int:
        """The prompt's tokens, estimated from its characters (about 1 µs), for reservations before the call."""
        characters = sum(len(message.content) for message in self.messages)
        characters += sum(len(tool.description) + len(tool.parameters_json) for tool in self.tools)
        return math.ceil(characters / CHARS_PER_TOKEN) + TOKENS_PER_MESSAGE * len(self.messages) + REPLY_PRIMING_TOKENS


@dataclass(frozen=True)
class Usage:
    """Tokens one call used, as the provider reported them. `cached_tokens` is the part of the prompt the
    provider read from its prompt cache (billed at a lower price); it is included in `prompt_tokens`."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cached_tokens: int = 0


@dataclass(frozen=True)
class LLMReply:
    """What the model answered (its text, and the tools it asked to call), what it cost in tokens (None when
    the provider did not say), and why it stopped (`stop`, `length`, `tool_calls`, `content_filter`, ...; None
    when not said). A refusal (structured output the model declined to give) is its text, with `refused`."""

    text: str
    usage: Usage | None
    finish_reason: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    refused: bool = False
