"""The api kind's runs without services: the first request, a run rebuilt from its recorded steps (the
durable step log of `execution.steps` replaying them into the kind's run), and what comes next (ask the
model, call tools, pause, end) including the step limit and the time budget."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from agent_service.config import Settings
from agent_service.errors import PermanentError
from agent_service.execution.plans import Paused, Replied, RunEnded
from agent_service.execution.steps import StepLog
from agent_service.kinds.api import ApiKind
from agent_service.kinds.base import AskModel, TaskWork
from agent_service.llm.messages import LLMReply, Message, ModelOptions, ToolCall, Usage
from agent_service.models import StepStatus, StepType
from agent_service.store.agents import AgentSpec
from agent_service.store.lifecycle import Charge, Claim
from agent_service.store.steps import RecordedStep

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
TOOLS = (
    {"name": "weather", "description": "weather", "parameters": SCHEMA, "method": "GET", "url": "https://w.example/"},
    {
        "name": "pay",
        "description": "pays",
        "parameters": SCHEMA,
        "method": "POST",
        "url": "https://w.example/pay",
        "idempotent": False,
        "requires_approval": True,
    },
)
AGENT = AgentSpec(
    uuid.uuid4(),
    "You plan trips.",
    "gpt-4o-mini",
    0.0,
    100,
    ModelOptions(),
    kind="api",
    tools=TOOLS,
    allowed_hosts=("w.example",),
    max_steps=3,
    time_budget_seconds=60,
)
WORK = TaskWork(AGENT, "Trip", "to Oslo", payload={"days": 2})
CLAIM = Claim(uuid.uuid4(), 1, "Trip", "to Oslo", AGENT, NOW)
SETTINGS = Settings(_env_file=None, approval_timeout_seconds=600)


def run_of(*steps: RecordedStep) -> StepLog:
    return StepLog(CLAIM, ApiKind().start(WORK), steps, agent=AGENT, settings=SETTINGS, now=NOW)


def turn(position: int, *calls: ToolCall, text: str = "", at: datetime = NOW) -> RecordedStep:
    return RecordedStep(
        position,
        StepType.MODEL_TURN,
        StepStatus.SUCCEEDED,
        at,
        content=text,
        tool_calls=[call._asdict() for call in calls],
        model="gpt-4o-mini",
    )


def result(
    position: int, content: str, status: StepStatus = StepStatus.SUCCEEDED, at: datetime = NOW, **fields
) -> RecordedStep:
    return RecordedStep(position, StepType.TOOL_CALL, status, at, content=content, **fields)


WEATHER = ToolCall("c1", "weather", '{"city": "Oslo"}')


def test_the_first_request_offers_the_agents_tools_and_carries_the_payload():
    request = ApiKind().build_request(WORK)
    assert [tool.name for tool in request.tools] == ["weather", "pay"]
    assert json.loads(request.tools[0].parameters_json) == SCHEMA
    assert request.messages[1].content.endswith('Input (JSON):\n{\n  "days": 2\n}')


def test_a_run_is_rebuilt_from_its_steps_and_asks_its_next_turn():
    run = run_of(turn(0, WEATHER), result(1, "HTTP 200\nsunny"))
    [plan_next] = [run.step(None, now=NOW).next]
    assert isinstance(plan_next, AskModel)
    assert plan_next.request.messages[2:] == (
        Message("assistant", "", (WEATHER,)),
        Message("tool", "HTTP 200\nsunny", tool_call_id="c1"),
    )
    assert (run.position, run.turns) == (2, 1)


def test_a_run_whose_final_turn_was_recorded_ends_with_its_text_without_asking():
    plan = run_of(turn(0, WEATHER), result(1, "HTTP 200"), turn(2, text="Go.")).step(None, now=NOW)
    assert isinstance(plan.next, RunEnded) and plan.next.result.text == "Go." and plan.writes == []


def test_a_turn_that_arrives_is_written_with_its_cost_and_its_calls_are_to_be_started():
    run = run_of()
    charge = Charge("gpt-4o-mini", Usage(10, 2, 12), 0.001)
    reply = LLMReply("", Usage(10, 2, 12), "tool_calls", tool_calls=(WEATHER,))
    plan = run.step(Replied(reply, "gpt-4o-mini", charge), now=NOW)
    [write] = plan.writes
    assert (write.position, write.values["step_type"], write.values["cost_usd"]) == (0, StepType.MODEL_TURN, 0.001)
    assert plan.charge is charge and [call.call for call in plan.start] == [WEATHER]


def test_a_call_that_needs_approval_pauses_the_run_with_an_expiry():
    pay = ToolCall("c2", "pay", '{"city": "Oslo"}')
    plan = run_of(turn(0, pay)).step(None, now=NOW)
    assert isinstance(plan.next, Paused) and plan.pause and "pay" in plan.pause
    [write] = plan.writes
    assert write.values["status"] is StepStatus.AWAITING_APPROVAL
    assert write.values["approval_expires_at"] == NOW + timedelta(seconds=600)


def test_the_step_limit_ends_the_run_before_a_turn_too_many():
    steps = [turn(0, WEATHER), result(1, "ok"), turn(2, WEATHER), result(3, "ok"), turn(4, WEATHER), result(5, "ok")]
    plan = run_of(*steps).step(None, now=NOW)
    assert isinstance(plan.next, RunEnded) and isinstance(plan.next.error, PermanentError)
    assert str(plan.next.error) == "step limit reached: 3 model turns without a final answer (max_steps 3)"


@pytest.mark.parametrize(
    "decided_after, over", [(None, True), (timedelta(seconds=100), False)], ids=["spent", "reviewer-time-excluded"]
)
def test_the_time_budget_runs_from_the_first_step_less_the_time_spent_waiting_for_a_reviewer(decided_after, over):
    # Given a first step 90 s ago (the budget is 60 s), and maybe a reviewer who took 100 s of it
    start = NOW - timedelta(seconds=90)
    pay = ToolCall("c2", "pay", '{"city": "Oslo"}')
    decided = {} if decided_after is None else {"decided_at": start + decided_after}
    steps = [turn(0, pay, at=start), result(1, "rejected by a reviewer", StepStatus.REJECTED, start, **decided)]
    plan = run_of(*steps).step(None, now=NOW)
    assert isinstance(plan.next, RunEnded if over else AskModel)


def test_calls_without_an_id_or_with_one_given_twice_get_ids_of_their_own():
    # Given a provider that gave one id twice and another call none
    calls = (WEATHER, WEATHER._replace(arguments='{"city": "Rome"}'), ToolCall("", "weather", ""))
    reply = LLMReply("", Usage(1, 1, 2), "tool_calls", tool_calls=calls)
    plan = run_of().step(Replied(reply, "gpt-4o-mini", None), now=NOW)
    # Then each call has an id of its own, which the model's tool messages and the idempotency keys use
    assert [call["id"] for call in plan.writes[0].values["tool_calls"]] == ["c1", "call_0_1", "call_0_2"]
    assert [call.call.id for call in plan.start] == ["c1", "call_0_1"]  # no arguments: the city is missing
    assert "invalid arguments" in (plan.writes[1].values["content"] or "")
