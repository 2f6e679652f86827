"""Offline OpenAI-compatible chat server for tests, demos and benchmarks.

It answers ``/v1/chat/completions`` deterministically (plain text, JSON mode,
tool calls, streaming) after a configurable latency, and injects faults (rate
limits, server errors, hangs, dropped connections, broken bodies) chosen by a
request header, by rules set through the ``/control`` API, or by a
``[[mock:KIND]]`` directive inside a message.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import re
import signal
import time
import uuid
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

MODEL_IDS = ("gpt-4o-mini", "gpt-4o")
SYSTEM_FINGERPRINT = "fp_offline"
ANSWER_PREFIX = "Offline answer to: "
ANSWER_SOURCE_CHARS = 200
LOG_TEXT_CHARS = 300
REQUEST_LOG_SIZE = 200_000
HANG_SECONDS = 3600
DEFAULT_RETRY_AFTER_S = 1.0
DEFAULT_SLOW_DELAY_MS = 1000.0
STREAM_PIECES = 3
NO_RESPONSE_STATUS = 0  # logged for "hang" and "drop": no HTTP status is ever sent

# kind -> (HTTP status, error type, error code, message)
ERROR_FAULTS: dict[str, tuple[int, str, str | None, str]] = {
    "429": (
        429,
        "requests",
        "rate_limit_exceeded",
        "Rate limit reached for requests (offline mock). Please try again later.",
    ),
    "insufficient_quota": (
        429,
        "insufficient_quota",
        "insufficient_quota",
        "You exceeded your current quota, please check your plan and billing details.",
    ),
    "500": (500, "server_error", None, "The server had an error while processing your request (offline mock)."),
    "502": (502, "server_error", None, "Bad gateway (offline mock)."),
    "503": (503, "server_error", None, "The server is overloaded or not ready yet (offline mock)."),
    "400": (400, "invalid_request_error", None, "Invalid request (offline mock)."),
    "401": (401, "invalid_request_error", "invalid_api_key", "Incorrect API key provided (offline mock)."),
    "403": (
        403,
        "invalid_request_error",
        "permission_denied",
        "You are not allowed to perform this request (offline mock).",
    ),
    "404": (
        404,
        "invalid_request_error",
        "model_not_found",
        "The model does not exist or you do not have access to it (offline mock).",
    ),
}
OTHER_FAULTS = ("hang", "drop", "malformed", "empty", "slow")
FAULT_KINDS = frozenset(ERROR_FAULTS) | frozenset(OTHER_FAULTS)
MALFORMED_BODY = '{"id": "chatcmpl-broken", "choices": ['
EMPTY_BODY = {"id": "chatcmpl-empty", "object": "chat.completion"}
RULE_FIELDS = frozenset({"fault", "match", "times", "rate", "retry_after", "delay_ms"})
CONFIG_FIELDS = frozenset({"latency_ms", "latency_jitter_ms"})
DIRECTIVE_MARKER = "[[mock:"
DIRECTIVE = re.compile(r"\[\[mock:(\S+?)((?:\s+\w+=[^\s\]]+)*)\s*\]\]")


class ApiError(Exception):
    """A client mistake, answered with an OpenAI-style error body."""

    def __init__(self, message: str, *, status: int = 400, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.param = param


@dataclass(frozen=True)
class Fault:
    kind: str
    retry_after: float = DEFAULT_RETRY_AFTER_S
    delay_ms: float = DEFAULT_SLOW_DELAY_MS

    @property
    def status(self) -> int:
        if self.kind in ERROR_FAULTS:
            return ERROR_FAULTS[self.kind][0]
        return NO_RESPONSE_STATUS if self.kind in ("hang", "drop") else 200


@dataclass
class Rule:
    id: int
    fault: Fault
    match: str | None = None
    times: int | None = None
    rate: float | None = None

    def applies_to(self, texts: list[str], rng: random.Random) -> bool:
        if self.match is not None and not any(self.match in text for text in texts):
            return False
        # Roll only for rate-limited rules so a seeded run stays reproducible.
        return self.rate is None or rng.random() < self.rate

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "fault": self.fault.kind,
            "match": self.match,
            "times": self.times,
            "rate": self.rate,
            "retry_after": self.fault.retry_after,
            "delay_ms": self.fault.delay_ms,
        }


@dataclass(frozen=True)
class ChatRequest:
    body: dict[str, Any]
    model: str
    texts: list[str]
    last_user_text: str
    tools: list[dict[str, Any]]

    @property
    def log_text(self) -> str:
        return "\n".join(self.texts)[:LOG_TEXT_CHARS]


@dataclass(frozen=True)
class Reply:
    content: str | None
    tool_call: dict[str, Any] | None
    usage: dict[str, int]

    @property
    def finish_reason(self) -> str:
        return "tool_calls" if self.tool_call else "stop"


@dataclass
class ServerState:
    startup_latency_ms: float
    startup_jitter_ms: float
    rng: random.Random
    latency_ms: float = 0.0
    latency_jitter_ms: float = 0.0
    rules: dict[int, Rule] = field(default_factory=dict)
    rule_ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    request_seq: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    request_log: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=REQUEST_LOG_SIZE))
    by_status: Counter[int] = field(default_factory=Counter)
    in_flight: int = 0

    def add_rule(self, body: dict[str, Any]) -> Rule:
        rule = parse_rule(body, ids=self.rule_ids)
        self.rules[rule.id] = rule
        return rule

    def take_rule_fault(self, texts: list[str]) -> Fault | None:
        rule = next((rule for rule in self.rules.values() if rule.applies_to(texts, self.rng)), None)
        if rule is None:
            return None
        if rule.times is not None:
            rule.times -= 1
            if rule.times == 0:
                del self.rules[rule.id]
        return rule.fault

    def latency_s(self) -> float:
        jitter = self.rng.uniform(0, self.latency_jitter_ms) if self.latency_jitter_ms else 0.0
        return (self.latency_ms + jitter) / 1000

    def record(self, *, model: str, text: str, fault: Fault | None, status: int) -> dict[str, Any]:
        """Log a request as it arrives (`end` adds how it ended); returns its entry."""
        self.by_status[status] += 1
        entry = {
            "seq": next(self.request_seq),
            "at": time.time(),
            "model": model,
            "fault": fault.kind if fault else None,
            "status": status,
            "text": text,
            "ended": None,
            "ended_at": None,
        }
        self.request_log.append(entry)
        return entry

    @staticmethod
    def end(entry: dict[str, Any], how: str) -> None:
        """Note how a logged request ended: "answered" once its whole response was sent, "dropped" when the
        client went away first (a cancelled call, a client timeout)."""
        entry.update(ended=how, ended_at=time.time())

    def config(self) -> dict[str, float]:
        return {"latency_ms": self.latency_ms, "latency_jitter_ms": self.latency_jitter_ms}

    def reset(self) -> None:
        self.rules.clear()
        self.request_log.clear()
        self.by_status.clear()
        self.latency_ms, self.latency_jitter_ms = self.startup_latency_ms, self.startup_jitter_ms


STATE = web.AppKey("state", ServerState)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# ---------------------------------------------------------------- validation


def non_negative(value: float, name: str, *, maximum: float | None = None) -> float:
    if value < 0 or (maximum is not None and value > maximum):
        limit = f"between 0 and {maximum}" if maximum is not None else ">= 0"
        raise ApiError(f"'{name}' must be {limit}, got {value}", param=name)
    return value


def json_number(value: Any, name: str, *, maximum: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ApiError(f"'{name}' must be a number, got {value!r}", param=name)
    return non_negative(value, name, maximum=maximum)


def number_from_text(text: str, name: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ApiError(f"'{name}' must be a number, got {text!r}", param=name) from None
    return non_negative(value, name)


def checked_kind(kind: Any, *, source: str) -> str:
    if kind not in FAULT_KINDS:
        known = ", ".join(sorted(FAULT_KINDS))
        raise ApiError(f"unknown fault kind {kind!r} in {source}; known kinds: {known}", param=source)
    return kind


def reject_unknown_fields(body: dict[str, Any], allowed: frozenset[str]) -> None:
    unknown = sorted(body.keys() - allowed)
    if unknown:
        raise ApiError(f"unknown field(s) {unknown}; allowed: {sorted(allowed)}", param=unknown[0])


def optional_times(body: dict[str, Any]) -> int | None:
    times = body.get("times")
    if times is not None and (isinstance(times, bool) or not isinstance(times, int) or times < 1):
        raise ApiError(f"'times' must be a positive integer, got {times!r}", param="times")
    return times


def optional_match(body: dict[str, Any]) -> str | None:
    match = body.get("match")
    if match is not None and (not isinstance(match, str) or not match):
        raise ApiError(f"'match' must be a non-empty string, got {match!r}", param="match")
    return match


def optional_json_number(body: dict[str, Any], name: str, *, default: float, maximum: float | None = None) -> float:
    value = body.get(name)
    return default if value is None else json_number(value, name, maximum=maximum)


def parse_rule(body: dict[str, Any], *, ids: Iterator[int]) -> Rule:
    reject_unknown_fields(body, RULE_FIELDS)
    fault = Fault(
        kind=checked_kind(body.get("fault"), source="fault"),
        retry_after=optional_json_number(body, "retry_after", default=DEFAULT_RETRY_AFTER_S),
        delay_ms=optional_json_number(body, "delay_ms", default=DEFAULT_SLOW_DELAY_MS),
    )
    rate = body.get("rate")
    match, times = optional_match(body), optional_times(body)
    rate = None if rate is None else json_number(rate, "rate", maximum=1.0)
    # The id is drawn last so rejected rules do not use one up.
    return Rule(id=next(ids), fault=fault, match=match, times=times, rate=rate)


async def read_json_object(request: web.Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.read())
    except ValueError:
        raise ApiError("request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError("request body must be a JSON object")
    return body


# ---------------------------------------------------------------- chat request parsing


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
        last_user_text=last_user_text(messages),
        tools=validated_tools(body),
    )


# ---------------------------------------------------------------- fault choice


def header_fault(headers: Mapping[str, str]) -> Fault | None:
    kind = headers.get("X-Mock-Fault")
    if kind is None:
        return None
    retry_after = headers.get("X-Mock-Retry-After", str(DEFAULT_RETRY_AFTER_S))
    return Fault(
        kind=checked_kind(kind, source="X-Mock-Fault"),
        retry_after=number_from_text(retry_after, "X-Mock-Retry-After"),
    )


def directive_fault(texts: list[str]) -> Fault | None:
    for text in texts:
        # The substring test keeps the regex off the hot path of ordinary requests.
        directive = DIRECTIVE.search(text) if DIRECTIVE_MARKER in text else None
        if directive:
            return fault_from_directive(directive)
    return None


def fault_from_directive(directive: re.Match[str]) -> Fault:
    options = dict(option.split("=", 1) for option in directive.group(2).split())
    reject_unknown_fields(options, frozenset({"retry_after", "delay_ms"}))
    return Fault(
        kind=checked_kind(directive.group(1), source="[[mock:...]] directive"),
        retry_after=number_from_text(options.get("retry_after", str(DEFAULT_RETRY_AFTER_S)), "retry_after"),
        delay_ms=number_from_text(options.get("delay_ms", str(DEFAULT_SLOW_DELAY_MS)), "delay_ms"),
    )


def choose_fault(state: ServerState, request: web.Request, chat: ChatRequest) -> Fault | None:
    return header_fault(request.headers) or state.take_rule_fault(chat.texts) or directive_fault(chat.texts)


def request_latency_s(state: ServerState, request: web.Request) -> float:
    override = request.headers.get("X-Mock-Latency-Ms")
    if override is None:
        return state.latency_s()
    return number_from_text(override, "X-Mock-Latency-Ms") / 1000


# ---------------------------------------------------------------- answers


def schema_type(schema: dict[str, Any]) -> str:
    declared = schema.get("type")
    if isinstance(declared, list):
        return next((kind for kind in declared if kind != "null"), "null")
    return declared or ("object" if "properties" in schema else "string")


def resolve_ref(ref: str, root: dict[str, Any]) -> dict[str, Any]:
    node: Any = root
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def sample_object(schema: dict[str, Any], *, text: str, root: dict[str, Any]) -> dict[str, Any]:
    properties = schema.get("properties") or {}
    required = schema.get("required", [])
    return {name: sample_value(properties.get(name, {}), text=text, root=root) for name in required}


def sample_value(schema: dict[str, Any], *, text: str, root: dict[str, Any]) -> Any:
    """A value of the schema's basic type: enough for clients that validate structured output."""
    if "$ref" in schema:
        return sample_value(resolve_ref(schema["$ref"], root), text=text, root=root)
    if schema.get("enum"):
        return schema["enum"][0]
    if schema.get("anyOf"):
        options = [option for option in schema["anyOf"] if option.get("type") != "null"] or schema["anyOf"]
        return sample_value(options[0], text=text, root=root)
    kind = schema_type(schema)
    if kind == "object":
        return sample_object(schema, text=text, root=root)
    return {"integer": 1, "number": 1.0, "boolean": True, "array": [], "null": None}.get(kind, text)


