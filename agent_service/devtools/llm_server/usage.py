"""Token accounting: the server counts words as tokens (so tests can predict them), reports them as OpenAI's
``usage``, and keeps a prompt cache that reports a system message seen before as
``prompt_tokens_details.cached_tokens``, as a provider's prompt cache does."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from agent_service.devtools.llm_server.chat import ChatRequest

PROMPT_CACHE_SIZE = 100_000


def count_tokens(text: str) -> int:
    """The server's tokens: words, so that tests can predict them."""
    return len(text.split())


def prompt_tokens(chat: ChatRequest) -> int:
    return max(1, sum(count_tokens(text) for text in chat.texts))


def usage(chat: ChatRequest, completion_text: str, *, cached_tokens: int) -> dict[str, Any]:
    prompt, completion = prompt_tokens(chat), count_tokens(completion_text)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }


@dataclass
class PromptCache:
    """The system prompts seen so far (at most `PROMPT_CACHE_SIZE`, then it starts over)."""

    seen_system_prompts: set[str] = field(default_factory=set)

    def cached_tokens(self, chat: ChatRequest) -> int:
        """The tokens of the system message when it was seen before: a provider's prompt cache, made
        deterministic (the first request with a system prompt pays for all of it, later ones hit the cache)."""
        system = next((text for text, role in zip(chat.texts, chat.roles, strict=True) if role == "system"), None)
        if system is None:
            return 0
        if system in self.seen_system_prompts:
            return count_tokens(system)
        if len(self.seen_system_prompts) >= PROMPT_CACHE_SIZE:
            self.seen_system_prompts.clear()
        self.seen_system_prompts.add(system)
        return 0

    def clear(self) -> None:
        self.seen_system_prompts.clear()
