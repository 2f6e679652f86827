"""The `text` kind: natural-language analysis and generation; the reply's text is the result."""

from __future__ import annotations

import json

from agent_service.errors import InvalidOutputError
from agent_service.kinds.base import (
    AgentDefinition,
    KindName,
    KindResult,
    OneShotKind,
    TaskWork,
    agent_request,
    task_text,
)
from agent_service.llm.messages import LLMReply, LLMRequest


class TextKind(OneShotKind):
    """The agent's prompt as the system message, the task's title, description and payload (if any) as the
    user's."""

    name: str = KindName.TEXT

    def check_agent(self, agent: AgentDefinition) -> None:
        """A text agent needs nothing beyond its prompt."""

    def check_task(self, work: TaskWork) -> None:
        """A text task needs nothing beyond its words."""

    def build_request(self, work: TaskWork) -> LLMRequest:
        return agent_request(work, task_text(work, payload=work.payload))

    def interpret(self, work: TaskWork, reply: LLMReply) -> KindResult:
        """The reply's text; for an agent that asks for JSON (`response_format` json_object), parsed as well.
        Raises: InvalidOutputError when JSON was asked for and the reply is not JSON."""
        if work.agent.options.response_format != "json_object":
            return KindResult(text=reply.text)
        try:
            return KindResult(text=reply.text, data=json.loads(reply.text))
        except json.JSONDecodeError as exc:
            raise InvalidOutputError(f"the reply is not valid JSON: {exc}") from None
