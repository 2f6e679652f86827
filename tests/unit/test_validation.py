"""Input validation: what a caller may submit as a task or an agent, and errors that name each bad field."""

from __future__ import annotations

import uuid

import pytest

from agent_service.errors import TaskValidationError
from agent_service.submission.validation import parse_agent_input, parse_task_input
from tests.support import make_settings

SETTINGS = make_settings(max_title_length=50, max_description_length=100)


def task(**fields):
    return {"title": "Summarise", "agent_id": str(uuid.uuid4()), "user_id": "u1", **fields}


def rejected_task(data) -> str:
    with pytest.raises(TaskValidationError) as raised:
        parse_task_input(data, settings=SETTINGS)
    return str(raised.value)


def rejected_agent(data) -> str:
    with pytest.raises(TaskValidationError) as raised:
        parse_agent_input(data)
    return str(raised.value)


def test_a_valid_task_is_accepted_with_whitespace_stripped():
    parsed = parse_task_input(task(title="  Summarise  ", description="the week"), settings=SETTINGS)
    assert (parsed.title, parsed.description, parsed.idempotency_key) == ("Summarise", "the week", None)


def test_sizes_are_bounded_by_the_settings_and_the_error_gives_the_limit():
    assert (
        rejected_task(task(title="x" * 51))
        == "invalid task input: title: Value error, is 51 characters long; the limit is 50"
    )
    assert "description: Value error, is 101 characters long; the limit is 100" in rejected_task(
        task(description="x" * 101)
    )
    assert "user_id: String should have at most 200 characters" in rejected_task(task(user_id="u" * 201))


def test_nul_bytes_are_refused_since_postgres_cannot_store_them():
    assert "description: Value error, must not contain NUL bytes" in rejected_task(task(description="a\x00b"))


def test_lone_surrogates_are_refused():
    assert "title: Input should be a valid string" in rejected_task(task(title="\udc80"))


def test_unknown_fields_are_refused_rather_than_ignored():
    assert rejected_task(task(urgency="high")) == "invalid task input: urgency: Extra inputs are not permitted"


def test_priority_is_a_whole_number_from_0_to_9_defaulting_to_0():
    assert parse_task_input(task(), settings=make_settings()).priority == 0
    assert parse_task_input(task(priority=9), settings=make_settings()).priority == 9
    assert "priority" in rejected_task(task(priority=10))
    assert "priority" in rejected_task(task(priority=-1))
    assert "priority" in rejected_task(task(priority="5"))


def test_every_bad_field_is_named_in_one_error():
    message = rejected_task({"title": "", "agent_id": "not-a-uuid", "user_id": 5})
    assert message.startswith("invalid task input: ")
    for field in ("title:", "agent_id:", "user_id:"):
        assert field in message


def test_a_task_that_is_not_a_mapping_is_refused_by_type():
    assert rejected_task(["Summarise"]) == "TaskInput must be a mapping, not list"


def test_strings_are_strict_numbers_are_not_taken_as_titles():
    assert "title: Input should be a valid string" in rejected_task(task(title=42))


def test_an_agent_gets_defaults_and_bounded_settings():
    agent = parse_agent_input({"name": "writer", "prompt": "Be brief.", "model": "gpt-4o-mini"})
    assert (agent.temperature, agent.max_tokens, agent.settings.response_format) == (0.7, 1000, "text")
    assert "temperature: Input should be less than or equal to 2" in rejected_agent(
        {"name": "writer", "prompt": "Be brief.", "model": "m", "temperature": 3}
    )


def test_an_unknown_model_option_is_named_with_its_path():
    message = rejected_agent({"name": "writer", "prompt": "p", "model": "m", "settings": {"top_k": 3}})
    assert message == "invalid agent definition: settings.top_k: Extra inputs are not permitted"


def test_an_agent_may_name_a_fallback_model_other_than_its_own():
    agent = {"name": "writer", "prompt": "Write.", "model": "gpt-4o-mini"}
    assert parse_agent_input(agent).fallback_model is None
    assert parse_agent_input({**agent, "fallback_model": " gpt-4o "}).fallback_model == "gpt-4o"
    assert "fallback_model must name a model other than model" in rejected_agent(
        {**agent, "fallback_model": "gpt-4o-mini"}
    )


AGENT = {"name": "sorter", "prompt": "Decide.", "model": "gpt-4o-mini"}
ORDER_SCHEMA = {"type": "object", "properties": {"total": {"type": "number"}}, "required": ["total"]}


def test_an_agent_has_a_kind_text_by_default_and_an_unknown_one_is_named_with_the_kinds():
    assert parse_agent_input(AGENT).kind == "text"
    assert parse_agent_input({**AGENT, "kind": "decision"}).kind == "decision"
    assert rejected_agent({**AGENT, "kind": "review"}) == (
        "invalid agent definition: kind: Input should be 'text', 'decision', 'api' or 'data'"
    )


