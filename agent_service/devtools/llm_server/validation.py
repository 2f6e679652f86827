"""Checks on what clients send (JSON bodies, fields, numbers in headers and directives), each raising an
`ApiError` that names the offending field."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from agent_service.devtools.llm_server.errors import ApiError


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


def reject_unknown_fields(body: dict[str, Any], allowed: frozenset[str], *, where: str = "") -> None:
    unknown = sorted(body.keys() - allowed)
    if unknown:
        place = f" in '{where}'" if where else ""
        param = f"{where}.{unknown[0]}" if where else unknown[0]
        raise ApiError(f"unknown field(s) {unknown}{place}; allowed: {sorted(allowed)}", param=param)


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


async def read_json_object(request: web.Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.read())
    except ValueError:
        raise ApiError("request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError("request body must be a JSON object")
    return body
