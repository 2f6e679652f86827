"""Layer 1 of the api kind: multi-step runs on real PostgreSQL (inside a rolled-back transaction), the model a
scripted stand-in on an in-process runner, the tools real HTTP calls to a small recording server on loopback.
Each model turn and tool call is a step; a run resumes after its last recorded step; a tool that needs
approval pauses the task. (test_api_workers runs the same over the bundled servers with real workers.)"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest
import redis
from pydantic import SecretStr
from sqlalchemy import update

from agent_service.admission.base import Candidate
from agent_service.clock import utcnow
from agent_service.errors import ApprovalError, RetryableError
from agent_service.execution.context import RunContext
from agent_service.execution.pipeline import execute_agent_tasks
from agent_service.execution.replies import Arrived, ReplyStore
from agent_service.execution.tool_calls import ToolCaller
from agent_service.kinds.api import ApiKind, check_tools
from agent_service.kinds.base import TaskWork
from agent_service.live.events import EventKind, decode, follower_key, stream_key
from agent_service.live.publisher import LivePublisher
from agent_service.llm.messages import LLMReply, ToolCall, Usage
from agent_service.models import Agent, StepStatus, StepType, Task, TaskStatus, TaskStep
from agent_service.store import lifecycle, steps
from agent_service.store.agents import agent_spec
from agent_service.store.lifecycle import Charge
from tests.integration.conftest import IDLE_REDIS

SECRET = "s3cr3t-weather-token"
USAGE = Usage(11, 4, 15)


class ToolCalls:
    """A loopback HTTP API for tools that records each call it receives (method, path, headers, body)."""

    def __init__(self) -> None:
        self.received: list[dict] = []
        handler = self._handler()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def to(self, path: str) -> list[dict]:
        return [call for call in self.received if call["path"].split("?")[0] == path]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        calls = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                self._answer()

            def do_POST(self) -> None:
                self._answer()

            def _answer(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
                path = self.path.split("?")[0]
                headers = {name.lower(): value for name, value in self.headers.items()}
                calls.received.append({"method": self.command, "path": self.path, "headers": headers, "body": body})
                if path == "/slow":
                    time.sleep(1.0)
                if path == "/redirect":
                    self.send_response(302)
                    self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                status = 500 if path == "/broken" else 201 if self.command == "POST" else 200
                reply = json.dumps({"path": path, "ok": status < 300, "n": len(calls.received)}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

        return Handler


@pytest.fixture(scope="module")
def tool_api() -> Iterator[ToolCalls]:
    api = ToolCalls()
    yield api
    api.server.shutdown()


@pytest.fixture
def tool_calls(tool_api: ToolCalls) -> ToolCalls:
    tool_api.received.clear()
    return tool_api


@pytest.fixture
def api_settings(settings):
    """Tools may reach loopback here (the recording server); the weather tool's secret is configured."""
    return settings.model_copy(
        update={
            "tool_allow_private_addresses": True,
            "tool_secrets": {"WEATHER_TOKEN": SecretStr(SECRET)},
            "approval_timeout_seconds": 3600.0,
        }
    )


@pytest.fixture
def caller(api_settings) -> Iterator[ToolCaller]:
    caller = ToolCaller(api_settings)
    yield caller
    caller.close()


def tools(base: str) -> list[dict]:
    city = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    order = {"type": "object", "properties": {"item": {"type": "string"}}, "required": ["item"]}
    return [
        {
            "name": "weather",
            "description": "the weather in a city",
            "parameters": city,
            "method": "GET",
            "url": f"{base}/weather",
            "headers": {"Authorization": {"secret": "WEATHER_TOKEN"}},
        },
        {
            "name": "order",
            "description": "place an order",
            "parameters": order,
            "method": "POST",
            "url": f"{base}/orders",
            "idempotent": False,
        },
        {"name": "broken", "description": "always fails", "parameters": city, "method": "GET", "url": f"{base}/broken"},
        {
            "name": "slow",
            "description": "answers after a second",
            "parameters": city,
            "method": "GET",
            "url": f"{base}/slow",
            "timeout_seconds": 0.3,
        },
        {"name": "hop", "description": "redirects", "parameters": city, "method": "GET", "url": f"{base}/redirect"},
        {
            "name": "pay",
            "description": "pays, once a person agrees",
            "parameters": order,
            "method": "POST",
            "url": f"{base}/pay",
            "idempotent": False,
            "requires_approval": True,
        },
    ]