def formatted_content(response_format: Any, answer: str) -> str:
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "json_object":
        return json.dumps({"answer": answer})
    if kind == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema") or {}
        return json.dumps(sample_value(schema, text=answer, root=schema))
    return answer


def chosen_tool(chat: ChatRequest) -> dict[str, Any] | None:
    choice = chat.body.get("tool_choice")
    if not chat.tools or choice == "none":
        return None
    wanted = choice.get("function", {}).get("name") if isinstance(choice, dict) else None
    return next((tool for tool in chat.tools if tool["function"]["name"] == wanted), chat.tools[0])


def tool_call(tool: dict[str, Any], *, answer: str) -> dict[str, Any]:
    parameters = tool["function"].get("parameters") or {"type": "object"}
    arguments = sample_value(parameters, text=answer, root=parameters)
    return {
        "id": f"call_{uuid.uuid4().hex[:24]}",
        "type": "function",
        "function": {"name": tool["function"]["name"], "arguments": json.dumps(arguments)},
    }


def usage(chat: ChatRequest, completion_text: str) -> dict[str, int]:
    prompt_tokens = max(1, sum(len(text.split()) for text in chat.texts))
    completion_tokens = len(completion_text.split())
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def build_reply(chat: ChatRequest) -> Reply:
    answer = ANSWER_PREFIX + chat.last_user_text[:ANSWER_SOURCE_CHARS]
    tool = chosen_tool(chat)
    if tool is not None:
        call = tool_call(tool, answer=answer)
        return Reply(content=None, tool_call=call, usage=usage(chat, call["function"]["arguments"]))
    content = formatted_content(chat.body.get("response_format"), answer)
    return Reply(content=content, tool_call=None, usage=usage(chat, content))


