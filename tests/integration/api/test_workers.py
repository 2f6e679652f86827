"""The api kind with a real worker process, the bundled LLM server scripting the model's turns and the bundled
tool server recording the calls it receives, all over real HTTP: three turns and two tool calls, a refusal
off the allowlist, approvals (approve, reject, expiry), and the command line's view of the steps."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import update

from agent_service.clock import utcnow
from agent_service.database import session_scope
from agent_service.execution.maintenance import fail_expired_approvals
from agent_service.models import Agent, StepStatus, StepType, Task, TaskStatus, TaskStep
from agent_service.tasks import approve_task, reject_task
from tests.integration.api.conftest import SECRET, calls, step_rows, task_row, turns_asked
from tests.support import run_cli, wait_for_final, wait_until


@pytest.mark.usefixtures("api_worker")
def test_three_turns_and_two_tool_calls_complete_over_real_http(
    submit, api_settings, session_factory, llm, tool_server
):
    # Given a model that checks the weather, orders, then answers
    task_id, token = submit(
        [calls(("weather", {"city": "Oslo"})), calls(("order", {"item": "umbrella"})), {"content": "Packed."}]
    )
    # When a worker runs it
    task = wait_for_final(session_factory, [task_id])[task_id]
    # Then it completes with the last turn's text, the model asked once per turn
    assert (task.status, task.result) == (TaskStatus.COMPLETED, "Packed.")
    assert turns_asked(llm, token) == [0, 1, 2]
    # And its five steps are recorded in order, each turn with its usage, summed once into the task's
    rows = step_rows(session_factory, task_id)
    assert [(s.position, s.step_type, s.tool_name) for s in rows] == [
        (0, StepType.MODEL_TURN, None),
        (1, StepType.TOOL_CALL, "weather"),
        (2, StepType.MODEL_TURN, None),
        (3, StepType.TOOL_CALL, "order"),
        (4, StepType.MODEL_TURN, None),
    ]
    turns = [s for s in rows if s.step_type is StepType.MODEL_TURN]
    assert all(s.prompt_tokens and s.completion_tokens for s in turns)
    assert task.prompt_tokens == sum(s.prompt_tokens for s in turns)
    # And the tool server received exactly the two calls, the weather one with the secret, which no row holds
    received = tool_server.calls()
    assert [(c["method"], c["path"]) for c in received] == [("GET", "/weather"), ("POST", "/orders")]
    assert received[0]["headers"]["authorization"] == SECRET
    with session_scope(session_factory) as session:
        agent = session.get(Agent, task.agent_id)
        stored = json.dumps([agent.tools, agent.settings, task.result, task.error], default=str)
    stored += json.dumps([[s.content, s.arguments, s.tool_calls, s.idempotency_key] for s in rows])
    assert SECRET not in stored
    # And `python cli.py status` shows the steps, never the secret
    status = run_cli(api_settings, "status", task_id)
    assert status.returncode == 0, status.stderr
    assert "step 0" in status.stdout and "model turn gpt-4o-mini: succeeded" in status.stdout
    assert 'tool call weather: succeeded {"city": "Oslo"} -> HTTP 200' in status.stdout
    assert "tool call order: succeeded" in status.stdout and SECRET not in status.stdout
    # And approving a task that awaits no approval is refused clearly
    refused = run_cli(api_settings, "approve", task_id)
    assert refused.returncode == 2 and f"task {task_id} is not awaiting approval: it is completed" in refused.stdout


@pytest.mark.usefixtures("api_worker")
def test_a_redirect_off_the_allowlist_reaches_the_model_as_a_refusal(submit, session_factory):
    task_id, _ = submit([calls(("hop", {"city": "Oslo"})), {"content": "Could not."}])
    assert wait_for_final(session_factory, [task_id])[task_id].status == TaskStatus.COMPLETED
    hop = step_rows(session_factory, task_id)[1]
    assert (hop.status, hop.content) == (
        StepStatus.FAILED,
        "error: refused: a redirect to http://169.254.169.254:80 leaves the tool's origin, and the agent's allowed"
        " hosts do not name that host and port",
    )


def paused(session_factory, task_id: str) -> Task:
    wait_until(
        lambda: task_row(session_factory, task_id).status == TaskStatus.AWAITING_APPROVAL, what="pause", timeout=60
    )
    return task_row(session_factory, task_id)


@pytest.mark.usefixtures("api_worker")
def test_approval_pauses_holding_no_slot_then_the_approved_call_is_made(
    api_app, submit, session_factory, llm, tool_server
):
    # Given a model that pays (the tool needs a reviewer), then answers
    task_id, token = submit([calls(("pay", {"item": "tickets"})), {"content": "Paid."}])
    # Then the task waits for a reviewer: not running, no claim, its attempt given back, nothing paid yet
    task = paused(session_factory, task_id)
    assert (task.claimed_by, task.claimed_at, task.attempts) == (None, None, 0)
    assert tool_server.count(path="/orders") == 0
    # When a reviewer approves
    assert approve_task(task_id, "fine", app=api_app) == ["pay"]
    # Then the call is made once and the task completes, the turn that asked for it not asked again
    task = wait_for_final(session_factory, [task_id])[task_id]
    assert (task.status, task.result) == (TaskStatus.COMPLETED, "Paid.")
    assert tool_server.count(path="/orders") == 1 and turns_asked(llm, token) == [0, 1]
    pay = step_rows(session_factory, task_id)[1]
    assert (pay.status, pay.approval_note) == (StepStatus.SUCCEEDED, "fine")


@pytest.mark.usefixtures("api_worker")
def test_a_rejected_call_is_never_made_and_the_model_carries_on(api_app, submit, session_factory, tool_server):
    task_id, _ = submit([calls(("pay", {"item": "tickets"})), {"content": "Not paid."}])
    paused(session_factory, task_id)
    assert reject_task(task_id, "over budget", app=api_app) == ["pay"]
    task = wait_for_final(session_factory, [task_id])[task_id]
    assert (task.status, task.result) == (TaskStatus.COMPLETED, "Not paid.")
    assert tool_server.count(path="/orders") == 0
    pay = step_rows(session_factory, task_id)[1]
    assert (pay.status, pay.content) == (StepStatus.REJECTED, "rejected by a reviewer: over budget")


@pytest.mark.usefixtures("api_worker")
def test_an_expired_approval_is_failed_by_the_sweeper_with_the_reason(api_app, submit, session_factory, tool_server):
    task_id, _ = submit([calls(("pay", {"item": "tickets"})), {"content": "Paid."}])
    paused(session_factory, task_id)
    # Given the approval's time is up (the step's expiry moved to the past rather than waiting a day)
    with session_scope(session_factory) as session:
        session.execute(
            update(TaskStep)
            .where(TaskStep.task_id == uuid.UUID(task_id), TaskStep.status == StepStatus.AWAITING_APPROVAL)
            .values(approval_expires_at=utcnow() - timedelta(seconds=1))
        )
    # When the sweeper runs, Then the task fails with the reason, and the call is never made
    assert (
        fail_expired_approvals(
            app=api_app, session_factory=api_app.services.session_factory, settings=api_app.services.settings
        )
        >= 1
    )
    task = task_row(session_factory, task_id)
    assert task.status == TaskStatus.FAILED and task.error.startswith("approval for tool pay expired after")
    assert step_rows(session_factory, task_id)[1].status == StepStatus.EXPIRED
    assert tool_server.count(path="/orders") == 0


@pytest.mark.parametrize(
    "args, message",
    [
        (("approve", "not-a-uuid"), "task id must be a UUID"),
        (("reject", "7b0c2f1e-0000-4000-8000-000000000000", "--note", "no"), "no task 7b0c2f1e"),
    ],
)
def test_a_decision_on_a_bad_task_id_exits_2_with_a_clear_error(api_settings, args, message):
    result = run_cli(api_settings, *args)
    assert result.returncode == 2 and message in result.stdout