@pytest.fixture
def api_agent(db_session, tool_calls) -> Agent:
    agent = Agent(
        name=f"api-{uuid.uuid4().hex[:6]}",
        prompt="You use tools.",
        model="gpt-4o-mini",
        temperature=0.0,
        max_tokens=50,
        kind="api",
        tools=tools(tool_calls.url),
        settings={"allowed_hosts": ["127.0.0.1"], "max_steps": 4},
    )
    db_session.add(agent)
    db_session.flush()
    return agent


@pytest.fixture
def api_task(db_session, api_agent) -> Task:
    task = Task(
        id=uuid.uuid4(),
        title="Plan the trip",
        description="check the weather, then order",
        agent_id=api_agent.id,
        user_id="u-api",
        status=TaskStatus.QUEUED,
        attempts=0,
        payload={"city": "Oslo"},
    )
    db_session.add(task)
    db_session.flush()
    return task


class Script:
    """The model as a script: reply N answers a request that holds N assistant messages already; each request
    is kept."""

    def __init__(self, *replies: list[tuple[str, dict]] | str) -> None:
        self.replies = replies
        self.requests: list = []

    async def __call__(self, request, *, settings) -> LLMReply:
        self.requests.append(request)
        turn = sum(message.role == "assistant" for message in request.messages)
        reply = self.replies[min(turn, len(self.replies) - 1)]
        if isinstance(reply, str):
            return LLMReply(reply, USAGE, "stop")
        calls = tuple(ToolCall(f"call_{turn}_{i}", name, json.dumps(args)) for i, (name, args) in enumerate(reply))
        return LLMReply("", USAGE, "tool_calls", tool_calls=calls)


@pytest.fixture
def run(rollback_factory, api_settings, llm_with, caller):
    def run_task(task: Task, script: Script, **options):
        [outcome] = execute_agent_tasks(
            [str(task.id)],
            RunContext(
                session_factory=rollback_factory,
                settings=api_settings,
                llm=llm_with(script),
                tool_caller=caller,
                **options,
            ),
        )
        return outcome

    return run_task


def reload(db_session, task: Task) -> Task:
    return db_session.get(Task, task.id, populate_existing=True)


def recorded(db_session, task: Task) -> list[TaskStep]:
    db_session.expire_all()
    return steps.step_rows(db_session, task.id)


def tool_messages(request) -> list[str]:
    return [message.content for message in request.messages if message.role == "tool"]


def test_three_turns_and_two_tool_calls_complete_with_each_step_recorded_in_order(
    run, db_session, api_task, tool_calls
):
    # Given a model that checks the weather, then orders, then answers
    script = Script([("weather", {"city": "Oslo"})], [("order", {"item": "umbrella"})], "Take an umbrella.")
    # When the task runs
    outcome = run(api_task, script)
    # Then it completes with the last turn's text, having asked the model three times
    row = reload(db_session, api_task)
    assert outcome.status == "completed" and row.status == TaskStatus.COMPLETED and row.result == "Take an umbrella."
    assert len(script.requests) == 3 and '"city": "Oslo"' in script.requests[0].messages[1].content
    # And five steps in order: turn, call, turn, call, turn, each turn with its usage
    rows = recorded(db_session, api_task)
    assert [(s.position, s.step_type, s.status) for s in rows] == [
        (0, StepType.MODEL_TURN, StepStatus.SUCCEEDED),
        (1, StepType.TOOL_CALL, StepStatus.SUCCEEDED),
        (2, StepType.MODEL_TURN, StepStatus.SUCCEEDED),
        (3, StepType.TOOL_CALL, StepStatus.SUCCEEDED),
        (4, StepType.MODEL_TURN, StepStatus.SUCCEEDED),
    ]
    assert [s.tool_name for s in rows if s.tool_name] == ["weather", "order"]
    assert all((s.prompt_tokens, s.completion_tokens) == (11, 4) for s in rows if s.step_type is StepType.MODEL_TURN)
    # And the task's sums are the turns', charged once each
    assert (row.prompt_tokens, row.completion_tokens, row.total_tokens) == (33, 12, 45)
    # And the tool API got exactly the two calls, the weather one with its secret header, which no row holds
    assert [c["path"].split("?")[0] for c in tool_calls.received] == ["/weather", "/orders"]
    assert tool_calls.received[0]["headers"]["authorization"] == SECRET
    assert tool_calls.received[1]["headers"]["idempotency-key"] == f"{api_task.id}:call_1_0"
    stored = json.dumps([[s.content, s.arguments, s.tool_calls] for s in rows] + [row.result, row.error])
    assert SECRET not in stored
    # And the model read each result as the tool message answering its call
    assert tool_messages(script.requests[2])[0].startswith("HTTP 200")
    assert tool_messages(script.requests[2])[1].startswith("HTTP 201")


