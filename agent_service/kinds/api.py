"""The `api` kind: the model calls the agent's HTTP tools over several turns, then answers in text.

This file says what the first request is (the agent's prompt, the task's words and payload, the agent's
tools), what each reply leads to (its tool calls, or, with none, the end: its text) and what the model is
asked next (the conversation with the calls' results). The pipeline records each turn and call as a step
(`execution.steps`, for any durable kind); the calls themselves are made by `tools.http`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from functools import lru_cache

from agent_service.errors import PermanentError, TaskValidationError, ToolDefinitionError
from agent_service.kinds.base import (
    AgentDefinition,
    AskModel,
    CallTools,
    Done,
    End,
    KindName,
    KindResult,
    ModelReplied,
    TaskWork,
    ToolRequest,
    ToolsAnswered,
    Turn,
    agent_request,
    task_text,
)
from agent_service.llm.messages import LLMRequest, Message, ToolCall, ToolSpec
from agent_service.store.agents import AgentSpec
from agent_service.tools.allowlist import parse_allowed_hosts
from agent_service.tools.definitions import ToolDefinition, parse_tools, validate_arguments


class ApiKind:
    """The agent's prompt as the system message; the task's title, description and payload as the user's;
    the agent's tools offered to the model."""

    name: str = KindName.API
    durable = True

    def check_agent(self, agent: AgentDefinition) -> None:
        """Raises: TaskValidationError naming each bad tool and field, or a host outside `allowed_hosts`."""
        try:
            check_tools(agent.tools, agent.allowed_hosts or [])
        except ToolDefinitionError as exc:
            raise TaskValidationError(str(exc)) from None

    def check_task(self, work: TaskWork) -> None:
        agent_tools(work.agent)

    def build_request(self, work: TaskWork) -> LLMRequest:
        """Raises: PermanentError when the agent's tools do not parse (an agent changed behind our back)."""
        tools = tuple(tool_spec(tool) for tool in agent_tools(work.agent))
        return replace(agent_request(work, task_text(work, payload=work.payload)), tools=tools)

    def start(self, work: TaskWork) -> ToolLoop:
        return ToolLoop(work, self.build_request(work))


class ToolLoop:
    """An api task's run: the model's turns, each followed by the tool calls it asks for (their results added
    to the conversation), until a turn that calls none, whose text is the result."""

    def __init__(self, work: TaskWork, first: LLMRequest) -> None:
        self._first, self._messages = first, list(first.messages)
        self._tools = {tool.name: tool for tool in agent_tools(work.agent)}
        self._hosts = allowed_hosts(work.agent)
        self._calls: tuple[ToolCall, ...] = ()

    def next(self, done: Done | None) -> Turn:
        if isinstance(done, ModelReplied):
            reply = done.reply
            self._messages.append(Message("assistant", reply.text, reply.tool_calls))
            self._calls = reply.tool_calls
            if not reply.tool_calls:
                return End(KindResult(text=reply.text))
            return CallTools(tuple(self._request(call) for call in reply.tool_calls))
        if isinstance(done, ToolsAnswered):  # the tool messages, in the order the model asked for the calls
            self._messages += [
                Message("tool", result, tool_call_id=call.id)
                for call, result in zip(self._calls, done.results, strict=True)
            ]
        return AskModel(replace(self._first, messages=tuple(self._messages)))

    def _request(self, call: ToolCall) -> ToolRequest:
        tool = self._tools.get(call.name)
        if tool is None:
            problem = f"unknown tool {call.name!r}; the tools are: {', '.join(self._tools)}"
            return ToolRequest(call, None, problem=problem)
        return ToolRequest(call, tool, self._hosts, _problem(tool, call), needs_approval=tool.requires_approval)


def _problem(tool: ToolDefinition, call: ToolCall) -> str | None:
    """Why this call cannot be made as the model wrote it (its result then says so), else None."""
    try:
        arguments = json.loads(call.arguments or "{}")
    except ValueError as exc:
        return f"the arguments are not valid JSON: {exc}"
    problem = validate_arguments(tool, arguments)
    return None if problem is None else f"invalid arguments: {problem}"


def check_tools(raw_tools: object, allowed_hosts: object) -> tuple[ToolDefinition, ...]:
    """An api agent's definition checked when it is created: its tools parse, and each one's host is among
    its allowed hosts. Raises: ToolDefinitionError (a ValueError) naming each bad tool and field
    (`tools[1].url: host x is not in the agent's allowed_hosts`, `allowed_hosts[0]: ...`)."""
    if not isinstance(allowed_hosts, Sequence) or isinstance(allowed_hosts, str | bytes):
        raise ToolDefinitionError("allowed_hosts: must be a list of host names")
    if not isinstance(raw_tools, Sequence) or isinstance(raw_tools, str | bytes) or not raw_tools:
        raise ToolDefinitionError("tools: an api agent needs a list of one tool definition at least")
    return parse_tools(raw_tools, allowed_hosts=parse_allowed_hosts(allowed_hosts))


def agent_tools(agent: AgentSpec) -> tuple[ToolDefinition, ...]:
    """The agent's tools, parsed (once per definition and process). Raises: PermanentError when they do not
    parse or leave the agent's allowed hosts."""
    try:
        return _parsed(json.dumps(agent.tools, sort_keys=True), agent.allowed_hosts)
    except ToolDefinitionError as exc:
        raise PermanentError(f"bad agent configuration: {exc}") from None


def allowed_hosts(agent: AgentSpec) -> tuple[str, ...]:
    """The agent's allowed hosts, normalised as the tool calls compare them."""
    return parse_allowed_hosts(agent.allowed_hosts)


def tool_spec(tool: ToolDefinition) -> ToolSpec:
    """What the model is told of a tool."""
    return ToolSpec(tool.name, tool.description, json.dumps(tool.parameters, sort_keys=True))


@lru_cache(maxsize=256)
def _parsed(tools_json: str, hosts: tuple[str, ...]) -> tuple[ToolDefinition, ...]:
    return check_tools(json.loads(tools_json), hosts)
