"""What the model says: the deterministic default reply, or a scripted one, with its tool calls and usage.

The default reply answers ``Offline answer to: <last user message>``, in the ``response_format`` asked for.
With ``tools`` it calls the tool ``tool_choice`` names (else the first) until a tool result is in the
conversation, then answers with text; a forced ``tool_choice`` (a named tool, ``"required"``) always calls."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from agent_service.devtools.llm_server.chat import ChatRequest
from agent_service.devtools.llm_server.scripts import ScriptedReply
from agent_service.devtools.llm_server.structured import formatted_content, sample_value
from agent_service.devtools.llm_server.usage import usage

ANSWER_PREFIX = "Offline answer to: "
ANSWER_SOURCE_CHARS = 200


@dataclass(frozen=True)
class Reply:
    content: str | None
    usage: dict[str, Any]
    tool_calls: tuple[dict[str, Any], ...] = ()
    refusal: str | None = None
    filtered: bool = False

    @property
    def finish_reason(self) -> str:
        if self.filtered:
            return "content_filter"
        return "tool_calls" if self.tool_calls else "stop"


def chosen_tool(chat: ChatRequest) -> dict[str, Any] | None:
    """The tool the default reply calls: the one `tool_choice` names, else the first. A call that is not
    forced (by a named tool or "required") is made only until a tool result is in the conversation, so an
    agent that runs tools over several steps ends with a text answer."""
    choice = chat.body.get("tool_choice")
    forced = choice == "required" or isinstance(choice, dict)
    if not chat.tools or choice == "none" or ("tool" in chat.roles and not forced):
        return None
    wanted = choice.get("function", {}).get("name") if isinstance(choice, dict) else None
    return next((tool for tool in chat.tools if tool["function"]["name"] == wanted), chat.tools[0])


def sampled_arguments(tool: dict[str, Any], *, answer: str) -> str:
    parameters = tool["function"].get("parameters") or {"type": "object"}
    return json.dumps(sample_value(parameters, text=answer, root=parameters))


def tool_calls(chat: ChatRequest, calls: tuple[tuple[str, str], ...]) -> tuple[dict[str, Any], ...]:
    """OpenAI's tool_calls for (name, arguments) pairs, with ids derived from the conversation and turn."""
    return tuple(
        {
            "id": "call_" + hashlib.sha256(f"{chat.conversation_key}:{index}".encode()).hexdigest()[:24],
            "type": "function",
            "function": {"name": name, "arguments": arguments},
        }
        for index, (name, arguments) in enumerate(calls)
    )


def default_reply(chat: ChatRequest) -> ScriptedReply:
    """The deterministic reply: a call to the chosen tool, else the answer in the format asked for."""
    answer = ANSWER_PREFIX + chat.last_user_text[:ANSWER_SOURCE_CHARS]
    tool = chosen_tool(chat)
    if tool is not None:
        return ScriptedReply(tool_calls=((tool["function"]["name"], sampled_arguments(tool, answer=answer)),))
    return ScriptedReply(content=formatted_content(chat.body.get("response_format"), answer))


def build_reply(
    chat: ChatRequest, *, cached_tokens: int, scripted: ScriptedReply | None = None, filtered: bool = False
) -> Reply:
    """The reply to send: `scripted`, or the default one; usage counts the words of what it says."""
    if filtered:
        return Reply(content="", usage=usage(chat, "", cached_tokens=cached_tokens), filtered=True)
    scripted = scripted or default_reply(chat)
    said = " ".join([scripted.content or "", scripted.refusal or "", *(args for _, args in scripted.tool_calls)])
    return Reply(
        content=scripted.content,
        usage=usage(chat, said, cached_tokens=cached_tokens),
        tool_calls=tool_calls(chat, scripted.tool_calls),
        refusal=scripted.refusal,
    )