def test_the_step_limit_fails_the_task_clearly(run, db_session, api_task):
    # Given a model that never stops calling tools, and an agent allowed 4 model turns
    outcome = run(api_task, Script([("weather", {"city": "Oslo"})]))
    row = reload(db_session, api_task)
    assert outcome.status == "failed" and row.status == TaskStatus.FAILED
    assert row.error == "step limit reached: 4 model turns without a final answer (max_steps 4)"
    assert len(recorded(db_session, api_task)) == 8


def test_a_tool_error_a_timeout_bad_arguments_and_an_unknown_tool_reach_the_model_as_results(
    run, db_session, api_task, tool_calls
):
    # Given a turn calling a failing tool, a slow one past its timeout, one with bad arguments and a made-up one
    script = Script(
        [("broken", {"city": "x"}), ("slow", {"city": "x"}), ("weather", {"town": "x"}), ("teleport", {})],
        "Nothing worked.",
    )
    outcome = run(api_task, script)
    # Then the task completes, the model having read each failure as that call's result
    assert outcome.status == "completed"
    broken, slow, bad, unknown = tool_messages(script.requests[1])
    assert broken.startswith("HTTP 500")
    assert slow == "error: timed out after 0.3 s"
    assert bad.startswith("error: invalid arguments:") and "city" in bad
    assert unknown.startswith("error: unknown tool 'teleport'")
    # And the calls that could not be made were not
    assert sorted(c["path"].split("?")[0] for c in tool_calls.received) == ["/broken", "/slow"]
    statuses = [s.status for s in recorded(db_session, api_task) if s.step_type is StepType.TOOL_CALL]
    assert statuses == [StepStatus.FAILED] * 4


def test_a_redirect_to_a_host_outside_the_allowlist_reaches_the_model_as_a_refusal(run, db_session, api_task):
    script = Script([("hop", {"city": "x"})], "Refused.")
    assert run(api_task, script).status == "completed"
    [result] = tool_messages(script.requests[1])
    assert result == (
        "error: refused: a redirect to http://169.254.169.254:80 leaves the tool's origin, and the agent's"
        " allowed hosts do not name that host and port"
    )


def test_a_resumed_run_repeats_no_recorded_step_and_never_resends_a_started_non_idempotent_call(
    run, db_session, api_task, tool_calls
):
    # Given attempt 1 lost after recording a turn that called `order` (sent: started, no result) and `weather`
    # (idempotent, in flight: nothing recorded)
    calls = [ToolCall("c1", "order", '{"item": "tent"}'), ToolCall("c2", "weather", '{"city": "Oslo"}')]
    db_session.add_all(
        [
            TaskStep(
                task_id=api_task.id,
                position=0,
                step_type=StepType.MODEL_TURN,
                status=StepStatus.SUCCEEDED,
                attempt=1,
                content="",
                tool_calls=[call._asdict() for call in calls],
                model="gpt-4o-mini",
            ),
            TaskStep(
                task_id=api_task.id,
                position=1,
                step_type=StepType.TOOL_CALL,
                status=StepStatus.STARTED,
                attempt=1,
                tool_call_id="c1",
                tool_name="order",
                arguments={"item": "tent"},
                idempotency_key=f"{api_task.id}:c1",
            ),
        ]
    )
    api_task.attempts = 1
    db_session.flush()
    # When the next attempt runs
    script = Script("Done.")
    assert run(api_task, script).status == "completed"
    # Then the model was asked once (the recorded turn was not asked again), the order was not sent again and
    # the model was told its outcome is unknown; the idempotent call in flight was simply made again
    assert len(script.requests) == 1
    order, weather = tool_messages(script.requests[0])
    assert order.startswith("error: the outcome of this call is unknown") and weather.startswith("HTTP 200")
    assert [c["path"].split("?")[0] for c in tool_calls.received] == ["/weather"]
    rows = recorded(db_session, api_task)
    assert [(s.position, s.status) for s in rows] == [
        (0, StepStatus.SUCCEEDED),
        (1, StepStatus.FAILED),
        (2, StepStatus.SUCCEEDED),
        (3, StepStatus.SUCCEEDED),
    ]


