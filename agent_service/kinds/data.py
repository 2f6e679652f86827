"""The `data` kind: the task carries a JSON payload, and the result is JSON valid against the agent's JSON
Schema, asked for as structured output and checked with `jsonschema` (Draft 2020-12).

References are resolved within the schema only: the registry is empty, so a `$ref` to a URL is refused when
the agent is created and, should one be stored anyway, is an error at run time, never a fetch.
"""

from __future__ import annotations

import json
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError, ValidationError, relevance
from referencing.exceptions import Unresolvable

from agent_service.errors import InvalidOutputError, PermanentError, TaskValidationError
from agent_service.jsonschemas import NOTHING_REMOTE, check_local_references
from agent_service.kinds.base import (
    AgentDefinition,
    KindName,
    KindResult,
    OneShotKind,
    TaskWork,
    agent_request,
    answered_text,
    task_text,
)
from agent_service.llm.messages import LLMReply, LLMRequest, OutputSchema

MAX_PROBLEMS = 5  # the problems an error names, most relevant first
MAX_PROBLEM_CHARS = 300


class DataKind(OneShotKind):
    """The agent's prompt as the system message; the task's words and its payload (as JSON) as the user's.
    The result is the JSON the model answered, stored as JSON, and its serialization as the text."""

    name: str = KindName.DATA

    def check_agent(self, agent: AgentDefinition) -> None:
        """Raises: TaskValidationError when the agent has no output_schema (its checks: `check_output_schema`)."""
        if agent.output_schema is None:
            raise TaskValidationError("output_schema: a data agent needs the JSON Schema of its results")

    def check_task(self, work: TaskWork) -> None:
        if work.agent.output_schema is None:
            raise PermanentError("kind: a data task needs an agent with an output_schema")

    def build_request(self, work: TaskWork) -> LLMRequest:
        self.check_task(work)
        schema = OutputSchema("data", json.dumps(work.agent.output_schema))
        return agent_request(work, task_text(work, payload=work.payload), output_schema=schema)

    def interpret(self, work: TaskWork, reply: LLMReply) -> KindResult:
        """Raises: PermanentError when the model refused or the schema cannot be used; InvalidOutputError
        (re-asked once) when the reply is not JSON or not valid against the schema, naming where and why."""
        text = answered_text(reply)
        try:
            value = json.loads(text, parse_constant=_no_constant)
        except (ValueError, RecursionError) as exc:  # nested past the parser's depth: not a result either
            raise InvalidOutputError(f"the reply is not valid JSON: {exc}") from None
        problems = [_problem(error) for error in _errors(work.agent.output_schema or {}, value)]
        if problems:
            raise InvalidOutputError(f"the reply does not match the agent's output_schema: {'; '.join(problems)}")
        # A NUL can only be inside a JSON string, where it must be escaped anyway; PostgreSQL text cannot hold one.
        return KindResult(text=json.dumps(value, ensure_ascii=False).replace("\x00", "\\u0000"), data=value)


def check_output_schema(schema: Any) -> None:
    """Check a JSON Schema for an agent's results: valid Draft 2020-12, `type: object` at its root, and no
    reference outside itself. Raises: ValueError saying what is wrong."""
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        raise ValueError(f"not a valid JSON Schema (Draft 2020-12): {exc.message:.300} at {exc.json_path}") from None
    if not isinstance(schema, dict) or schema.get("type") != "object":
        raise ValueError('must have "type": "object" at its root (a result is a JSON object)')
    check_local_references(schema)


def _errors(schema: dict[str, Any], value: Any) -> list[ValidationError]:
    """The ways `value` fails `schema`, most relevant first. Raises: PermanentError when the schema cannot be
    used (a reference it cannot resolve: the agent must be fixed, not the reply)."""
    try:
        errors = Draft202012Validator(schema, registry=NOTHING_REMOTE).iter_errors(value)
        return sorted(errors, key=relevance, reverse=True)[:MAX_PROBLEMS]
    except Unresolvable as exc:
        raise PermanentError(
            f"the agent's output_schema cannot be used: {exc} (references are never fetched)"
        ) from None
    except SchemaError as exc:
        raise PermanentError(f"the agent's output_schema cannot be used: {exc.message:.300}") from None


def _problem(error: ValidationError) -> str:
    return f"{error.json_path}: {error.message:.{MAX_PROBLEM_CHARS}}"


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")
