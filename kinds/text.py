"""The `text` kind: natural-language analysis and generation; the reply's text is the result."""

from __future__ import annotations

import json

from errors import InvalidOutputError
from kinds.base import KindResult, TaskWork
from llm.messages import LLMReply, LLMRequest, Message


class TextKind:
    """The agent's prompt as the system message, the task's title and description as the user's."""

    name = "text"

    def build_request(self, work: TaskWork) -> LLMRequest:
        agent = work.agent
        task = f"Task: {work.title}\n\nDescription: {work.description}"
        return LLMRequest(
            model=agent.model,
            temperature=agent.temperature,
            max_tokens=agent.max_tokens,
            options=agent.options,
            messages=(Message("system", agent.prompt), Message("user", task)),
        )

    def interpret(self, work: TaskWork, reply: LLMReply) -> KindResult:
        """The reply's text; for an agent that asks for JSON (`response_format` json_object), parsed as well.
        Raises: InvalidOutputError when JSON was asked for and the reply is not JSON."""
        if work.agent.options.response_format != "json_object":
            return KindResult(text=reply.text)
        try:
            return KindResult(text=reply.text, data=json.loads(reply.text))
        except json.JSONDecodeError as exc:
            raise InvalidOutputError(f"the reply is not valid JSON: {exc}") from None
