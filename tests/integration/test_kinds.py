"""The decision and data kinds on real PostgreSQL and the bundled LLM server, through the real client:
submitted with their payloads, asked for structured output, their JSON results stored as JSON, output that
does not validate re-asked once and then failed with the reason, every call charged."""

from __future__ import annotations

import json
import uuid

import pytest
from jsonschema import Draft202012Validator

from agent_service.database import session_scope
from agent_service.errors import TaskValidationError
from agent_service.execution.context import RunContext
from agent_service.execution.outcomes import Outcome
from agent_service.execution.pipeline import execute_agent_task
from agent_service.llm.messages import LLMReply, Usage
from agent_service.models import Agent, Task, TaskAttempt, TaskStatus
from agent_service.submission.agents import create_agent
from agent_service.submission.submit import create_agent_tasks
from tests.support import LLMControl

OPTIONS = ["approve", "escalate", "reject"]
ORDER_SCHEMA = {
    "type": "object",
    "properties": {
        "customer": {"type": "string"},
        "items": {"type": "integer", "minimum": 0},
        "lines": {"type": "array", "items": {"$ref": "#/$defs/line"}},
    },
    "$defs": {"line": {"type": "object", "properties": {"sku": {"type": "string"}}, "required": ["sku"]}},
    "required": ["customer", "items"],
}


@pytest.fixture(autouse=True)
def clean_server(llm: LLMControl) -> None:
    llm.http.post("/control/reset")


def new_agent(session_factory, **definition) -> Agent:
    """An agent created as callers create one (validated, kind checked)."""
    data = {"name": f"kind-{uuid.uuid4().hex[:8]}", "prompt": "You are careful.", "model": "gpt-4o-mini"}
    with session_scope(session_factory) as session:
        return create_agent(session, {**data, "temperature": 0.0, **definition})


def submit(idle_app, agent: Agent, title: str, **fields) -> uuid.UUID:
    """A task submitted as callers submit one, on a broker no worker reads (the test runs it)."""
    item = {"title": title, "agent_id": str(agent.id), "user_id": "u-kinds", **fields}
    return uuid.UUID(create_agent_tasks([item], app=idle_app, services=idle_app.services)[0])


def run(task_id, *, settings, session_factory, llm) -> tuple[Outcome, Task, list[TaskAttempt]]:
    outcome = execute_agent_task(task_id, RunContext(session_factory=session_factory, settings=settings, llm=llm))
    with session_scope(session_factory) as session:
        task = session.get(Task, task_id)
        attempts = list(task.attempt_history)
        session.expunge_all()
    return outcome.status, task, attempts


def unique(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:8]}"


def test_a_decision_task_completes_with_one_of_its_options_stored_as_json(
    settings, session_factory, idle_app, runner, llm
):
    # Given a decision agent without choices, and a task that gives its options and some context
    agent = new_agent(session_factory, kind="decision")
    title = unique("refund-decision")
    task_id = submit(idle_app, agent, title, payload={"options": OPTIONS, "order": {"days": 40}})
    # When it runs
    status, task, _ = run(task_id, settings=settings, session_factory=session_factory, llm=runner)
    # Then the structured reply (the server answers the schema it was sent: the enum's first value) is the result
    assert status is Outcome.COMPLETED and task.status is TaskStatus.COMPLETED
    assert task.result_data["choice"] == "approve" and task.result_data["confidence"] == 1.0
    assert task.result_data["rationale"].startswith("Offline answer to:")
    assert task.result == f"approve (confidence 1.00): {task.result_data['rationale']}"
    [sent] = llm.requests(title)
    assert "- escalate" in sent["text"] and '"days": 40' in sent["text"]


def test_a_decision_agents_own_choices_serve_a_task_that_gives_none(settings, session_factory, idle_app, runner):
    agent = new_agent(session_factory, kind="decision", settings={"choices": ["ship", "hold"]})
    task_id = submit(idle_app, agent, unique("ship-or-hold"))
    status, task, _ = run(task_id, settings=settings, session_factory=session_factory, llm=runner)
    assert status is Outcome.COMPLETED and task.result_data["choice"] == "ship"


