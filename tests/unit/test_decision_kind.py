"""The decision kind: options from the task or its agent, the structured output asked for, and the reply
validated by the pydantic model built for those options."""

from __future__ import annotations

import json
import uuid
from dataclasses import replace

import pytest
from jsonschema import Draft202012Validator

from agent_service.errors import InvalidOutputError, PermanentError
from agent_service.kinds.base import TaskWork
from agent_service.kinds.decision import DecisionKind
from agent_service.llm.messages import LLMReply, ModelOptions, Usage
from agent_service.store.agents import AgentSpec

AGENT = AgentSpec(
    uuid.uuid4(),
    "You review refunds.",
    "gpt-4o-mini",
    0.0,
    200,
    ModelOptions(response_format="json_object"),
    kind="decision",
    choices=("approve", "reject"),
)
KIND = DecisionKind()


def work(payload=None, **agent) -> TaskWork:
    return TaskWork(replace(AGENT, **agent), "Refund #41", "A customer asks for a refund after 40 days.", payload)


def reply(text: str, *, refused: bool = False) -> LLMReply:
    return LLMReply(text, Usage(10, 5, 15), refused=refused)


def test_the_request_asks_for_a_choice_among_the_agents_choices_as_structured_output():
    request = KIND.build_request(work())
    schema = json.loads(request.output_schema.schema_json)
    assert request.output_schema.name == "decision"
    assert schema["properties"]["choice"]["enum"] == ["approve", "reject"]
    assert schema["required"] == ["choice", "rationale", "confidence"] and schema["additionalProperties"] is False
    assert schema["properties"]["confidence"] | {"minimum": 0, "maximum": 1} == schema["properties"]["confidence"]
    Draft202012Validator.check_schema(schema)
    # The agent's JSON mode gives way to the structured output (one provider setting).
    assert request.options.response_format == "text"
    assert "- approve\n- reject" in request.messages[1].content and request.messages[0].content == AGENT.prompt


def test_a_tasks_own_options_win_over_its_agents_and_the_rest_of_its_payload_is_shown():
    request = KIND.build_request(work({"options": ["refund", "store credit", "decline"], "order": {"days": 40}}))
    schema = json.loads(request.output_schema.schema_json)
    assert schema["properties"]["choice"]["enum"] == ["refund", "store credit", "decline"]
    user = request.messages[1].content
    assert '"days": 40' in user and "- store credit" in user and "- approve" not in user


def test_a_valid_reply_is_the_choice_with_its_rationale_and_confidence():
    result = KIND.interpret(work(), reply('{"choice": "reject", "rationale": "past 30 days", "confidence": 0.82}'))
    assert result.data == {"choice": "reject", "rationale": "past 30 days", "confidence": 0.82}
    assert result.text == "reject (confidence 0.82): past 30 days"


@pytest.mark.parametrize(
    "text, problem",
    [
        ('{"choice": "maybe", "rationale": "r", "confidence": 0.5}', "choice: Input should be 'approve' or 'reject'"),
        ('{"choice": "approve", "rationale": "r", "confidence": 1.5}', "confidence: Input should be less than"),
        ('{"choice": "approve", "confidence": 0.5}', "rationale: Field required"),
        ('{"choice": "approve", "rationale": "r", "confidence": 0.5, "extra": 1}', "extra: Extra inputs"),
        ('{"choice": "appr', "input: Invalid JSON"),
    ],
)
def test_a_reply_that_is_not_a_decision_among_the_options_is_invalid_output_naming_the_problem(text, problem):
    with pytest.raises(InvalidOutputError, match="the reply is not a valid decision") as raised:
        KIND.interpret(work(), reply(text))
    assert problem in str(raised.value)


def test_a_refusal_fails_clearly_and_is_not_re_asked():
    with pytest.raises(PermanentError, match="the model refused: I cannot help with that") as raised:
        KIND.interpret(work(), reply("I cannot help with that", refused=True))
    assert not isinstance(raised.value, InvalidOutputError)  # the pipeline re-asks only InvalidOutputError


@pytest.mark.parametrize(
    "payload, problem",
    [
        (None, "a decision task needs options, or an agent with settings.choices"),
        ({"options": ["only"]}, "at least 2 distinct strings"),
        ({"options": ["a", "a"]}, "at least 2 distinct strings"),
        ({"options": "a,b"}, "a list of non-empty strings"),
        ({"options": ["a", 2]}, "a list of non-empty strings"),
        ({"options": ["a", " "]}, "a list of non-empty strings"),
    ],
)
def test_a_task_without_usable_options_cannot_run(payload, problem):
    no_choices = work(payload, choices=None)
    for check in (KIND.check_task, KIND.build_request):
        with pytest.raises(PermanentError, match=problem) as raised:
            check(no_choices)
        assert str(raised.value).startswith("payload.options: ")
