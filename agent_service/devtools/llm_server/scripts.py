"""Scripted replies, in place of the default one. A script is a list of replies, one per model turn, and a
request gets ``replies[turn]`` (turn = the assistant messages it carries; the last reply repeats), so it needs
no state per conversation. A reply is one of ``{"tool_calls": [{"name": ..., "arguments": {...}}]}``,
``{"content": TEXT}``, ``{"json": VALUE}``, ``{"invalid_json": true}``, ``{"refusal": TEXT}`` or
``{"fault": KIND}``.

Register one with ``POST /control/scripts`` (``{"name": ..., "replies": [...]}``), then name it in an
``X-Mock-Script`` header or a ``[[script:NAME]]`` directive, or give a rule ``"script"`` (a name or the replies
inline) in place of ``"fault"`` (see `rules`)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agent_service.devtools.llm_server.chat import ChatRequest
from agent_service.devtools.llm_server.errors import ApiError
from agent_service.devtools.llm_server.faults import Fault, parse_fault
from agent_service.devtools.llm_server.validation import optional_text, reject_unknown_fields

INVALID_JSON_CONTENT = '{"answer": "cut short'  # what a model asked for JSON may still send
REPLY_KINDS = ("tool_calls", "content", "json", "invalid_json", "refusal", "fault")
REPLY_FIELDS = {kind: frozenset({kind}) for kind in REPLY_KINDS} | {
    "fault": frozenset({"fault", "retry_after", "delay_ms"})
}
TOOL_CALL_FIELDS = frozenset({"name", "arguments"})
SCRIPT_FIELDS = frozenset({"name", "replies"})
SCRIPT_MARKER = "[[script:"
SCRIPT_DIRECTIVE = re.compile(r"\[\[script:([^\s\]]+)\]\]")


@dataclass(frozen=True)
class ScriptedReply:
    """One model turn of a script: text, tool calls or a refusal (or a fault, chosen before it)."""

    content: str | None = None
    tool_calls: tuple[tuple[str, str], ...] = ()  # (tool name, arguments as JSON text)
    refusal: str | None = None
    fault: Fault | None = None


@dataclass(frozen=True)
class Script:
    """Replies one per model turn: a request gets `replies[turn]`, the last one repeating. Stateless, so
    concurrent conversations and a conversation resumed after a crash each get the reply for their turn."""

    replies: tuple[ScriptedReply, ...]
    source: list[Any]  # as given, for listing
    name: str | None = None

    def reply_for(self, chat: ChatRequest) -> ScriptedReply:
        return self.replies[min(chat.turn, len(self.replies) - 1)]


INVALID_JSON_REPLY = ScriptedReply(content=INVALID_JSON_CONTENT)


def registered_script(name: str, *, scripts: Mapping[str, Script], source: str) -> Script:
    script = scripts.get(name)
    if script is None:
        known = ", ".join(sorted(scripts)) or "none"
        raise ApiError(f"no script named {name!r} in {source}; registered: {known}", param=source)
    return script


def header_script(scripts: Mapping[str, Script], headers: Mapping[str, str]) -> Script | None:
    name = headers.get("X-Mock-Script")
    return None if name is None else registered_script(name, scripts=scripts, source="X-Mock-Script")


def directive_script(scripts: Mapping[str, Script], texts: list[str]) -> Script | None:
    for text in texts:
        directive = SCRIPT_DIRECTIVE.search(text) if SCRIPT_MARKER in text else None
        if directive:
            return registered_script(directive.group(1), scripts=scripts, source="[[script:...]] directive")
    return None


def parse_named_script(body: dict[str, Any]) -> tuple[str, Script]:
    """A script to register, and its name: {"name": NAME, "replies": [reply, ...]}."""
    reject_unknown_fields(body, SCRIPT_FIELDS)
    name = script_name(body)
    return name, parse_script(body.get("replies"), where="replies", name=name)


def script_name(body: dict[str, Any]) -> str:
    """The body's "name": one a ``[[script:NAME]]`` directive can carry."""
    name = optional_text(body, "name")
    if name is None or SCRIPT_DIRECTIVE.fullmatch(f"[[script:{name}]]") is None:
        raise ApiError(f"'name' must be a non-empty string without spaces or ']', got {name!r}", param="name")
    return name


def parse_script(value: Any, *, where: str, name: str | None = None) -> Script:
    if not isinstance(value, list) or not value:
        raise ApiError(f"'{where}' must be a non-empty list of replies, one per model turn", param=where)
    replies = tuple(parse_scripted_reply(reply, where=f"{where}[{index}]") for index, reply in enumerate(value))
    return Script(replies=replies, source=value, name=name)


def parse_scripted_reply(value: Any, *, where: str) -> ScriptedReply:
    """One of {"tool_calls": [...]}, {"content": TEXT}, {"json": VALUE}, {"invalid_json": true},
    {"refusal": TEXT} or {"fault": KIND, "retry_after"?: S, "delay_ms"?: MS}."""
    kinds = [kind for kind in REPLY_KINDS if isinstance(value, dict) and kind in value]
    if len(kinds) != 1:
        raise ApiError(f"'{where}' must be an object with exactly one of {list(REPLY_KINDS)}", param=where)
    kind, reply = kinds[0], value[kinds[0]]
    reject_unknown_fields(value, REPLY_FIELDS[kind], where=where)
    if kind == "tool_calls":
        return ScriptedReply(tool_calls=parse_tool_calls(reply, where=f"{where}.tool_calls"))
    if kind == "json":
        return ScriptedReply(content=json.dumps(reply))
    if kind == "invalid_json":
        if reply is not True:
            raise ApiError(f"'{where}.invalid_json' must be true", param=f"{where}.invalid_json")
        return INVALID_JSON_REPLY
    if kind == "fault":
        return ScriptedReply(fault=parse_fault(value, where=where))
    if not isinstance(reply, str) or (kind == "refusal" and not reply):
        raise ApiError(f"'{where}.{kind}' must be a string, got {reply!r}", param=f"{where}.{kind}")
    return ScriptedReply(content=reply) if kind == "content" else ScriptedReply(refusal=reply)


def parse_tool_calls(value: Any, *, where: str) -> tuple[tuple[str, str], ...]:
    """[{"name": TOOL, "arguments": {...} or a JSON text (a malformed one on purpose)}, ...]"""
    if not isinstance(value, list) or not value:
        raise ApiError(f"'{where}' must be a non-empty list of {{'name': ..., 'arguments': {{...}}}}", param=where)
    calls = []
    for index, call in enumerate(value):
        place = f"{where}[{index}]"
        if not isinstance(call, dict):
            raise ApiError(f"'{place}' must be an object", param=place)
        reject_unknown_fields(call, TOOL_CALL_FIELDS, where=place)
        name, arguments = call.get("name"), call.get("arguments", {})
        if not isinstance(name, str) or not name:
            raise ApiError(f"'{place}.name' must be a non-empty string, got {name!r}", param=f"{place}.name")
        if not isinstance(arguments, (dict, str)):
            message = f"'{place}.arguments' must be an object (or a JSON text), got {arguments!r}"
            raise ApiError(message, param=f"{place}.arguments")
        calls.append((name, arguments if isinstance(arguments, str) else json.dumps(arguments)))
    return tuple(calls)