def test_a_turn_kept_in_redis_but_not_recorded_is_recorded_without_a_call(
    run, db_session, api_task, idle_redis, api_settings, tool_calls
):
    # Given attempt 1 lost after its first turn's reply arrived and was kept, before it was recorded
    replies = ReplyStore(idle_redis, keep=True, keep_seconds=60)
    spec, _ = agent_spec(db_session.get(Agent, api_task.agent_id))
    first = ToolCall("k1", "weather", '{"city": "Oslo"}')
    request = ApiKind().build_request(TaskWork(spec, api_task.title, api_task.description or ""))
    candidate = Candidate(api_task.id, "u-api", 1, spec, request)
    replies.keep([Arrived(candidate, LLMReply("", USAGE, "tool_calls", tool_calls=(first,)), False, position=0)])
    api_task.attempts = 1
    db_session.flush()
    # When attempt 2 runs
    script = Script("Sunny enough.")
    assert run(api_task, script, replies=replies).status == "completed"
    # Then the kept turn became step 0 (its usage charged once), and only the final turn was asked for
    rows = recorded(db_session, api_task)
    assert [(s.position, s.step_type, s.tool_name) for s in rows] == [
        (0, StepType.MODEL_TURN, None),
        (1, StepType.TOOL_CALL, "weather"),
        (2, StepType.MODEL_TURN, None),
    ]
    assert len(script.requests) == 1 and reload(db_session, api_task).prompt_tokens == 22


def test_a_transient_llm_error_mid_run_retries_and_the_retry_resumes_after_the_recorded_steps(
    run, db_session, api_task, tool_calls
):
    # Given a model whose second turn fails once with a rate limit
    script = Script([("weather", {"city": "Oslo"})], "Sunny.")
    failures = iter([RetryableError("LLM rate limited (429)")])

    async def flaky(request, *, settings):
        second_turn = sum(message.role == "assistant" for message in request.messages) == 1
        if second_turn and (error := next(failures, None)) is not None:
            raise error
        return await script(request, settings=settings)

    # When the task runs twice (the retry after the backoff)
    assert run(api_task, flaky).status == "retrying"
    assert reload(db_session, api_task).status == TaskStatus.QUEUED
    assert run(api_task, flaky).status == "completed"
    # Then the first turn and its tool call were made once; the retry went on from them
    assert [sum(m.role == "assistant" for m in r.messages) for r in script.requests] == [0, 1]
    assert len(tool_calls.to("/weather")) == 1
    assert [s.attempt for s in recorded(db_session, api_task)] == [1, 1, 2]


def test_a_followed_run_publishes_each_turn_call_result_and_pause_for_its_followers(
    run, db_session, api_task, idle_redis, api_settings
):
    # Given someone following the task
    idle_redis.set(follower_key(api_task.id), 1, ex=60)
    live = LivePublisher(idle_redis, settings=api_settings)
    # When it checks the weather, then wants to pay (which needs a reviewer)
    run(api_task, Script([("weather", {"city": "Oslo"})], [("pay", {"item": "tickets"})]), live=live)
    # Then its stream shows each step in order, ending with the pause
    events = [decode(entry_id, fields) for entry_id, fields in idle_redis.xrange(stream_key(api_task.id))]
    kinds = [event.kind for event in events]
    assert kinds == [
        EventKind.STARTED,
        EventKind.STEP,
        EventKind.TOOL_CALL,
        EventKind.TOOL_RESULT,
        EventKind.STEP,
        EventKind.AWAITING_APPROVAL,
    ]
    assert events[1].data["tools"] == ["weather"] and events[1].data["prompt_tokens"] == 11
    assert events[3].data["name"] == "weather" and events[3].data["result"].startswith("HTTP 200")
    assert events[5].data == {"position": 3, "name": "pay", "arguments": {"item": "tickets"}}


