"""Structured output: a sample value of a JSON schema (``$ref``, ``enum``, ``anyOf``, the basic types), enough
for clients that validate what they get; it fills ``response_format`` answers and tool-call arguments."""

from __future__ import annotations

import json
from typing import Any


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