def test_a_data_agent_needs_a_usable_schema_and_the_error_names_output_schema():
    assert parse_agent_input({**AGENT, "kind": "data", "output_schema": ORDER_SCHEMA}).output_schema == ORDER_SCHEMA
    assert rejected_agent({**AGENT, "kind": "data"}).startswith("invalid agent definition: output_schema: a data agent")
    for schema, problem in [
        ({"type": "array"}, '"type": "object" at its root'),
        ({"type": "object", "properties": {"a": {"minimum": "one"}}}, "not a valid JSON Schema"),
        ({"type": "object", "properties": {"a": {"$ref": "http://169.254.169.254/s"}}}, "never fetched"),
        ("{}", "Input should be a valid dictionary"),
    ]:
        message = rejected_agent({**AGENT, "kind": "data", "output_schema": schema})
        assert message.startswith("invalid agent definition: output_schema: ") and problem in message


def test_only_an_api_agent_has_tools_and_it_must_have_some():
    schema = {"type": "object", "properties": {"id": {"type": "string"}}, "required": ["id"]}
    lookup = {"name": "lookup", "description": "d", "parameters": schema, "method": "GET"}
    tools = [{**lookup, "url": "https://api.example.com/{id}"}]
    hosts = {"allowed_hosts": ["api.example.com"]}
    assert parse_agent_input({**AGENT, "kind": "api", "tools": tools, "settings": hosts}).tools == tools
    assert rejected_agent({**AGENT, "kind": "api"}) == (
        "invalid agent definition: tools: an api agent needs a non-empty list of tool definitions"
    )
    assert rejected_agent({**AGENT, "kind": "api", "tools": []}).startswith("invalid agent definition: tools: ")
    assert "tools.0: Input should be a valid dictionary" in rejected_agent({**AGENT, "kind": "api", "tools": ["x"]})
    assert rejected_agent({**AGENT, "tools": tools}) == (
        "invalid agent definition: tools: only an api agent calls tools, not a text one"
    )


def test_an_api_agents_tools_are_checked_naming_the_bad_tool_field_or_host():
    schema = {"type": "object", "properties": {"id": {"type": "string"}}, "required": ["id"]}
    lookup = {"name": "lookup", "description": "d", "parameters": schema, "method": "GET"}
    elsewhere = [{**lookup, "url": "https://evil.example.net/{id}"}]
    hosts = {"allowed_hosts": ["api.example.com"]}
    assert rejected_agent({**AGENT, "kind": "api", "tools": elsewhere, "settings": hosts}) == (
        "invalid agent definition: tools[0].url: host evil.example.net is not in the agent's allowed_hosts"
    )
    unnamed = [{**lookup, "url": "https://api.example.com/{nope}"}]
    assert rejected_agent({**AGENT, "kind": "api", "tools": unnamed, "settings": hosts}) == (
        "invalid agent definition: tools[0].url: placeholder {nope} is not a parameter"
    )
    octal = [{**lookup, "url": "http://0177.0.0.1/{id}"}]
    assert rejected_agent({**AGENT, "kind": "api", "tools": octal, "settings": {"allowed_hosts": ["127.0.0.1"]}}) == (
        "invalid agent definition: tools[0].url: host 0177.0.0.1 is the IPv4 address 127.0.0.1 written in another"
        " form; write 127.0.0.1"
    )


def test_an_agents_errors_say_agent_definition_and_a_tasks_say_task_input():
    assert rejected_agent({"name": "writer", "prompt": "", "model": "m"}).startswith(
        "invalid agent definition: prompt:"
    )
    assert rejected_task(task(title="")).startswith("invalid task input: title:")


def test_a_decision_agents_choices_are_at_least_two_distinct_options():
    agent = parse_agent_input({**AGENT, "kind": "decision", "settings": {"choices": ["approve", "reject"]}})
    assert agent.settings.choices == ["approve", "reject"]
    assert "settings.choices: List should have at least 2 items" in rejected_agent(
        {**AGENT, "kind": "decision", "settings": {"choices": ["approve"]}}
    )
    assert "settings.choices: Value error, must be distinct" in rejected_agent(
        {**AGENT, "kind": "decision", "settings": {"choices": ["a", "a"]}}
    )


def test_a_task_may_set_its_own_kind_and_carry_any_json_payload():
    parsed = parse_task_input(task(kind="data", payload={"rows": [1, 2.5, None, "  x  "]}), settings=SETTINGS)
    assert (parsed.kind, parsed.payload) == ("data", {"rows": [1, 2.5, None, "  x  "]})  # kept as given
    assert parse_task_input(task(payload=[1, 2]), settings=SETTINGS).payload == [1, 2]
    assert "kind: Input should be 'text', 'decision', 'api' or 'data'" in rejected_task(task(kind="review"))


def test_a_payload_over_the_configured_size_is_refused_with_its_size_and_the_limit():
    small = make_settings(max_payload_bytes=20)
    parse_task_input(task(payload={"a": "x" * 11}), settings=small)  # {"a": "xxxxxxxxxxx"}: 20 bytes
    with pytest.raises(TaskValidationError) as raised:
        parse_task_input(task(payload={"a": "é" * 11}), settings=small)  # bytes, not characters
    assert str(raised.value) == (
        "invalid task input: payload: Value error, is 31 bytes as JSON; the limit is 20 (MAX_PAYLOAD_BYTES)"
    )


@pytest.mark.parametrize("payload", [{"at": float("nan")}, {"ids": {1, 2}}, {"when": uuid.uuid4()}])
def test_a_payload_that_is_not_json_is_refused(payload):
    assert "payload: Value error, must be JSON" in rejected_task(task(payload=payload))
