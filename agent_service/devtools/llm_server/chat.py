"""A ``/v1/chat/completions`` request as the server reads it: its model, the text and role of each message,
its tools and the body as sent; `parse_chat_request` validates it as OpenAI would."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from agent_service.devtools.llm_server.errors import ApiError
from agent_service.devtools.llm_server.validation import read_json_object

LOG_TEXT_CHARS = 300


@dataclass(frozen=True)
class ChatRequest:
    body: dict[str, Any]
    model: str
    texts: list[str]
    roles: list[str]
    last_user_text: str
    tools: list[dict[str, Any]]

    @property
    def log_text(self) -> str:
        return "\n".join(self.texts)[:LOG_TEXT_CHARS]

    @property
    def turn(self) -> int:
        """The model turns the conversation holds already: which reply of a script answers it."""
        return self.roles.count("assistant")

    @property
    def conversation_key(self) -> str:
        """The same for every request of one conversation at one turn: a retried turn gets the same ids."""
        seed = json.dumps([self.roles, self.texts])
        return hashlib.sha256(seed.encode()).hexdigest()


def message_text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: [{"type": "text", "text": ...}, ...]
        texts = (part.get("text") for part in content if isinstance(part, dict))
        return " ".join(text for text in texts if isinstance(text, str))
    return ""


def last_user_text(messages: list[dict[str, Any]]) -> str:
    return next((message_text(m) for m in reversed(messages) if m.get("role") == "user"), "")


def validated_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise ApiError("'messages' must be a non-empty list of message objects", param="messages")
    return messages


def validated_model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError("you must provide a model parameter", param="model")
    return model


def is_function_tool(tool: Any) -> bool:
    function = tool.get("function") if isinstance(tool, dict) else None
    return isinstance(function, dict) and isinstance(function.get("name"), str)


def validated_tools(body: dict[str, Any]) -> list[dict[str, Any]]:
    tools = body.get("tools") or []
    if not isinstance(tools, list) or not all(is_function_tool(tool) for tool in tools):
        raise ApiError("'tools' must be a list of {'type': 'function', 'function': {'name': ...}}", param="tools")
    return tools


async def parse_chat_request(request: web.Request) -> ChatRequest:
    body = await read_json_object(request)
    messages = validated_messages(body)
    return ChatRequest(
        body=body,
        model=validated_model(body),
        texts=[message_text(m) for m in messages],
        roles=[str(m.get("role", "")) for m in messages],
        last_user_text=last_user_text(messages),
        tools=validated_tools(body),
    )
