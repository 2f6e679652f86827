"""The aiohttp application: its state, the OpenAI routes (``/v1/chat/completions``, ``/v1/models``),
``/health`` and the ``/control`` API."""

from __future__ import annotations

import random

from aiohttp import web

from agent_service.devtools.llm_server import control
from agent_service.devtools.llm_server.completions import chat_completions
from agent_service.devtools.llm_server.errors import api_errors
from agent_service.devtools.llm_server.rate_limits import DEFAULT_RATE_BURST_SECONDS
from agent_service.devtools.llm_server.state import STATE, ServerState

MODEL_IDS = ("gpt-4o-mini", "gpt-4o")


async def list_models(request: web.Request) -> web.Response:
    models = [{"id": model, "object": "model", "created": 0, "owned_by": "offline"} for model in MODEL_IDS]
    return web.json_response({"object": "list", "data": models})


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


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
        ]
    )
    app.add_routes(control.routes)
    return app