def test_a_decision_reply_that_does_not_validate_is_re_asked_once_with_the_error(
    settings, session_factory, idle_app, runner, llm: LLMControl
):
    # Given a model whose first reply to this task is not the JSON asked for
    agent = new_agent(session_factory, kind="decision", settings={"choices": OPTIONS})
    title = unique("decision-reask")
    llm.add_fault(fault="invalid_json", match=title, times=1)
    # When it runs once
    status, task, _ = run(
        submit(idle_app, agent, title), settings=settings, session_factory=session_factory, llm=runner
    )
    # Then the second call carried the first reply and pydantic's account of it, and its answer is the result
    sent = llm.requests(title)
    assert status is Outcome.COMPLETED and task.attempts == 1 and len(sent) == 2
    assert "cannot be used: the reply is not a valid decision: input: Invalid JSON" in sent[1]["text"]
    assert task.result_data["choice"] == "approve"


def test_a_decision_still_invalid_after_the_re_ask_fails_with_the_error_and_both_calls_charged(
    settings, session_factory, idle_app, runner, llm: LLMControl
):
    agent = new_agent(session_factory, kind="decision", settings={"choices": OPTIONS})
    title = unique("decision-fails")
    llm.add_fault(fault="invalid_json", match=title, times=2)
    status, task, attempts = run(
        submit(idle_app, agent, title), settings=settings, session_factory=session_factory, llm=runner
    )
    assert status is Outcome.FAILED and task.status is TaskStatus.FAILED and len(llm.requests(title)) == 2
    assert task.error.startswith("the reply is not a valid decision: input: Invalid JSON")
    assert task.result_data is None
    [failed] = attempts
    # Both calls are in the books: the second one's prompt holds the first one's, and more.
    sent = llm.requests(title)
    assert failed.prompt_tokens == task.prompt_tokens > 2 * len(sent[0]["text"].split()) > 0
    assert task.cost_usd is not None and task.cost_usd > 0


def test_a_data_task_stores_json_valid_against_its_agents_schema(settings, session_factory, idle_app, runner, llm):
    # Given a data agent with a schema, and a task carrying a JSON payload
    agent = new_agent(session_factory, kind="data", output_schema=ORDER_SCHEMA)
    title = unique("order-extract")
    task_id = submit(idle_app, agent, title, payload={"email": "2 × A-1 for Ada"})
    # When it runs
    status, task, _ = run(task_id, settings=settings, session_factory=session_factory, llm=runner)
    # Then the result is JSON valid against the schema, stored as JSON, with its serialization as the text
    assert status is Outcome.COMPLETED
    assert list(Draft202012Validator(ORDER_SCHEMA).iter_errors(task.result_data)) == []
    assert task.result_data["items"] == 1 and json.loads(task.result) == task.result_data
    [sent] = llm.requests(title)
    assert '"email": "2 × A-1 for Ada"' in sent["text"]


def test_a_data_reply_that_is_not_json_is_re_asked_and_then_fails(
    settings, session_factory, idle_app, runner, llm: LLMControl
):
    agent = new_agent(session_factory, kind="data", output_schema=ORDER_SCHEMA)
    title = unique("data-not-json")
    llm.add_fault(fault="invalid_json", match=title, times=2)
    status, task, _ = run(
        submit(idle_app, agent, title), settings=settings, session_factory=session_factory, llm=runner
    )
    sent = llm.requests(title)
    assert status is Outcome.FAILED and len(sent) == 2 and task.attempts == 1
    assert "cannot be used: the reply is not valid JSON" in sent[1]["text"]
    assert task.error.startswith("the reply is not valid JSON") and task.prompt_tokens > 0


def test_a_data_reply_that_breaks_the_schema_is_re_asked_naming_the_path_then_fails_with_both_calls_charged(
    settings, session_factory, idle_app, llm_with
):
    # Given a model that answers JSON which breaks the schema, twice
    agent = new_agent(session_factory, kind="data", output_schema=ORDER_SCHEMA)
    asked: list[str] = []

    async def run_llm(request, *, settings):
        asked.append(request.messages[-1].content)
        return LLMReply('{"customer": "Ada", "items": -2}', Usage(100, 10, 110))

    # When the task runs
    status, task, [failed] = run(
        submit(idle_app, agent, unique("data-bad")),
        settings=settings,
        session_factory=session_factory,
        llm=llm_with(run_llm),
    )
    # Then the model was told where and why, once, and the task failed with that, both calls paid
    assert status is Outcome.FAILED and len(asked) == 2
    assert "$.items: -2 is less than the minimum of 0" in asked[1]
    assert task.error == "the reply does not match the agent's output_schema: $.items: -2 is less than the minimum of 0"
    assert task.prompt_tokens == failed.prompt_tokens == 200 and task.completion_tokens == 20


