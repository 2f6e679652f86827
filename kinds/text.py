"""The `text` kind: natural-language analysis and generation; the reply's text is the result."""

from __future__ import annotations

from kinds.base import KindResult, TaskWork
from llm.messages import LLMReply, LLMRequest


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
            messages=(("system", agent.prompt), ("user", task)),
        )

    def interpret(self, work: TaskWork, reply: LLMReply) -> KindResult:
        return KindResult(text=reply.text)