class CountingConnection(redis.Connection):
    """A connection that keeps each round trip it makes (the commands it sends together, as sent)."""

    sent: ClassVar[list[bytes]] = []

    def send_packed_command(self, command, check_health=True) -> None:
        CountingConnection.sent.append(command if isinstance(command, bytes) else b"".join(command))
        super().send_packed_command(command, check_health)


def test_a_run_nobody_follows_costs_one_check_per_model_call_and_writes_nothing(run, api_task, api_settings):
    # Given live output on, nobody following, its Redis commands kept as they are sent
    CountingConnection.sent = []
    counted = redis.Redis(
        connection_pool=redis.ConnectionPool.from_url(IDLE_REDIS, connection_class=CountingConnection)
    )
    live = LivePublisher(counted, settings=api_settings)
    # When a run of three model turns (each sent alone) and two tool calls completes
    outcome = run(
        api_task, Script([("weather", {"city": "Oslo"})], [("order", {"item": "umbrella"})], "Done."), live=live
    )
    assert outcome.status == "completed"
    # Then whether it is followed was asked once per model call, in one round trip each, and nothing was written
    checks = [sent for sent in CountingConnection.sent if b"\r\nEXISTS\r\n" in sent]
    assert [sent.count(b"\r\nEXISTS\r\n") for sent in checks] == [1, 1, 1]
    assert not any(b"\r\nXADD\r\n" in sent for sent in CountingConnection.sent)
    assert counted.exists(stream_key(api_task.id)) == 0


def test_a_tool_that_needs_approval_pauses_the_task_holding_no_claim(run, db_session, api_task, tool_calls):
    # Given a turn that checks the weather and pays (pay needs a reviewer)
    script = Script([("pay", {"item": "tickets"}), ("weather", {"city": "Oslo"})], "Paid.")
    outcome = run(api_task, script)
    # Then the call needing no approval ran first, and the task waits for a reviewer, its attempt given back
    row = reload(db_session, api_task)
    assert outcome.status == "paused"
    assert (row.status, row.claimed_by, row.claimed_at, row.attempts) == (TaskStatus.AWAITING_APPROVAL, None, None, 0)
    assert "awaiting approval of tool pay" in row.waiting_reason
    assert [c["path"].split("?")[0] for c in tool_calls.received] == ["/weather"]
    pay = recorded(db_session, api_task)[1]
    assert (pay.tool_name, pay.status) == ("pay", StepStatus.AWAITING_APPROVAL) and pay.approval_expires_at


def test_an_approved_call_is_made_and_the_task_completes(run, db_session, api_task, tool_calls):
    script = Script([("pay", {"item": "tickets"})], "Paid.")
    run(api_task, script)
    # When a reviewer approves
    assert steps.decide_approval(
        db_session, api_task.id, approved=True, note="ok", now=utcnow(), status=TaskStatus.QUEUED
    ) == ["pay"]
    outcome = run(api_task, script)
    # Then the call is made once, with its idempotency key, and the task completes
    assert outcome.status == "completed" and reload(db_session, api_task).result == "Paid."
    [paid] = tool_calls.to("/pay")
    assert paid["headers"]["idempotency-key"] == f"{api_task.id}:call_0_0"
    assert tool_messages(script.requests[-1])[0].startswith("HTTP 201")
    pay = recorded(db_session, api_task)[1]
    assert (pay.status, pay.approval_note) == (StepStatus.SUCCEEDED, "ok") and pay.decided_at


def test_a_rejected_call_is_never_made_and_the_model_reads_the_rejection(run, db_session, api_task, tool_calls):
    script = Script([("pay", {"item": "tickets"})], "Not paid.")
    run(api_task, script)
    steps.decide_approval(
        db_session, api_task.id, approved=False, note="too dear", now=utcnow(), status=TaskStatus.QUEUED
    )
    assert run(api_task, script).status == "completed"
    assert tool_calls.to("/pay") == []
    assert tool_messages(script.requests[-1]) == ["rejected by a reviewer: too dear"]
    assert recorded(db_session, api_task)[1].status == StepStatus.REJECTED


