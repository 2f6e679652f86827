"""A kind added outside `execution/` (tests/retrieval_kind.py), registered at test time, on real PostgreSQL:
created and submitted as callers do, run by the real pipeline (a fake LLM and tool caller), its search and
its answer recorded as steps, its task completed with the answer."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import select

from agent_service.database import session_scope
from agent_service.execution.context import RunContext
from agent_service.execution.outcomes import Outcome
from agent_service.execution.pipeline import execute_agent_task
from agent_service.kinds import KINDS, register
from agent_service.models import StepType, Task, TaskStep
from agent_service.submission.agents import create_agent
from agent_service.submission.submit import create_agent_tasks
from tests.retrieval_kind import RetrievalKind
from tests.unit.test_multi_turn_kind import FakeLLM, FakeTools


@pytest.fixture
def retrieval() -> Iterator[RetrievalKind]:
    kind = register(RetrievalKind())
    yield kind
    del KINDS[kind.name]


def test_a_registered_multi_turn_kind_runs_through_the_pipeline_its_turns_recorded_as_steps(
    retrieval, settings, session_factory, idle_app
):
    # Given an agent of the retrieval kind, created and given a task as callers do
    with session_scope(session_factory) as session:
        data = {
            "name": f"kb-{uuid.uuid4().hex[:8]}",
            "prompt": "Answer from the knowledge base.",
            "model": "gpt-4o-mini",
        }
        agent = create_agent(session, {**data, "kind": "retrieval", "temperature": 0.0})
    title = f"refund-delay-{uuid.uuid4().hex[:8]}"
    item = {"title": title, "agent_id": str(agent.id), "user_id": "u-kb"}
    task_id = uuid.UUID(create_agent_tasks([item], app=idle_app, services=idle_app.services)[0])
    llm, tools = FakeLLM(), FakeTools()
    # When the pipeline runs it
    context = RunContext(session_factory=session_factory, settings=settings, llm=llm, tool_caller=tools)
    outcome = execute_agent_task(task_id, context)
    # Then it searched, the model was asked with what was found, and the task completed with the model's answer
    assert outcome.status is Outcome.COMPLETED
    assert tools.calls == [("search", {"query": title})]
    assert "refunds: 5 working days" in llm.requests[0].messages[-1].content
    with session_scope(session_factory) as session:
        steps = session.scalars(
            select(TaskStep.step_type).where(TaskStep.task_id == task_id).order_by(TaskStep.position)
        )
        assert list(steps) == [StepType.TOOL_CALL, StepType.MODEL_TURN]
        assert session.get(Task, task_id).result == "Refunds take 5 days."
