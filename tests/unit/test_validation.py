"""Input validation: what a caller may submit as a task or an agent, and errors that name each bad field."""

from __future__ import annotations

import uuid

import pytest

from errors import TaskValidationError
from submission.validation import parse_agent_input, parse_task_input
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
    assert message == "invalid task input: settings.top_k: Extra inputs are not permitted"


def test_an_agent_may_name_a_fallback_model_other_than_its_own():
    agent = {"name": "writer", "prompt": "Write.", "model": "gpt-4o-mini"}
    assert parse_agent_input(agent).fallback_model is None
    assert parse_agent_input({**agent, "fallback_model": " gpt-4o "}).fallback_model == "gpt-4o"
    assert "fallback_model must name a model other than model" in rejected_agent(
        {**agent, "fallback_model": "gpt-4o-mini"}
    )
