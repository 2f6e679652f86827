"""``POST /v1/chat/completions``: read the request, choose what answers it (a fault or a scripted reply,
else the default reply), admit it under the rate limits, refuse a prompt that does not fit the
``context_window``, wait the latency, answer, and log how it ended.

What answers is chosen in this order: an ``X-Mock-Fault`` or ``X-Mock-Script`` header, the first rule that
applies, a ``[[mock:KIND]]`` or ``[[script:NAME]]`` directive in a message. ``X-Mock-Latency-Ms`` overrides
the configured latency for one request."""

from __future__ import annotations

import asyncio

from aiohttp import web

from agent_service.devtools.llm_server.chat import ChatRequest, parse_chat_request
from agent_service.devtools.llm_server.errors import ApiError, error_response
from agent_service.devtools.llm_server.faults import (
    RATE_LIMITED,
    Fault,
    directive_fault,
    fault_response,
    header_fault,
)
from agent_service.devtools.llm_server.rate_limits import RateLimited, rate_limited_error
from agent_service.devtools.llm_server.replies import build_reply
from agent_service.devtools.llm_server.responses import completion_json, stream_reply
from agent_service.devtools.llm_server.scripts import (
    INVALID_JSON_REPLY,
    Script,
    ScriptedReply,
    directive_script,
    header_script,
)
from agent_service.devtools.llm_server.state import STATE, ServerState
from agent_service.devtools.llm_server.usage import prompt_tokens
from agent_service.devtools.llm_server.validation import number_from_text

CONTEXT_LENGTH_MESSAGE = (
    "This model's maximum context length is {window} tokens. However, you requested {requested} tokens "
    "({prompt} in the messages, {completion} in the completion). Please reduce the length of the messages or "
    "completion."
)


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
    admitted = state.limiter.admit(chat.model, lambda: charged_tokens(chat, scripted))
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


def choose_action(state: ServerState, request: web.Request, chat: ChatRequest) -> Fault | ScriptedReply | None:
    """What answers instead of the default reply: a header first, then the first rule that applies, then a
    directive in a message. A script gives the reply for the conversation's turn, which may be a fault."""
    action = (
        header_fault(request.headers)
        or header_script(state.scripts, request.headers)
        or state.take_rule_action(chat)
        or directive_fault(chat.texts)
        or directive_script(state.scripts, chat.texts)
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


def charged_tokens(chat: ChatRequest, scripted: ScriptedReply | None) -> int:
    """What a request costs in tokens per minute, as OpenAI counts it on arrival: the prompt plus its
    `max_tokens`; without one, the tokens its answer will report (the answer is deterministic)."""
    limit = chat.body.get("max_tokens") or chat.body.get("max_completion_tokens")
    if isinstance(limit, int):
        return prompt_tokens(chat) + limit
    return int(build_reply(chat, cached_tokens=0, scripted=scripted).usage["total_tokens"])


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


async def answer(
    request: web.Request,
    chat: ChatRequest,
    *,
    scripted: ScriptedReply | None = None,
    filtered: bool = False,
    content_type: str = "application/json",
) -> web.StreamResponse:
    """The `scripted` reply, or the deterministic one (a plain one's JSON under `content_type`)."""
    cached = request.app[STATE].prompt_cache.cached_tokens(chat)
    reply = build_reply(chat, cached_tokens=cached, scripted=scripted, filtered=filtered)
    if chat.body.get("stream"):
        return await stream_reply(request, chat, reply)
    return web.json_response(completion_json(chat, reply), content_type=content_type)


async def faulty_answer(request: web.Request, chat: ChatRequest, fault: Fault) -> web.StreamResponse:
    response = await fault_response(request, fault)
    if response is not None:
        return response
    if fault.kind == "filtered":
        return await answer(request, chat, filtered=True)
    if fault.kind == "invalid_json":
        return await answer(request, chat, scripted=INVALID_JSON_REPLY)
    if fault.kind == "text_type":
        return await answer(request, chat, content_type="text/plain")
    await asyncio.sleep(fault.delay_ms / 1000)  # "slow"
    return await answer(request, chat)
