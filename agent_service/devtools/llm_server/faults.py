"""Injected faults: rate limits, server errors, hangs, dropped connections and broken bodies, chosen by an
``X-Mock-Fault`` header, by a rule (see `rules`) or by a ``[[mock:KIND retry_after=S delay_ms=MS]]``
directive inside a message. Errors the model causes are faults too: ``context_length_exceeded`` and
``content_filter`` (400s) and ``filtered`` (a reply cut short with finish_reason ``content_filter``). And one a
proxy causes: ``text_type``, the reply's JSON sent as ``text/plain``.

This module holds the kinds, how a fault is read from a header, a directive or a JSON body, and the
responses of the faults that send no reply (`completions` answers the ones that change the reply)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from agent_service.devtools.llm_server.errors import ApiError, error_response
from agent_service.devtools.llm_server.validation import (
    number_from_text,
    optional_json_number,
    reject_unknown_fields,
)

HANG_SECONDS = 3600
DEFAULT_RETRY_AFTER_S = 1.0
DEFAULT_SLOW_DELAY_MS = 1000.0
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
OTHER_FAULTS = ("hang", "drop", "malformed", "empty", "slow", "filtered", "invalid_json", "text_type")
FAULT_KINDS = frozenset(ERROR_FAULTS) | frozenset(OTHER_FAULTS)
RATE_LIMITED_KIND = "rate_limit"  # in the request log: refused by an enforced rate limit, not a fault rule
MALFORMED_BODY = '{"id": "chatcmpl-broken", "choices": ['
EMPTY_BODY = {"id": "chatcmpl-empty", "object": "chat.completion"}
DIRECTIVE_MARKER = "[[mock:"
DIRECTIVE = re.compile(r"\[\[mock:(\S+?)((?:\s+\w+=[^\s\]]+)*)\s*\]\]")


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


RATE_LIMITED = Fault(RATE_LIMITED_KIND)


def checked_kind(kind: Any, *, source: str) -> str:
    if kind not in FAULT_KINDS:
        known = ", ".join(sorted(FAULT_KINDS))
        raise ApiError(f"unknown fault kind {kind!r} in {source}; known kinds: {known}", param=source)
    return kind


def parse_fault(body: dict[str, Any], *, where: str = "") -> Fault:
    prefix = f"{where}." if where else ""
    return Fault(
        kind=checked_kind(body.get("fault"), source=f"{prefix}fault"),
        retry_after=optional_json_number(body, "retry_after", default=DEFAULT_RETRY_AFTER_S, where=where),
        delay_ms=optional_json_number(body, "delay_ms", default=DEFAULT_SLOW_DELAY_MS, where=where),
    )


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


async def fault_response(request: web.Request, fault: Fault) -> web.Response | None:
    """The response of a fault that sends no reply (an error, a hang, a drop, a broken body); None for the
    faults that change the reply instead ("slow", "filtered", "invalid_json", "text_type")."""
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
    return None
