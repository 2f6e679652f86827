"""Offline OpenAI-compatible chat server for tests, demos and benchmarks.

It answers ``/v1/chat/completions`` deterministically (plain text, JSON mode,
tool calls, streaming) after a configurable latency, and injects faults (rate
limits, server errors, hangs, dropped connections, broken bodies) chosen by a
request header, by rules set through the ``/control`` API, or by a
``[[mock:KIND]]`` directive inside a message. Errors the model causes are
faults too: ``context_length_exceeded`` and ``content_filter`` (400s) and
``filtered`` (a reply cut short with finish_reason ``content_filter``); with
``context_window`` set (``/control/config``) a prompt that does not fit, with
its ``max_tokens``, is refused as a real provider would. A prompt whose system
message was seen before reports that message's tokens as cached
(``prompt_tokens_details.cached_tokens``), like a provider's prompt cache.

Like OpenAI it can enforce requests and tokens per minute, per model or across
all models (``--rpm``/``--tpm``, ``--rate-limits``, or ``rate_limits`` in
``/control/config``): a request over a limit gets a 429 with ``Retry-After`` and
``x-ratelimit-*`` headers, and ``/control/stats`` counts those 429s apart.

With ``tools`` it calls the tool ``tool_choice`` names (else the first) until a
tool result is in the conversation, then answers with text; a forced
``tool_choice`` (a named tool, ``"required"``) always calls. Scripts replace the
default reply: a script is a list of replies, one per model turn, and a request
gets ``replies[turn]`` (turn = the assistant messages it carries; the last reply
repeats), so it needs no state per conversation. A reply is one of
``{"tool_calls": [{"name": ..., "arguments": {...}}]}``, ``{"content": TEXT}``,
``{"json": VALUE}``, ``{"invalid_json": true}``, ``{"refusal": TEXT}`` or
``{"fault": KIND}``. Register one with ``POST /control/scripts``
(``{"name": ..., "replies": [...]}``), then name it in an ``X-Mock-Script``
header or a ``[[script:NAME]]`` directive, or give a rule ``"script"`` (a name
or the replies inline) in place of ``"fault"``. ``/control/requests`` logs each
request's turn, tools and response_format.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import itertools
import json
import math
import random
import re
import time
import uuid
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from agent_service.devtools.serving import serve

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
    "context_length_exceeded": (
        400,
        "invalid_request_error",
        "context_length_exceeded",
        "This model's maximum context length is 128000 tokens. However, your messages resulted in 130000 tokens. "
        "Please reduce the length of the messages.",
    ),
    "content_filter": (
        400,
        "invalid_request_error",
        "content_filter",
        "The response was filtered due to the prompt triggering content management policy (offline mock).",
    ),
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
OTHER_FAULTS = ("hang", "drop", "malformed", "empty", "slow", "filtered", "invalid_json")
INVALID_JSON_CONTENT = '{"answer": "cut short'  # what a model asked for JSON may still send
FAULT_KINDS = frozenset(ERROR_FAULTS) | frozenset(OTHER_FAULTS)
RATE_LIMITED_KIND = "rate_limit"  # in the request log: refused by an enforced rate limit, not a fault rule
MALFORMED_BODY = '{"id": "chatcmpl-broken", "choices": ['
EMPTY_BODY = {"id": "chatcmpl-empty", "object": "chat.completion"}
RULE_FIELDS = frozenset({"fault", "script", "match", "model", "times", "rate", "retry_after", "delay_ms"})
REPLY_KINDS = ("tool_calls", "content", "json", "invalid_json", "refusal", "fault")
REPLY_FIELDS = {kind: frozenset({kind}) for kind in REPLY_KINDS} | {
    "fault": frozenset({"fault", "retry_after", "delay_ms"})
}
TOOL_CALL_FIELDS = frozenset({"name", "arguments"})
SCRIPT_FIELDS = frozenset({"name", "replies"})
CONFIG_FIELDS = frozenset({"latency_ms", "latency_jitter_ms", "context_window", "rate_limits", "rate_burst_seconds"})
CONTEXT_LENGTH_MESSAGE = (
    "This model's maximum context length is {window} tokens. However, you requested {requested} tokens "
    "({prompt} in the messages, {completion} in the completion). Please reduce the length of the messages or "
    "completion."
)
PROMPT_CACHE_SIZE = 100_000
ALL_MODELS = "*"  # the rate_limits entry shared by every model's requests together
LIMIT_KINDS = {"rpm": "requests", "tpm": "tokens"}
DEFAULT_RATE_BURST_SECONDS = 1.0
DIRECTIVE_MARKER = "[[mock:"
DIRECTIVE = re.compile(r"\[\[mock:(\S+?)((?:\s+\w+=[^\s\]]+)*)\s*\]\]")
SCRIPT_MARKER = "[[script:"
SCRIPT_DIRECTIVE = re.compile(r"\[\[script:([^\s\]]+)\]\]")


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
    action: Fault | Script
    match: str | None = None
    times: int | None = None
    rate: float | None = None
    model: str | None = None  # only requests for this model (an outage of one model)

    def applies_to(self, chat: ChatRequest, rng: random.Random) -> bool:
        if self.match is not None and not any(self.match in text for text in chat.texts):
            return False
        if self.model is not None and chat.model != self.model:
            return False
        # Roll only for rate-limited rules so a seeded run stays reproducible.
        return self.rate is None or rng.random() < self.rate

    def as_json(self) -> dict[str, Any]:
        what: dict[str, Any]
        if isinstance(self.action, Script):
            what = {"script": self.action.name or self.action.source}
        else:
            fault = self.action
            what = {"fault": fault.kind, "retry_after": fault.retry_after, "delay_ms": fault.delay_ms}
        return {"id": self.id, **what, "match": self.match, "model": self.model, "times": self.times, "rate": self.rate}


@dataclass
class Bucket:
    """A leaky bucket: its level drains at `per_minute / 60` units a second and holds at most
    `burst_seconds` of that rate; a charge that does not fit is refused, with how long until it would.
    A charge larger than the whole bucket fits once the bucket is empty (else it never would)."""

    per_minute: float
    burst_seconds: float
    level: float = 0.0
    at: float = 0.0

    @property
    def capacity(self) -> float:
        return self.per_minute * self.burst_seconds / 60

    def drained(self, now: float) -> float:
        return max(0.0, self.level - (now - self.at) * self.per_minute / 60)

    def wait_for(self, amount: float, now: float) -> float:
        """Seconds until `amount` fits (0: it fits now)."""
        over = self.drained(now) + min(amount, self.capacity) - self.capacity
        return max(0.0, over * 60 / self.per_minute)

    def charge(self, amount: float, now: float) -> None:
        self.level, self.at = self.drained(now) + amount, now

    def headers(self, name: str, now: float) -> dict[str, str]:
        level = self.drained(now)
        return {
            f"x-ratelimit-limit-{name}": f"{self.per_minute:g}",
            f"x-ratelimit-remaining-{name}": f"{max(0, int(self.capacity - level))}",
            f"x-ratelimit-reset-{name}": f"{level * 60 / self.per_minute:.3f}s",
        }


def rate_headers(charges: list[tuple[str, str, float, int]], buckets: list[Bucket], now: float) -> dict[str, str]:
    """OpenAI's x-ratelimit-* headers: of the model's own limit where it has one, else of the shared one."""
    headers: dict[str, str] = {}
    for (_, kind, _, _), bucket in reversed(list(zip(charges, buckets, strict=True))):
        headers.update(bucket.headers(LIMIT_KINDS[kind], now))
    return headers


@dataclass(frozen=True)
class RateLimited:
    """A request refused by a rate limit: which one, and when to come back."""

    model: str
    kind: str  # "rpm" or "tpm"
    per_minute: float
    retry_after: float
    headers: dict[str, str]


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


@dataclass
class ServerState:
    startup_latency_ms: float
    startup_jitter_ms: float
    rng: random.Random
    latency_ms: float = 0.0
    latency_jitter_ms: float = 0.0
    context_window: float = 0.0  # 0: no limit
    seen_system_prompts: set[str] = field(default_factory=set)
    rules: dict[int, Rule] = field(default_factory=dict)
    scripts: dict[str, Script] = field(default_factory=dict)  # by name, for rules, headers and directives
    rule_ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    request_seq: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    request_log: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=REQUEST_LOG_SIZE))
    by_status: Counter[int] = field(default_factory=Counter)
    in_flight: int = 0
    rate_limits: dict[str, dict[str, float]] = field(default_factory=dict)  # model or "*" -> {"rpm": n, "tpm": n}
    rate_burst_seconds: float = DEFAULT_RATE_BURST_SECONDS
    buckets: dict[tuple[str, str], Bucket] = field(default_factory=dict)
    rate_limited: int = 0
    startup_rate_limits: dict[str, dict[str, float]] = field(default_factory=dict)
    startup_burst_seconds: float = DEFAULT_RATE_BURST_SECONDS

    def add_rule(self, body: dict[str, Any]) -> Rule:
        rule = parse_rule(body, ids=self.rule_ids, scripts=self.scripts)
        self.rules[rule.id] = rule
        return rule

    def take_rule_action(self, chat: ChatRequest) -> Fault | Script | None:
        rule = next((rule for rule in self.rules.values() if rule.applies_to(chat, self.rng)), None)
        if rule is None:
            return None
        if rule.times is not None:
            rule.times -= 1
            if rule.times == 0:
                del self.rules[rule.id]
        return rule.action

    def latency_s(self) -> float:
        jitter = self.rng.uniform(0, self.latency_jitter_ms) if self.latency_jitter_ms else 0.0
        return (self.latency_ms + jitter) / 1000

    def record(self, chat: ChatRequest | None, *, fault: Fault | None, status: int) -> dict[str, Any]:
        """Log a request as it arrives (`end` adds how it ended); returns its entry. `chat` is None for a
        request that could not be read."""
        self.by_status[status] += 1
        entry = {
            "seq": next(self.request_seq),
            "at": time.time(),
            "model": chat.model if chat else "",
            "fault": fault.kind if fault else None,
            "status": status,
            "text": chat.log_text if chat else "",
            "turn": chat.turn if chat else 0,
            "tools": [tool["function"]["name"] for tool in chat.tools] if chat else [],
            "response_format": chat.body.get("response_format") if chat else None,
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

    def config(self) -> dict[str, Any]:
        return {
            "latency_ms": self.latency_ms,
            "latency_jitter_ms": self.latency_jitter_ms,
            "context_window": self.context_window,
            "rate_limits": self.rate_limits,
            "rate_burst_seconds": self.rate_burst_seconds,
        }

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

    def set_rate_limits(self, limits: dict[str, dict[str, float]], *, burst_seconds: float) -> None:
        """New limits start from empty buckets."""
        self.rate_limits, self.rate_burst_seconds = limits, burst_seconds
        self.buckets.clear()

    def admit(self, model: str, tokens: Callable[[], int]) -> RateLimited | dict[str, str]:
        """Charge one request of `model` and its `tokens` to every limit that applies, or to none when one is
        over: then the refusal. Returns the x-ratelimit headers of the model's own limits when admitted."""
        if not self.rate_limits:
            return {}
        now = time.monotonic()
        charges = [
            (subject, kind, per_minute, 1 if kind == "rpm" else tokens())
            for subject in (model, ALL_MODELS)
            for kind, per_minute in self.rate_limits.get(subject, {}).items()
        ]
        buckets = [self.bucket(subject, kind, per_minute) for subject, kind, per_minute, _ in charges]
        for (subject, kind, per_minute, amount), bucket in zip(charges, buckets, strict=True):
            wait = bucket.wait_for(amount, now)
            if wait > 0:
                self.rate_limited += 1
                return RateLimited(subject, kind, per_minute, wait, rate_headers(charges, buckets, now))
        for (_, _, _, amount), bucket in zip(charges, buckets, strict=True):
            bucket.charge(amount, now)
        return rate_headers(charges, buckets, now)

    def bucket(self, subject: str, kind: str, per_minute: float) -> Bucket:
        bucket = self.buckets.get((subject, kind))
        if bucket is None or bucket.per_minute != per_minute:
            bucket = self.buckets[(subject, kind)] = Bucket(per_minute, self.rate_burst_seconds)
        return bucket

    def reset(self) -> None:
        self.rules.clear()
        self.scripts.clear()
        self.seen_system_prompts.clear()
        self.context_window = 0.0
        self.request_log.clear()
        self.by_status.clear()
        self.rate_limited = 0
        self.latency_ms, self.latency_jitter_ms = self.startup_latency_ms, self.startup_jitter_ms
        self.set_rate_limits(self.startup_rate_limits, burst_seconds=self.startup_burst_seconds)