def completion_json(chat: ChatRequest, reply: Reply) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": reply.content}
    if reply.tool_call:
        message["tool_calls"] = [reply.tool_call]
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": chat.model,
        "usage": reply.usage,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": [{"index": 0, "message": message, "finish_reason": reply.finish_reason, "logprobs": None}],
    }


def split_into_pieces(text: str) -> list[str]:
    size = max(1, -(-len(text) // STREAM_PIECES))
    return [text[start : start + size] for start in range(0, len(text), size)]


def stream_deltas(reply: Reply) -> list[dict[str, Any]]:
    if reply.tool_call is None:
        pieces = split_into_pieces(reply.content or "")
        return [{"role": "assistant", "content": ""}] + [{"content": piece} for piece in pieces]
    function = reply.tool_call["function"]
    opening = {
        "index": 0,
        "id": reply.tool_call["id"],
        "type": "function",
        "function": {"name": function["name"], "arguments": ""},
    }
    pieces = split_into_pieces(function["arguments"])
    return [{"role": "assistant", "content": None, "tool_calls": [opening]}] + [
        {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]} for piece in pieces
    ]


def stream_choices(reply: Reply) -> list[dict[str, Any]]:
    deltas = [(delta, None) for delta in stream_deltas(reply)] + [({}, reply.finish_reason)]
    return [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None} for delta, finish in deltas]


