"""A multi-turn kind added as files outside `execution/` (tests/retrieval_kind.py) runs end to end through
the real scheduler, step log and calls, with a fake LLM runner, a fake tool caller and the steps kept in
memory: each turn is recorded before the next starts, and a run cut short resumes after its last step."""

from __future__ import annotations

import uuid
from collections import defaultdict
from concurrent.futures import Future
from dataclasses import fields
from datetime import UTC, datetime

from agent_service.admission.base import Admission
from agent_service.config import Settings
from agent_service.execution.calls import Calls
from agent_service.execution.durable import DurableRuns
from agent_service.execution.plans import Plan
from agent_service.execution.scheduling import Scheduler
from agent_service.execution.settling import Answer
from agent_service.llm.messages import LLMReply, LLMRequest, ModelOptions, Usage
from agent_service.llm.prices import PriceBook
from agent_service.models import StepStatus, StepType
from agent_service.store.agents import AgentSpec
from agent_service.store.lifecycle import Claim
from agent_service.store.steps import RecordedStep
from agent_service.tools.outcomes import ToolOutcome
from tests.retrieval_kind import RetrievalKind

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
SETTINGS = Settings(_env_file=None)
AGENT = AgentSpec(uuid.uuid4(), "You answer from the knowledge base.", "gpt-4o-mini", 0.0, 100, ModelOptions())
KINDS = {"retrieval": RetrievalKind()}
RECORDED = {field.name for field in fields(RecordedStep)}


class FakeLLM:
    """Answers every request at once, saying how many messages it was sent."""

    def __init__(self) -> None:
        self.requests: list[LLMRequest] = []

    def submit(self, requests: list[LLMRequest]) -> list[Future[LLMReply]]:
        self.requests += requests
        return [_done(LLMReply("Refunds take 5 days.", Usage(20, 5, 25))) for _ in requests]


class FakeTools:
    """Answers every tool call at once with the knowledge base's one fact."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict]] = []

    def submit(self, tool, arguments, *, allowed_hosts, idempotency_key) -> Future[ToolOutcome]:
        self.calls.append((tool.name, arguments))
        return _done(ToolOutcome(True, 200, "refunds: 5 working days", None, False, 3))


class StepsInMemory(DurableRuns):
    """The step log's two database operations, on a dict: the steps outlive a scheduler as rows would."""

    def __init__(self, caller: FakeTools, steps: dict[uuid.UUID, dict[int, dict]]) -> None:
        super().__init__(session_factory=None, settings=SETTINGS, caller=caller, clock=lambda: NOW)
        self.steps = steps

    def load(self, task_ids):
        return {
            task_id: [RecordedStep(**row) for _, row in sorted(self.steps[task_id].items())] for task_id in task_ids
        }

    def record(self, plans: list[tuple[Claim, Plan]], *, now):
        for claim, plan in plans:
            for write in plan.writes:
                row = self.steps[claim.task_id].setdefault(
                    write.position, {"position": write.position, "created_at": now}
                )
                row.update((key, value) for key, value in write.values.items() if key in RECORDED)
        return [True] * len(plans)


def _done(value) -> Future:
    future: Future = Future()
    future.set_result(value)
    return future


def run_once(claim: Claim, steps: dict, llm: FakeLLM, tools: FakeTools) -> list:
    calls = Calls(settings=SETTINGS, llm=llm, admission=Admission(), replies=None, running=None, live=None)
    scheduler = Scheduler(
        settings=SETTINGS,
        calls=calls,
        runs=StepsInMemory(tools, steps),
        prices=PriceBook(SETTINGS),
        replies=None,
        kinds=KINDS,
    )
    return [how for group in scheduler.settlements([claim]) for _, how in group]


def claim(attempt: int = 1) -> Claim:
    return Claim(TASK_ID, attempt, "refund delay", "How long do refunds take?", AGENT, NOW, kind="retrieval")


TASK_ID = uuid.uuid4()


def test_a_kind_from_outside_execution_searches_then_answers_each_turn_a_step():
    # Given a retrieval task
    steps: dict = defaultdict(dict)
    llm, tools = FakeLLM(), FakeTools()
    # When it runs
    [how] = run_once(claim(), steps, llm, tools)
    # Then it searched with its title, the model was asked with what was found, and its answer is the result
    assert tools.calls == [("search", {"query": "refund delay"})]
    assert "What the search found:\nHTTP 200\nrefunds: 5 working days" in llm.requests[0].messages[-1].content
    assert isinstance(how, Answer) and how.result.text == "Refunds take 5 days."
    # And both turns are steps, in order
    recorded = [(row["step_type"], row["status"]) for _, row in sorted(steps[TASK_ID].items())]
    assert recorded == [(StepType.TOOL_CALL, StepStatus.SUCCEEDED), (StepType.MODEL_TURN, StepStatus.SUCCEEDED)]


def test_a_run_cut_short_after_its_search_resumes_without_searching_again():
    # Given a run whose search was recorded before its worker was lost
    steps: dict = defaultdict(dict)
    steps[TASK_ID][0] = {
        "position": 0,
        "created_at": NOW,
        "step_type": StepType.TOOL_CALL,
        "status": StepStatus.SUCCEEDED,
        "content": "HTTP 200\nrefunds: 10 days (recorded)",
        "tool_call_id": "search-1",
        "tool_name": "search",
    }
    llm, tools = FakeLLM(), FakeTools()
    # When its next attempt runs
    [how] = run_once(claim(attempt=2), steps, llm, tools)
    # Then the search is not made again: the model reads the recorded result
    assert tools.calls == []
    assert "refunds: 10 days (recorded)" in llm.requests[0].messages[-1].content
    assert isinstance(how, Answer) and sorted(steps[TASK_ID]) == [0, 1]
