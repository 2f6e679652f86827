"""The decision and data kinds in a real `celery worker` process (its LLM process, the real client, the
bundled LLM server over HTTP), submitted through the Python entry point with their payloads."""

from __future__ import annotations

import uuid

import pytest
from jsonschema import Draft202012Validator

from agent_service.database import session_scope
from agent_service.models import TaskStatus
from agent_service.submission.agents import create_agent
from agent_service.tasks import create_agent_task
from tests.support import wait_for_final

pytestmark = [pytest.mark.worker, pytest.mark.usefixtures("worker")]

SCHEMA = {
    "type": "object",
    "properties": {"sentiment": {"enum": ["positive", "neutral", "negative"]}, "score": {"type": "number"}},
    "required": ["sentiment", "score"],
}


def agent_of(session_factory, **definition) -> str:
    data = {"name": f"worker-{uuid.uuid4().hex[:8]}", "prompt": "You are careful.", "model": "gpt-4o-mini"}
    with session_scope(session_factory) as session:
        return str(create_agent(session, {**data, **definition}).id)


def test_a_worker_runs_a_decision_task_to_one_of_its_options(app, session_factory, llm):
    agent_id = agent_of(session_factory, kind="decision")
    title = f"worker-decision-{uuid.uuid4().hex[:8]}"
    payload = {"options": ["merge", "request changes"], "diff_lines": 42}
    task_id = create_agent_task({"title": title, "agent_id": agent_id, "user_id": "u", "payload": payload}, app=app)
    task = wait_for_final(session_factory, [task_id])[task_id]
    assert task.status is TaskStatus.COMPLETED and task.result_data["choice"] == "merge"
    assert task.result.startswith("merge (confidence 1.00): ") and task.prompt_tokens > 0
    assert len(llm.requests(title)) == 1


def test_a_worker_runs_a_data_task_to_json_valid_against_its_agents_schema(app, session_factory, llm):
    agent_id = agent_of(session_factory, kind="data", output_schema=SCHEMA)
    title = f"worker-data-{uuid.uuid4().hex[:8]}"
    payload = {"review": "Fast delivery, the box was dented."}
    task_id = create_agent_task({"title": title, "agent_id": agent_id, "user_id": "u", "payload": payload}, app=app)
    task = wait_for_final(session_factory, [task_id])[task_id]
    assert task.status is TaskStatus.COMPLETED
    assert task.result_data == {"sentiment": "positive", "score": 1.0}
    assert list(Draft202012Validator(SCHEMA).iter_errors(task.result_data)) == []
    [sent] = llm.requests(title)
    assert "the box was dented" in sent["text"]