def sse_event(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


async def stream_reply(request: web.Request, chat: ChatRequest, reply: Reply) -> web.StreamResponse:
    include_usage = bool((chat.body.get("stream_options") or {}).get("include_usage"))
    envelope: dict[str, Any] = {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": chat.model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
    }
    if include_usage:
        envelope["usage"] = None  # as OpenAI does: null on every chunk but the last
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    for choice in stream_choices(reply):
        await response.write(sse_event({**envelope, "choices": [choice]}))
    if include_usage:
        await response.write(sse_event({**envelope, "choices": [], "usage": reply.usage}))
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


async def answer(request: web.Request, chat: ChatRequest) -> web.StreamResponse:
    reply = build_reply(chat)
    if chat.body.get("stream"):
        return await stream_reply(request, chat, reply)
    return web.json_response(completion_json(chat, reply))


# ---------------------------------------------------------------- faults


def error_response(
    status: int,
    message: str,
    *,
    error_type: str,
    code: str | None = None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    body = {"error": {"message": message, "type": error_type, "param": param, "code": code}}
    return web.json_response(body, status=status, headers=headers)


def injected_error(fault: Fault) -> web.Response:
    status, error_type, code, message = ERROR_FAULTS[fault.kind]
    # Only a plain rate limit tells the client when to come back; a quota error must not invite retries.
    headers = {"Retry-After": f"{fault.retry_after:g}"} if fault.kind == "429" else None
    return error_response(status, message, error_type=error_type, code=code, headers=headers)


def dropped_connection(request: web.Request) -> web.Response:
    if request.transport is not None:
        request.transport.close()
    # Never sent: aiohttp fails to write it into the closed socket and treats that as a quiet disconnect.
    return web.Response()


async def never_answered() -> web.Response:
    # Ends early, quietly, when the client disconnects: the runner cancels the handler.
    await asyncio.sleep(HANG_SECONDS)
    return error_response(504, "Mock hang expired.", error_type="server_error")


async def faulty_answer(request: web.Request, chat: ChatRequest, fault: Fault) -> web.StreamResponse:
    if fault.kind in ERROR_FAULTS:
        return injected_error(fault)
    if fault.kind == "hang":
        return await never_answered()
    if fault.kind == "drop":
        return dropped_connection(request)
    if fault.kind == "malformed":
        return web.Response(text=MALFORMED_BODY, content_type="application/json")
    if fault.kind == "empty":
        return web.json_response(EMPTY_BODY)
    await asyncio.sleep(fault.delay_ms / 1000)  # "slow"
    return await answer(request, chat)


# ---------------------------------------------------------------- handlers


async def chat_completions(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    state.in_flight += 1
    try:
        return await handle_chat(request, state)
    finally:
        state.in_flight -= 1


async def handle_chat(request: web.Request, state: ServerState) -> web.StreamResponse:
    try:
        chat = await parse_chat_request(request)
        fault = choose_fault(state, request, chat)
        latency_s = request_latency_s(state, request)
    except ApiError:
        state.record(model="", text="", fault=None, status=400)
        raise
    # Recorded before the wait so tests can see requests that are still pending or hanging.
    entry = state.record(model=chat.model, text=chat.log_text, fault=fault, status=fault.status if fault else 200)
    try:
        if latency_s > 0:
            await asyncio.sleep(latency_s)
        response = await (faulty_answer(request, chat, fault) if fault else answer(request, chat))
        if fault is not None and fault.kind == "drop":
            state.end(entry, "dropped")
            return response
        # Sent here rather than by aiohttp after the return, so that the log knows when it was answered.
        if not response.prepared:
            await response.prepare(request)
            await response.write_eof()
    except asyncio.CancelledError:  # the client went away (handler_cancellation)
        state.end(entry, "dropped")
        raise
    state.end(entry, "answered")
    return response


async def list_models(request: web.Request) -> web.Response:
    models = [{"id": model, "object": "model", "created": 0, "owned_by": "offline"} for model in MODEL_IDS]
    return web.json_response({"object": "list", "data": models})


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def add_fault_rule(request: web.Request) -> web.Response:
    rule = request.app[STATE].add_rule(await read_json_object(request))
    return web.json_response({"id": rule.id})


async def list_fault_rules(request: web.Request) -> web.Response:
    return web.json_response([rule.as_json() for rule in request.app[STATE].rules.values()])


async def clear_fault_rules(request: web.Request) -> web.Response:
    rules = request.app[STATE].rules
    deleted = len(rules)
    rules.clear()
    return web.json_response({"deleted": deleted})


async def delete_fault_rule(request: web.Request) -> web.Response:
    rule_id = request.match_info["rule_id"]
    rules = request.app[STATE].rules
    if not rule_id.isdigit() or rules.pop(int(rule_id), None) is None:
        raise ApiError(f"no fault rule with id {rule_id!r}", status=404, param="id")
    return web.json_response({"deleted": 1})


async def get_config(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE].config())


async def update_config(request: web.Request) -> web.Response:
    body = await read_json_object(request)
    reject_unknown_fields(body, CONFIG_FIELDS)
    state = request.app[STATE]
    state.latency_ms = optional_json_number(body, "latency_ms", default=state.latency_ms)
    state.latency_jitter_ms = optional_json_number(body, "latency_jitter_ms", default=state.latency_jitter_ms)
    return web.json_response(state.config())


async def list_requests(request: web.Request) -> web.Response:
    match = request.query.get("match")
    log = request.app[STATE].request_log
    entries = [entry for entry in log if match is None or match in entry["text"]]
    return web.json_response({"requests": entries})


async def clear_requests(request: web.Request) -> web.Response:
    log = request.app[STATE].request_log
    deleted = len(log)
    log.clear()
    return web.json_response({"deleted": deleted})


async def stats(request: web.Request) -> web.Response:
    state = request.app[STATE]
    by_status = {str(status): count for status, count in sorted(state.by_status.items())}
    totals = {"requests": state.by_status.total(), "by_status": by_status, "in_flight": state.in_flight}
    return web.json_response(totals)


async def reset(request: web.Request) -> web.Response:
    state = request.app[STATE]
    state.reset()
    return web.json_response({"status": "reset", **state.config()})


@web.middleware
async def api_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as error:
        return error_response(error.status, str(error), error_type="invalid_request_error", param=error.param)


def make_app(*, latency_ms: float = 0, latency_jitter_ms: float = 0, seed: int | None = None) -> web.Application:
    app = web.Application(middlewares=[api_errors])
    app[STATE] = ServerState(
        startup_latency_ms=latency_ms,
        startup_jitter_ms=latency_jitter_ms,
        rng=random.Random(seed),
        latency_ms=latency_ms,
        latency_jitter_ms=latency_jitter_ms,
    )
    app.add_routes(
        [
            web.post("/v1/chat/completions", chat_completions),
            web.get("/v1/models", list_models),
            web.get("/health", health),
            web.post("/control/faults", add_fault_rule),
            web.get("/control/faults", list_fault_rules),
            web.delete("/control/faults", clear_fault_rules),
            web.delete("/control/faults/{rule_id}", delete_fault_rule),
            web.get("/control/config", get_config),
            web.post("/control/config", update_config),
            web.get("/control/requests", list_requests),
            web.delete("/control/requests", clear_requests),
            web.get("/control/stats", stats),
            web.post("/control/reset", reset),
        ]
    )
    return app


# ---------------------------------------------------------------- process


async def wait_for_stop_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for stop_signal in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(stop_signal, stop.set)
    await stop.wait()


async def serve(app: web.Application, *, host: str, port: int) -> None:
    # handler_cancellation ends hanging handlers when their client goes away; a short
    # shutdown_timeout keeps SIGTERM from waiting on them.
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, backlog=4096).start()
        print(f"llm_server listening on http://{host}:{runner.addresses[0][1]}", flush=True)
        await wait_for_stop_signal()
    finally:
        await runner.cleanup()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8099, help="0 picks a free port")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--latency-jitter-ms", type=float, default=0.0, help="adds uniform 0..N ms")
    parser.add_argument("--seed", type=int, default=None, help="makes fault rates and jitter reproducible")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    app = make_app(latency_ms=args.latency_ms, latency_jitter_ms=args.latency_jitter_ms, seed=args.seed)
    asyncio.run(serve(app, host=args.host, port=args.port))


if __name__ == "__main__":
    main()
