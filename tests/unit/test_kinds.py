"""Task kinds: the text kind's request and result, and looking a kind up by name (the decision and data kinds:
test_decision_kind.py, test_data_kind.py)."""

from __future__ import annotations

import uuid
from dataclasses import replace

import pytest

from agent_service.errors import InvalidOutputError, PermanentError
from agent_service.kinds import KINDS, kind_named
from agent_service.kinds.base import TaskWork
from agent_service.kinds.text import TextKind
from agent_service.llm.messages import LLMReply, Message, ModelOptions, Usage
from agent_service.store.agents import AgentSpec

OPTIONS = ModelOptions(top_p=0.9, response_format="json_object")
AGENT = AgentSpec(uuid.uuid4(), "You are a careful analyst.", "gpt-4o-mini", 0.2, 300, OPTIONS)
WORK = TaskWork(AGENT, "Summarise", "the week's incidents")


def test_the_text_kind_asks_with_the_agents_prompt_and_settings_and_the_tasks_words():
    request = TextKind().build_request(WORK)
    assert (request.model, request.temperature, request.max_tokens, request.options) == (
        "gpt-4o-mini",
        0.2,
        300,
        OPTIONS,
    )
    assert request.messages == (
        Message("system", "You are a careful analyst."),
        Message("user", "Task: Summarise\n\nDescription: the week's incidents"),
    )


def test_the_text_kind_keeps_the_replys_text_as_the_result():
    plain = replace(WORK, agent=replace(AGENT, options=ModelOptions()))
    result = TextKind().interpret(plain, LLMReply("Three incidents, all resolved.", Usage(10, 5, 15)))
    assert (result.text, result.data) == ("Three incidents, all resolved.", None)


def test_an_agent_that_asks_for_json_gets_the_reply_parsed_or_an_invalid_output_error():
    result = TextKind().interpret(WORK, LLMReply('{"incidents": 3}', Usage(10, 5, 15)))
    assert (result.text, result.data) == ('{"incidents": 3}', {"incidents": 3})
    with pytest.raises(InvalidOutputError, match="the reply is not valid JSON"):
        TextKind().interpret(WORK, LLMReply('{"incidents": ', Usage(10, 5, 15)))


def test_kinds_are_found_by_name_and_text_is_the_default_kind():
    assert AGENT.kind == "text" and isinstance(kind_named("text"), TextKind)
    assert {"text", "decision", "api", "data"} <= set(KINDS)


def test_an_unknown_kind_fails_permanently_naming_the_known_ones():
    with pytest.raises(PermanentError, match=r"unknown task kind 'review'; known: alpha, text"):
        kind_named("review", {"text": TextKind(), "alpha": TextKind()})