def test_an_expired_approval_fails_the_task_with_the_reason_and_cannot_be_given(run, db_session, api_task):
    run(api_task, Script([("pay", {"item": "tickets"})], "Paid."))
    later = utcnow() + timedelta(seconds=3601)
    # A decision after the expiry is refused
    with pytest.raises(ApprovalError, match="expired"):
        steps.decide_approval(db_session, api_task.id, approved=True, note=None, now=later, status=TaskStatus.QUEUED)
    # And the sweeper's pass fails the task, the step expired
    assert steps.fail_expired_approvals(db_session, now=later, limit=100) == [api_task.id]
    row = reload(db_session, api_task)
    assert (row.status, row.error) == (TaskStatus.FAILED, "approval for tool pay expired after 3600 s")
    assert recorded(db_session, api_task)[1].status == StepStatus.EXPIRED


def test_a_decision_on_a_task_awaiting_no_approval_is_refused(db_session, api_task):
    with pytest.raises(ApprovalError, match="is not awaiting approval: it is queued"):
        steps.decide_approval(db_session, api_task.id, approved=True, note=None, now=utcnow(), status=TaskStatus.QUEUED)


def test_an_api_agent_definition_is_checked_naming_the_bad_field(tool_calls):
    assert [tool.name for tool in check_tools(tools(tool_calls.url), ["127.0.0.1"])][:2] == ["weather", "order"]
    with pytest.raises(ValueError, match=r"tools\[0\]\.url: host 127\.0\.0\.1 is not in the agent's allowed_hosts"):
        check_tools(tools(tool_calls.url), ["api.example.com"])
    with pytest.raises(ValueError, match="an api agent needs a list of one tool definition at least"):
        check_tools([], ["api.example.com"])


def test_the_steps_of_many_runs_are_written_together_and_only_for_the_claims_that_still_own_their_tasks(
    db_session, api_agent, api_settings
):
    # Given three tasks claimed by this worker, the third then taken over by another attempt
    tasks = [
        Task(
            id=uuid.uuid4(),
            title=f"t{i}",
            description="d",
            agent_id=api_agent.id,
            user_id="u",
            status=TaskStatus.QUEUED,
        )
        for i in range(3)
    ]
    db_session.add_all(tasks)
    db_session.flush()
    now = utcnow()
    first, second, lost = lifecycle.claim_tasks(
        db_session, [t.id for t in tasks], settings=api_settings, now=now, owner="this-worker"
    )
    db_session.execute(update(Task).where(Task.id == lost.task_id).values(attempts=2))
    priced, unpriced = Charge("gpt-4o-mini", USAGE, 0.25), Charge("gpt-4o-mini", USAGE, None)
    turn = [steps.StepWrite(0, {"step_type": StepType.MODEL_TURN, "status": StepStatus.SUCCEEDED, "content": "hi"})]
    call = [steps.StepWrite(1, {"step_type": StepType.TOOL_CALL, "status": StepStatus.STARTED, "tool_name": "weather"})]
    # When their steps are written in one batch, the first named twice (its turn, then its tool call)
    owned = steps.write_steps(
        db_session,
        [
            steps.ClaimSteps(first, turn, priced),
            steps.ClaimSteps(second, turn, unpriced),
            steps.ClaimSteps(lost, turn, priced),
            steps.ClaimSteps(first, call),
        ],
        now=now,
    )
    # Then each claim that still owns its task wrote its steps and added its charge; the lost one wrote nothing
    assert owned == [True, True, False, True]
    assert [(s.position, s.step_type) for s in recorded(db_session, tasks[0])] == [
        (0, StepType.MODEL_TURN),
        (1, StepType.TOOL_CALL),
    ]
    assert len(recorded(db_session, tasks[1])) == 1 and recorded(db_session, tasks[2]) == []
    sums = [(t.prompt_tokens, t.total_tokens, t.cost_usd, t.unpriced_calls) for t in map(reload_of(db_session), tasks)]
    assert sums == [(11, 15, 0.25, 0), (11, 15, None, 1), (None, None, None, 0)]


def reload_of(db_session):
    return lambda task: reload(db_session, task)