def test_a_task_may_run_as_another_kind_than_its_agents(settings, session_factory, idle_app, runner):
    # A text agent that carries a schema runs a task that asks for the data kind
    agent = new_agent(session_factory, output_schema=ORDER_SCHEMA)
    task_id = submit(idle_app, agent, unique("override"), kind="data", payload={"email": "A-1"})
    status, task, _ = run(task_id, settings=settings, session_factory=session_factory, llm=runner)
    assert status is Outcome.COMPLETED and task.kind == "data" and set(task.result_data) == {"customer", "items"}


@pytest.mark.parametrize(
    "definition, fields, problem",
    [
        ({"kind": "decision"}, {}, "payload.options: a decision task needs options, or an agent with settings.choices"),
        ({"kind": "decision"}, {"payload": {"options": ["yes"]}}, "payload.options: must be at least 2 distinct"),
        ({}, {"kind": "decision", "payload": {"options": ["a", "a"]}}, "payload.options: must be at least 2 distinct"),
        ({}, {"kind": "data"}, "kind: a data task needs an agent with an output_schema"),
        ({}, {"payload": {"blob": "x" * 70_000}}, "payload: Value error, is 70012 bytes as JSON; the limit is 65536"),
    ],
)
def test_a_task_its_kind_cannot_run_is_refused_at_submission_naming_the_field(
    session_factory, idle_app, idle_redis, definition, fields, problem
):
    agent = new_agent(session_factory, **definition)
    with pytest.raises(TaskValidationError) as raised:
        submit(idle_app, agent, unique("refused"), **fields)
    assert str(raised.value).startswith(f"invalid task input: {problem}")
    with session_scope(session_factory) as session:
        assert session.query(Task).filter(Task.agent_id == agent.id).count() == 0
    assert idle_redis.llen("agent_tasks") == 0


def test_an_agent_is_stored_with_its_kind_schema_and_choices(session_factory):
    agent = new_agent(session_factory, kind="data", output_schema=ORDER_SCHEMA, settings={"choices": ["a", "b"]})
    with session_scope(session_factory) as session:
        stored = session.get(Agent, agent.id)
        assert (stored.kind, stored.output_schema, stored.tools) == ("data", ORDER_SCHEMA, None)
        assert stored.settings == {"choices": ["a", "b"]}


def test_a_refused_decision_fails_at_once_with_the_refusal_and_is_charged(
    settings, session_factory, idle_app, runner, llm: LLMControl
):
    # Given a model that refuses this task's structured output
    agent = new_agent(session_factory, kind="decision", settings={"choices": OPTIONS})
    directive = llm.add_script(unique("refuse"), [{"refusal": "I can't help with that"}])
    task_id = submit(idle_app, agent, unique("refused-decision"), description=f"decide {directive}")
    # When it runs
    status, task, _ = run(task_id, settings=settings, session_factory=session_factory, llm=runner)
    # Then it fails with the refusal, asked once (with the decision's schema) and paid for
    [sent] = llm.requests(directive)
    assert status is Outcome.FAILED and task.error == "the model refused: I can't help with that"
    assert sent["response_format"]["json_schema"]["name"] == "decision" and task.prompt_tokens > 0


def test_a_data_reply_against_the_schema_is_re_asked_and_the_corrected_one_is_the_result(
    settings, session_factory, idle_app, runner, llm: LLMControl
):
    # Given a model whose first JSON breaks the schema and whose second one fits it
    agent = new_agent(session_factory, kind="data", output_schema=ORDER_SCHEMA)
    replies = [{"json": {"customer": "Ada", "items": "two"}}, {"json": {"customer": "Ada", "items": 2}}]
    directive = llm.add_script(unique("fix-it"), replies)
    task_id = submit(idle_app, agent, unique("data-fixed"), description=f"extract {directive}")
    # When it runs
    status, task, _ = run(task_id, settings=settings, session_factory=session_factory, llm=runner)
    # Then the second call named the path and the problem, and its JSON is the result
    first, second = llm.requests(directive)
    assert first["response_format"]["json_schema"]["name"] == "data"
    assert "$.items: 'two' is not of type 'integer'" in second["text"]
    assert status is Outcome.COMPLETED and task.result_data == {"customer": "Ada", "items": 2}
