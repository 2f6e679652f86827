"""Offline HTTP API for agents' tools in tests, demos and benchmarks; it records every call it receives.

``python -m agent_service.devtools.tool_server --port N`` (0 picks a free port) serves, deterministically:

- ``GET /weather?city=X``: ``{"city": X, "temperature_c": ..., "conditions": ...}`` (the same for the same
  city); 400 ``{"error": ...}`` without ``city``.
- ``POST /orders`` with a JSON object: 201 ``{"id": "ord_N", "status": "created", "order": BODY}``, ids
  numbered from 1. A request repeating an ``Idempotency-Key`` gets the first order back (200, header
  ``Idempotent-Replayed: true``) and creates none, as payment APIs do; a body that is not a JSON object: 400.
- ``/echo/ANY`` (any method): ``{"method", "path", "query", "headers", "body"}`` of the request.
- ``/slow?ms=N`` (any method): ``{"slept_ms": N}`` after N ms (the bench's slow webhook receiver too).
- ``/status/CODE`` (any method): that status, with ``{"status": CODE}`` (no body where HTTP allows none).
- ``GET /redirect?to=URL``: 302 to URL.
- ``GET /big?bytes=N``: N bytes of ``x`` (text/plain), with a Content-Length, or without one (chunked)
  given ``&chunked=1``. Nothing is capped here: capping is the client's job.

Every call but ``/health`` and ``/control/*`` is recorded as it arrives: ``{"seq", "at", "method",
"path", "query", "headers", "body", "json"}`` with header names in lower case and values as received
(``idempotency-key``, ``authorization``...), the body as text and ``json`` its parsed value (else null).
``GET /control/calls`` lists them (``?path=/orders`` and ``?method=POST`` filter, exactly);
``POST /control/reset`` forgets them and the orders.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import itertools
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from agent_service.devtools.serving import serve

CONDITIONS = ("sunny", "cloudy", "rain", "snow", "windy")
CHUNK_BYTES = 64 * 1024
NO_BODY_STATUSES = frozenset({204, 304}) | frozenset(range(100, 200))
UNRECORDED_PREFIXES = ("/control/", "/health")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class ToolState:
    calls: list[dict[str, Any]] = field(default_factory=list)
    orders_by_key: dict[str, dict[str, Any]] = field(default_factory=dict)
    order_ids: itertools.count = field(default_factory=lambda: itertools.count(1))
    call_seq: itertools.count = field(default_factory=lambda: itertools.count(1))

    def record(self, request: web.Request, body: bytes) -> None:
        text = body.decode(errors="replace")
        try:
            parsed = json.loads(text) if text else None
        except ValueError:
            parsed = None
        self.calls.append(
            {
                "seq": next(self.call_seq),
                "at": time.time(),
                "method": request.method,
                "path": request.path,
                "query": dict(request.query),
                "headers": {name.lower(): value for name, value in request.headers.items()},
                "body": text,
                "json": parsed,
            }
        )

    def reset(self) -> int:
        forgotten = len(self.calls)
        self.calls.clear()
        self.orders_by_key.clear()
        self.order_ids = itertools.count(1)
        return forgotten


STATE = web.AppKey("state", ToolState)


def bad_request(message: str) -> web.Response:
    return web.json_response({"error": message}, status=400)


def query_int(request: web.Request, name: str) -> int | None:
    value = request.query.get(name, "")
    return int(value) if value.isdigit() else None


# ---------------------------------------------------------------- the API tools call


def weather_tool(base_url: str) -> dict[str, Any]:
    """The definition of an agent's tool for `GET /weather` on this server at `base_url` (demo and bench)."""
    return {
        "name": "weather",
        "description": "Today's weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        "method": "GET",
        "url": f"{base_url}/weather",
    }