RATE_LIMITED = Fault(RATE_LIMITED_KIND)
INVALID_JSON_REPLY = ScriptedReply(content=INVALID_JSON_CONTENT)
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


def non_zero(value: float, name: str) -> float:
    if value == 0:
        raise ApiError(f"'{name}' must be above 0", param=name)
    return value


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


def reject_unknown_fields(body: dict[str, Any], allowed: frozenset[str], *, where: str = "") -> None:
    unknown = sorted(body.keys() - allowed)
    if unknown:
        place = f" in '{where}'" if where else ""
        param = f"{where}.{unknown[0]}" if where else unknown[0]
        raise ApiError(f"unknown field(s) {unknown}{place}; allowed: {sorted(allowed)}", param=param)


def optional_times(body: dict[str, Any]) -> int | None:
    times = body.get("times")
    if times is not None and (isinstance(times, bool) or not isinstance(times, int) or times < 1):
        raise ApiError(f"'times' must be a positive integer, got {times!r}", param="times")
    return times


def optional_text(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is not None and (not isinstance(value, str) or not value):
        raise ApiError(f"'{name}' must be a non-empty string, got {value!r}", param=name)
    return value


def optional_json_number(
    body: dict[str, Any], name: str, *, default: float, maximum: float | None = None, where: str = ""
) -> float:
    value = body.get(name)
    return default if value is None else json_number(value, f"{where}.{name}" if where else name, maximum=maximum)


def parse_fault(body: dict[str, Any], *, where: str = "") -> Fault:
    prefix = f"{where}." if where else ""
    return Fault(
        kind=checked_kind(body.get("fault"), source=f"{prefix}fault"),
        retry_after=optional_json_number(body, "retry_after", default=DEFAULT_RETRY_AFTER_S, where=where),
        delay_ms=optional_json_number(body, "delay_ms", default=DEFAULT_SLOW_DELAY_MS, where=where),
    )


def parse_rule(body: dict[str, Any], *, ids: Iterator[int], scripts: Mapping[str, Script]) -> Rule:
    """A fault rule ({"fault": KIND, ...}) or a script rule ({"script": NAME or [replies]}), with the same
    matching fields."""
    reject_unknown_fields(body, RULE_FIELDS)
    action: Fault | Script
    if "script" in body:
        if "fault" in body:
            raise ApiError("a rule has either 'fault' or 'script', not both", param="script")
        action = rule_script(body["script"], scripts=scripts)
    else:
        action = parse_fault(body)
    rate = body.get("rate")
    match, model, times = optional_text(body, "match"), optional_text(body, "model"), optional_times(body)
    rate = None if rate is None else json_number(rate, "rate", maximum=1.0)
    # The id is drawn last so rejected rules do not use one up.
    return Rule(id=next(ids), action=action, match=match, times=times, rate=rate, model=model)


def rule_script(value: Any, *, scripts: Mapping[str, Script]) -> Script:
    """A rule's script: the name of a registered one (as registered now), or its replies inline. Tool calls
    need not name a tool the request offers: a test may script a model calling an unknown tool."""
    if isinstance(value, str):
        return registered_script(value, scripts=scripts, source="script")
    return parse_script(value, where="script")


def registered_script(name: str, *, scripts: Mapping[str, Script], source: str) -> Script:
    script = scripts.get(name)
    if script is None:
        known = ", ".join(sorted(scripts)) or "none"
        raise ApiError(f"no script named {name!r} in {source}; registered: {known}", param=source)
    return script


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


def parse_rate_limits(value: Any) -> dict[str, dict[str, float]]:
    """{"gpt-4o-mini": {"rpm": 500, "tpm": 200000}, "*": {"rpm": 1000}}: per model, and "*" for all together."""
    if not isinstance(value, dict) or not all(isinstance(limits, dict) for limits in value.values()):
        raise ApiError('\'rate_limits\' must map a model (or "*") to {"rpm": n, "tpm": n}', param="rate_limits")
    for limits in value.values():
        reject_unknown_fields(limits, frozenset(LIMIT_KINDS))
        for kind, per_minute in limits.items():
            if json_number(per_minute, kind) == 0:
                raise ApiError(f"'{kind}' must be above 0", param=kind)
    return {model: {kind: float(n) for kind, n in limits.items()} for model, limits in value.items()}


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
        roles=[str(m.get("role", "")) for m in messages],
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


def header_script(state: ServerState, headers: Mapping[str, str]) -> Script | None:
    name = headers.get("X-Mock-Script")
    return None if name is None else registered_script(name, scripts=state.scripts, source="X-Mock-Script")


def directive_script(state: ServerState, texts: list[str]) -> Script | None:
    for text in texts:
        directive = SCRIPT_DIRECTIVE.search(text) if SCRIPT_MARKER in text else None
        if directive:
            return registered_script(directive.group(1), scripts=state.scripts, source="[[script:...]] directive")
    return None


def choose_action(state: ServerState, request: web.Request, chat: ChatRequest) -> Fault | ScriptedReply | None:
    """What answers instead of the default reply: a header first, then the first rule that applies, then a
    directive in a message. A script gives the reply for the conversation's turn, which may be a fault."""
    action = (
        header_fault(request.headers)
        or header_script(state, request.headers)
        or state.take_rule_action(chat)
        or directive_fault(chat.texts)
        or directive_script(state, chat.texts)
    )
    if isinstance(action, Script):
        scripted = action.reply_for(chat)
        return scripted.fault or scripted
    return action


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


def completion_json(chat: ChatRequest, reply: Reply) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": reply.content, "refusal": reply.refusal}
    if reply.tool_calls:
        message["tool_calls"] = list(reply.tool_calls)
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
    """The deltas OpenAI streams: the role first, then content, refusal or each tool call's opening and
    its arguments in pieces."""
    if reply.refusal is not None:
        pieces = split_into_pieces(reply.refusal)
        return [{"role": "assistant", "content": None, "refusal": ""}] + [{"refusal": piece} for piece in pieces]
    if not reply.tool_calls:
        pieces = split_into_pieces(reply.content or "")
        return [{"role": "assistant", "content": ""}] + [{"content": piece} for piece in pieces]
    deltas: list[dict[str, Any]] = []
    for index, call in enumerate(reply.tool_calls):
        function = call["function"]
        opening = {"index": index, "id": call["id"], "type": "function", "function": {**function, "arguments": ""}}
        deltas.append({"tool_calls": [opening]})
        deltas += [
            {"tool_calls": [{"index": index, "function": {"arguments": piece}}]}
            for piece in split_into_pieces(function["arguments"])
        ]
    deltas[0] = {"role": "assistant", "content": reply.content, **deltas[0]}
    return deltas


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


async def answer(
    request: web.Request, chat: ChatRequest, *, scripted: ScriptedReply | None = None, filtered: bool = False
) -> web.StreamResponse:
    """The `scripted` reply, or the deterministic one."""
    cached = request.app[STATE].cached_tokens(chat)
    reply = build_reply(chat, cached_tokens=cached, scripted=scripted, filtered=filtered)
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


def rate_limited_error(refusal: RateLimited) -> web.Response:
    what = LIMIT_KINDS[refusal.kind]
    scope = "all models" if refusal.model == ALL_MODELS else refusal.model
    message = (
        f"Rate limit reached for {scope} on {what} per minute: Limit {refusal.per_minute:g}. "
        f"Please try again in {refusal.retry_after:.3f}s (offline mock)."
    )
    headers = {
        **refusal.headers,
        "Retry-After": str(max(1, math.ceil(refusal.retry_after))),
        "retry-after-ms": str(math.ceil(refusal.retry_after * 1000)),
    }
    return error_response(429, message, error_type=what, code="rate_limit_exceeded", headers=headers)


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
    if fault.kind == "filtered":
        return await answer(request, chat, filtered=True)
    if fault.kind == "invalid_json":
        return await answer(request, chat, scripted=INVALID_JSON_REPLY)
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
    chat: ChatRequest | None = None
    try:
        chat = await parse_chat_request(request)
        action = choose_action(state, request, chat)
        latency_s = request_latency_s(state, request)
    except ApiError:
        state.record(chat, fault=None, status=400)
        raise
    fault = action if isinstance(action, Fault) else None
    scripted = action if isinstance(action, ScriptedReply) else None
    # A request is charged the tokens its answer will report: the answer is deterministic.
    admitted = state.admit(
        chat.model, lambda: build_reply(chat, cached_tokens=0, scripted=scripted).usage["total_tokens"]
    )
    if isinstance(admitted, RateLimited):
        state.record(chat, fault=RATE_LIMITED, status=429)
        return rate_limited_error(admitted)
    too_long = context_overflow(state, chat)
    status = 400 if too_long else fault.status if fault else 200
    # Recorded before the wait so tests can see requests that are still pending or hanging.
    entry = state.record(chat, fault=fault, status=status)
    if too_long:
        state.end(entry, "answered")
        return error_response(
            400, too_long, error_type="invalid_request_error", param="messages", code="context_length_exceeded"
        )
    try:
        if latency_s > 0:
            await asyncio.sleep(latency_s)
        response = await (faulty_answer(request, chat, fault) if fault else answer(request, chat, scripted=scripted))
        if fault is not None and fault.kind == "drop":
            state.end(entry, "dropped")
            return response
        # Sent here rather than by aiohttp after the return, so that the log knows when it was answered.
        if not response.prepared:  # a streamed answer has sent its headers (without the rate ones) already
            response.headers.update(admitted)
            await response.prepare(request)
            await response.write_eof()
    except asyncio.CancelledError:  # the client went away (handler_cancellation)
        state.end(entry, "dropped")
        raise
    state.end(entry, "answered")
    return response


def context_overflow(state: ServerState, chat: ChatRequest) -> str | None:
    """The provider's message when the prompt and its max_tokens exceed the context window; else None."""
    if not state.context_window:
        return None
    prompt, completion = prompt_tokens(chat), chat.body.get("max_tokens") or chat.body.get("max_completion_tokens") or 0
    if prompt + completion <= state.context_window:
        return None
    return CONTEXT_LENGTH_MESSAGE.format(
        window=int(state.context_window), requested=prompt + completion, prompt=prompt, completion=completion
    )


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


async def add_script(request: web.Request) -> web.Response:
    """Registers (or replaces) a named script: {"name": NAME, "replies": [reply, ...]}."""
    body = await read_json_object(request)
    reject_unknown_fields(body, SCRIPT_FIELDS)
    name = optional_text(body, "name")
    if name is None or SCRIPT_DIRECTIVE.fullmatch(f"[[script:{name}]]") is None:
        raise ApiError(f"'name' must be a non-empty string without spaces or ']', got {name!r}", param="name")
    script = parse_script(body.get("replies"), where="replies", name=name)
    request.app[STATE].scripts[name] = script
    return web.json_response({"name": name, "replies": len(script.replies)})


async def list_scripts(request: web.Request) -> web.Response:
    scripts = request.app[STATE].scripts
    return web.json_response({"scripts": {name: script.source for name, script in scripts.items()}})


async def clear_scripts(request: web.Request) -> web.Response:
    scripts = request.app[STATE].scripts
    deleted = len(scripts)
    scripts.clear()
    return web.json_response({"deleted": deleted})


async def get_config(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE].config())


