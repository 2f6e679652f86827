"""The ``/control`` API that tests and benchmarks drive the server with: fault and script rules
(``/control/faults``), named scripts (``/control/scripts``), settings (``/control/config``: latency, jitter,
``context_window``, rate limits), the request log (``/control/requests``: each request's turn, tools,
response_format and how it ended), counts (``/control/stats``) and ``/control/reset``."""

from __future__ import annotations

from collections import deque
from typing import Any

from aiohttp import web

from agent_service.devtools.llm_server.errors import ApiError
from agent_service.devtools.llm_server.rate_limits import parse_rate_limits
from agent_service.devtools.llm_server.scripts import parse_named_script
from agent_service.devtools.llm_server.state import STATE
from agent_service.devtools.llm_server.validation import (
    non_zero,
    optional_json_number,
    read_json_object,
    reject_unknown_fields,
)

routes = web.RouteTableDef()

CONFIG_FIELDS = frozenset(
    {"latency_ms", "latency_jitter_ms", "context_window", "stream_pause_ms", "rate_limits", "rate_burst_seconds"}
)


def deleted_all(items: dict[Any, Any] | deque[Any]) -> web.Response:
    """Empties `items`; the answer says how many there were."""
    deleted = len(items)
    items.clear()
    return web.json_response({"deleted": deleted})


@routes.post("/control/faults")
async def add_fault_rule(request: web.Request) -> web.Response:
    rule = request.app[STATE].add_rule(await read_json_object(request))
    return web.json_response({"id": rule.id})


@routes.get("/control/faults")
async def list_fault_rules(request: web.Request) -> web.Response:
    return web.json_response([rule.as_json() for rule in request.app[STATE].rules.values()])


@routes.delete("/control/faults")
async def clear_fault_rules(request: web.Request) -> web.Response:
    return deleted_all(request.app[STATE].rules)


@routes.delete("/control/faults/{rule_id}")
async def delete_fault_rule(request: web.Request) -> web.Response:
    rule_id = request.match_info["rule_id"]
    rules = request.app[STATE].rules
    if not rule_id.isdigit() or rules.pop(int(rule_id), None) is None:
        raise ApiError(f"no fault rule with id {rule_id!r}", status=404, param="id")
    return web.json_response({"deleted": 1})


@routes.post("/control/scripts")
async def add_script(request: web.Request) -> web.Response:
    """Registers (or replaces) a named script: {"name": NAME, "replies": [reply, ...]}."""
    name, script = parse_named_script(await read_json_object(request))
    request.app[STATE].scripts[name] = script
    return web.json_response({"name": name, "replies": len(script.replies)})


@routes.get("/control/scripts")
async def list_scripts(request: web.Request) -> web.Response:
    scripts = request.app[STATE].scripts
    return web.json_response({"scripts": {name: script.source for name, script in scripts.items()}})


@routes.delete("/control/scripts")
async def clear_scripts(request: web.Request) -> web.Response:
    return deleted_all(request.app[STATE].scripts)


@routes.get("/control/config")
async def get_config(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE].config())


@routes.post("/control/config")
async def update_config(request: web.Request) -> web.Response:
    body = await read_json_object(request)
    reject_unknown_fields(body, CONFIG_FIELDS)
    state = request.app[STATE]
    state.latency_ms = optional_json_number(body, "latency_ms", default=state.latency_ms)
    state.latency_jitter_ms = optional_json_number(body, "latency_jitter_ms", default=state.latency_jitter_ms)
    state.context_window = optional_json_number(body, "context_window", default=state.context_window)
    state.stream_pause_ms = optional_json_number(body, "stream_pause_ms", default=state.stream_pause_ms)
    if "rate_limits" in body or "rate_burst_seconds" in body:
        limiter = state.limiter
        limits = parse_rate_limits(body["rate_limits"]) if "rate_limits" in body else limiter.limits
        burst = optional_json_number(body, "rate_burst_seconds", default=limiter.burst_seconds)
        limiter.configure(limits, burst_seconds=non_zero(burst, "rate_burst_seconds"))
    return web.json_response(state.config())


@routes.get("/control/requests")
async def list_requests(request: web.Request) -> web.Response:
    match = request.query.get("match")
    log = request.app[STATE].request_log
    entries = [entry for entry in log if match is None or match in entry["text"]]
    return web.json_response({"requests": entries})


@routes.delete("/control/requests")
async def clear_requests(request: web.Request) -> web.Response:
    return deleted_all(request.app[STATE].request_log)


@routes.get("/control/stats")
async def stats(request: web.Request) -> web.Response:
    state = request.app[STATE]
    by_status = {str(status): count for status, count in sorted(state.by_status.items())}
    totals = {
        "requests": state.by_status.total(),
        "by_status": by_status,
        "in_flight": state.in_flight,
        "rate_limited": state.limiter.refused,
    }
    return web.json_response(totals)


@routes.post("/control/reset")
async def reset(request: web.Request) -> web.Response:
    state = request.app[STATE]
    state.reset()
    return web.json_response({"status": "reset", **state.config()})
