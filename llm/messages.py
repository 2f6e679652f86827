"""The plain values an LLM call takes and gives back. They cross into the LLM process, so they carry no
task kind, no database row and nothing that needs more than the standard library and pydantic."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Role = Literal["system", "user", "assistant"]


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
    """One chat completion to run: the model, its settings and the messages, in order."""

    model: str
    temperature: float
    max_tokens: int
    options: ModelOptions
    messages: tuple[tuple[Role, str], ...]

    def estimated_prompt_tokens(self) -> int:
        """The prompt's tokens, estimated from its characters (about 1 µs), for reservations before the call."""
        characters = sum(len(text) for _, text in self.messages)
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
    """What the model answered, what it cost in tokens (None when the provider did not say), and why it
    stopped (`stop`, `length`, `content_filter`, ...; None when not said)."""

    text: str
    usage: Usage | None
    finish_reason: str | None = None
