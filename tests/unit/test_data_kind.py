"""The data kind: the payload shown as JSON, the agent's JSON Schema asked for as structured output, the
reply checked against it (naming where and why it fails), and schemas whose remote references are refused,
never fetched."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from agent_service.errors import InvalidOutputError, PermanentError, TaskValidationError
from agent_service.kinds.base import AgentDefinition, TaskWork
from agent_service.kinds.data import DataKind, check_output_schema
from agent_service.llm.messages import LLMReply, ModelOptions, Usage
from agent_service.store.agents import AgentSpec

SCHEMA = {
    "type": "object",
    "$defs": {"line": {"type": "object", "properties": {"sku": {"type": "string"}, "qty": {"type": "integer"}}}},
    "properties": {"customer": {"type": "string"}, "lines": {"type": "array", "items": {"$ref": "#/$defs/line"}}},
    "required": ["customer", "lines"],
}
AGENT = AgentSpec(uuid.uuid4(), "Extract orders.", "gpt-4o-mini", 0.0, 300, ModelOptions(), output_schema=SCHEMA)
KIND = DataKind()


def work(payload=None, **agent) -> TaskWork:
    return TaskWork(replace(AGENT, **agent), "Order", "Extract the order from the e-mail.", payload)


def reply(text: str, *, refused: bool = False) -> LLMReply:
    return LLMReply(text, Usage(10, 5, 15), refused=refused)


def test_the_request_shows_the_payload_as_json_and_asks_for_the_agents_schema():
    request = KIND.build_request(work({"email": "2 × A-1 for Ada"}))
    assert request.output_schema.name == "data" and json.loads(request.output_schema.schema_json) == SCHEMA
    assert request.messages[0].content == "Extract orders."
    assert 'Input (JSON):\n{\n  "email": "2 × A-1 for Ada"\n}' in request.messages[1].content


def test_a_valid_reply_is_stored_as_json_and_its_serialization_is_the_text():
    result = KIND.interpret(work(), reply('{"customer": "Ada", "lines": [{"sku": "A-1", "qty": 2}]}'))
    assert result.data == {"customer": "Ada", "lines": [{"sku": "A-1", "qty": 2}]}
    assert json.loads(result.text) == result.data


@pytest.mark.parametrize(
    "text, problem",
    [
        ('{"customer": "Ada", "lines": [{"qty": "two"}]}', "$.lines[0].qty: 'two' is not of type 'integer'"),
        ('{"lines": []}', "$: 'customer' is a required property"),
        ('{"customer": "Ada", "lines": "none"}', "$.lines: 'none' is not of type 'array'"),
    ],
)
def test_a_reply_that_does_not_match_the_schema_is_invalid_output_naming_the_path(text, problem):
    with pytest.raises(InvalidOutputError, match="does not match the agent's output_schema") as raised:
        KIND.interpret(work(), reply(text))
    assert problem in str(raised.value)


@pytest.mark.parametrize("text", ['{"customer": "Ada", "lines": [', '{"customer": NaN, "lines": []}', "[" * 100_000])
def test_a_reply_that_is_not_json_is_invalid_output(text):
    with pytest.raises(InvalidOutputError, match="the reply is not valid JSON"):
        KIND.interpret(work(), reply(text))


def test_a_refusal_fails_clearly_and_is_not_re_asked():
    with pytest.raises(PermanentError, match="the model refused: no") as raised:
        KIND.interpret(work(), reply("no", refused=True))
    assert not isinstance(raised.value, InvalidOutputError)


def test_a_data_agent_needs_a_schema_and_a_data_task_an_agent_with_one():
    with pytest.raises(TaskValidationError, match=r"^output_schema: a data agent needs the JSON Schema"):
        KIND.check_agent(AgentDefinition("data"))
    KIND.check_agent(AgentDefinition("data", output_schema=SCHEMA))
    with pytest.raises(PermanentError, match=r"^kind: a data task needs an agent with an output_schema"):
        KIND.check_task(work(output_schema=None))


@pytest.mark.parametrize(
    "schema, problem",
    [
        ({"type": "object", "properties": {"a": {"type": "nope"}}}, "not a valid JSON Schema (Draft 2020-12)"),
        ({"type": "array"}, 'must have "type": "object" at its root'),
        ({"properties": {}}, 'must have "type": "object" at its root'),
        (
            {"type": "object", "properties": {"a": {"$ref": "https://schemas.example.com/a.json"}}},
            "$.properties.a.$ref: 'https://schemas.example.com/a.json' is not a reference within the schema",
        ),
        ({"type": "object", "items": {"$dynamicRef": "other.json#node"}}, "$.items.$dynamicRef: 'other.json#node'"),
    ],
)
def test_a_schema_that_cannot_be_used_is_refused_saying_why(schema, problem):
    with pytest.raises(ValueError) as raised:
        check_output_schema(schema)
    assert problem in str(raised.value)


def test_local_references_and_ref_shaped_data_are_accepted():
    check_output_schema(SCHEMA)
    check_output_schema({"type": "object", "properties": {"$ref": {"const": {"$ref": "https://example.com/x"}}}})


@pytest.fixture
def schema_host() -> Iterator[tuple[str, list[str]]]:
    """A loopback HTTP server that serves a schema and records every request it gets."""
    fetched: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            fetched.append(self.path)
            body = json.dumps({"type": "integer"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/qty.json", fetched
    server.shutdown()
    server.server_close()


def test_a_remote_reference_is_refused_when_created_and_an_error_at_run_time_never_a_fetch(schema_host):
    url, fetched = schema_host
    remote = {"type": "object", "properties": {"qty": {"$ref": url}}, "required": ["qty"]}
    # Refused when the agent is created
    with pytest.raises(ValueError, match="not a reference within the schema"):
        check_output_schema(remote)
    # And a stored one (written around the checks) fails the task at run time, for the agent to be fixed
    with pytest.raises(PermanentError, match=r"output_schema cannot be used: .*Unresolvable") as raised:
        KIND.interpret(work(output_schema=remote), reply('{"qty": 2}'))
    assert not isinstance(raised.value, InvalidOutputError)
    # Neither fetched anything
    assert fetched == []