async def weather(request: web.Request) -> web.Response:
    city = request.query.get("city")
    if not city:
        return bad_request("'city' is required")
    digest = hashlib.sha256(city.lower().encode()).digest()
    report = {"city": city, "temperature_c": digest[0] % 35 - 5, "conditions": CONDITIONS[digest[1] % len(CONDITIONS)]}
    return web.json_response(report)


async def create_order(request: web.Request) -> web.Response:
    state = request.app[STATE]
    try:
        order = json.loads(await request.read())
    except ValueError:
        order = None
    if not isinstance(order, dict):
        return bad_request("the body must be a JSON object")
    key = request.headers.get("Idempotency-Key")
    if key is not None and key in state.orders_by_key:
        return web.json_response(state.orders_by_key[key], headers={"Idempotent-Replayed": "true"})
    created = {"id": f"ord_{next(state.order_ids)}", "status": "created", "order": order}
    if key is not None:
        state.orders_by_key[key] = created
    return web.json_response(created, status=201)


async def echo(request: web.Request) -> web.Response:
    return web.json_response(
        {
            "method": request.method,
            "path": request.path,
            "query": dict(request.query),
            "headers": dict(request.headers),
            "body": (await request.read()).decode(errors="replace"),
        }
    )


async def slow(request: web.Request) -> web.Response:
    delay_ms = query_int(request, "ms")
    if delay_ms is None:
        return bad_request("'ms' must be a whole number of milliseconds")
    await asyncio.sleep(delay_ms / 1000)
    return web.json_response({"slept_ms": delay_ms})


async def status(request: web.Request) -> web.Response:
    code = int(request.match_info["code"])
    if not 100 <= code <= 599:
        return bad_request("the status must be between 100 and 599")
    if code in NO_BODY_STATUSES:
        return web.Response(status=code)
    return web.json_response({"status": code}, status=code)


async def redirect(request: web.Request) -> web.Response:
    target = request.query.get("to")
    if not target:
        return bad_request("'to' is required")
    raise web.HTTPFound(location=target)


async def big(request: web.Request) -> web.StreamResponse:
    size = query_int(request, "bytes")
    if size is None:
        return bad_request("'bytes' must be a whole number")
    response = web.StreamResponse(headers={"Content-Type": "text/plain"})
    if request.query.get("chunked") == "1":
        response.enable_chunked_encoding()
    else:
        response.content_length = size
    await response.prepare(request)
    chunk = b"x" * CHUNK_BYTES
    for start in range(0, size, CHUNK_BYTES):
        await response.write(chunk[: min(CHUNK_BYTES, size - start)])
    await response.write_eof()
    return response


# ---------------------------------------------------------------- control


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def list_calls(request: web.Request) -> web.Response:
    wanted = {name: request.query[name] for name in ("path", "method") if name in request.query}
    calls = [call for call in request.app[STATE].calls if all(call[name] == value for name, value in wanted.items())]
    return web.json_response({"calls": calls})


async def reset(request: web.Request) -> web.Response:
    return web.json_response({"deleted": request.app[STATE].reset()})


@web.middleware
async def record_calls(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every call is recorded as it arrives, so a test sees calls still in progress (a slow one) too."""
    if not request.path.startswith(UNRECORDED_PREFIXES):
        request.app[STATE].record(request, await request.read())
    return await handler(request)


def make_app() -> web.Application:
    app = web.Application(middlewares=[record_calls])
    app[STATE] = ToolState()
    app.add_routes(
        [
            web.get("/weather", weather),
            web.post("/orders", create_order),
            web.route("*", "/echo/{tail:.*}", echo),
            web.route("*", "/slow", slow),
            web.route("*", r"/status/{code:\d+}", status),
            web.get("/redirect", redirect),
            web.get("/big", big),
            web.get("/health", health),
            web.get("/control/calls", list_calls),
            web.post("/control/reset", reset),
        ]
    )
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8098, help="0 picks a free port")
    args = parser.parse_args(argv)
    asyncio.run(serve(make_app(), name="tool_server", host=args.host, port=args.port))


if __name__ == "__main__":
    main()
