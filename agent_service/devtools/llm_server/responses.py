"""A reply as OpenAI sends it: one ``chat.completion`` JSON body, or (``"stream": true``) server-sent
``chat.completion.chunk`` events (the role, then the text, refusal or tool-call arguments in pieces, the
finish reason, the usage when ``stream_options.include_usage`` asks for it, and ``[DONE]``)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

from aiohttp import web

from agent_service.devtools.llm_server.chat import ChatRequest
from agent_service.devtools.llm_server.replies import Reply
from agent_service.devtools.llm_server.state import STATE

SYSTEM_FINGERPRINT = "fp_offline"
STREAM_PIECES = 3


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
    pause_s = request.app[STATE].stream_pause_ms / 1000
    for at, choice in enumerate(stream_choices(reply)):
        if pause_s and at:
            await asyncio.sleep(pause_s)
        await response.write(sse_event({**envelope, "choices": [choice]}))
    if include_usage:
        await response.write(sse_event({**envelope, "choices": [], "usage": reply.usage}))
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response