async def update_config(request: web.Request) -> web.Response:
    body = await read_json_object(request)
    reject_unknown_fields(body, CONFIG_FIELDS)
    state = request.app[STATE]
    state.latency_ms = optional_json_number(body, "latency_ms", default=state.latency_ms)
    state.latency_jitter_ms = optional_json_number(body, "latency_jitter_ms", default=state.latency_jitter_ms)
    state.context_window = optional_json_number(body, "context_window", default=state.context_window)
    if "rate_limits" in body or "rate_burst_seconds" in body:
        limits = parse_rate_limits(body["rate_limits"]) if "rate_limits" in body else state.rate_limits
        burst = optional_json_number(body, "rate_burst_seconds", default=state.rate_burst_seconds)
        state.set_rate_limits(limits, burst_seconds=non_zero(burst, "rate_burst_seconds"))
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
    totals = {
        "requests": state.by_status.total(),
        "by_status": by_status,
        "in_flight": state.in_flight,
        "rate_limited": state.rate_limited,
    }
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


def make_app(
    *,
    latency_ms: float = 0,
    latency_jitter_ms: float = 0,
    seed: int | None = None,
    rate_limits: dict[str, dict[str, float]] | None = None,
    rate_burst_seconds: float = DEFAULT_RATE_BURST_SECONDS,
) -> web.Application:
    app = web.Application(middlewares=[api_errors])
    app[STATE] = ServerState(
        startup_latency_ms=latency_ms,
        startup_jitter_ms=latency_jitter_ms,
        rng=random.Random(seed),
        latency_ms=latency_ms,
        latency_jitter_ms=latency_jitter_ms,
        startup_rate_limits=rate_limits or {},
        startup_burst_seconds=rate_burst_seconds,
    )
    app[STATE].reset()
    app.add_routes(
        [
            web.post("/v1/chat/completions", chat_completions),
            web.get("/v1/models", list_models),
            web.get("/health", health),
            web.post("/control/faults", add_fault_rule),
            web.get("/control/faults", list_fault_rules),
            web.delete("/control/faults", clear_fault_rules),
            web.delete("/control/faults/{rule_id}", delete_fault_rule),
            web.post("/control/scripts", add_script),
            web.get("/control/scripts", list_scripts),
            web.delete("/control/scripts", clear_scripts),
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


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8099, help="0 picks a free port")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--latency-jitter-ms", type=float, default=0.0, help="adds uniform 0..N ms")
    parser.add_argument("--seed", type=int, default=None, help="makes fault rates and jitter reproducible")
    parser.add_argument("--rpm", type=float, help="requests per minute, all models together")
    parser.add_argument("--tpm", type=float, help="tokens per minute, all models together")
    parser.add_argument(
        "--rate-limits", type=json.loads, default={}, help='per model, as JSON: {"gpt-4o-mini": {"rpm": 500}}'
    )
    parser.add_argument(
        "--rate-burst-seconds",
        type=float,
        default=DEFAULT_RATE_BURST_SECONDS,
        help="a limit's bucket holds this many seconds of its rate",
    )
    return parser.parse_args(argv)


def startup_rate_limits(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    overall = {kind: getattr(args, kind) for kind in LIMIT_KINDS if getattr(args, kind)}
    return parse_rate_limits({**args.rate_limits, **({ALL_MODELS: overall} if overall else {})})


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    app = make_app(
        latency_ms=args.latency_ms,
        latency_jitter_ms=args.latency_jitter_ms,
        seed=args.seed,
        rate_limits=startup_rate_limits(args),
        rate_burst_seconds=args.rate_burst_seconds,
    )
    asyncio.run(serve(app, name="llm_server", host=args.host, port=args.port))


if __name__ == "__main__":
    main()
