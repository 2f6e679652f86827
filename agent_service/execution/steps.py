"""Durable steps: the run of a durable kind (`kinds.base`), each model turn and tool call recorded as a step
as it happens, so that a run resumed after a crash, a retry, a deferral or an approval goes on after its
last recorded step. Nothing here knows a kind: only turns, replies and tool calls.

A `StepLog` is one claimed task's run: the kind's `Run` with the task's recorded steps replayed into it (the
replies and results it was told, so it stands where it stood), deciding from each event (a model turn
arrived, a tool call ended) what comes next and which steps to write. Steps take positions in order: a
model turn one, each call of a `CallTools` turn one (a turn at p asking k calls: the calls at p+1..p+k, the
next turn at p+k+1). A call of a tool that is not idempotent is recorded `started` before it is sent and
never sent again; a call that needs approval pauses the run. `DurableRuns` (`execution.durable`) loads,
records and starts the batch's runs together. See docs/decisions.md, "Durable steps".
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from agent_service.clock import aware
from agent_service.config import Settings
from agent_service.errors import PermanentError, RetryableError
from agent_service.execution.plans import Call, Event, Next, Paused, Plan, Replied, RunEnded, ToolDone
from agent_service.execution.tool_calls import ToolCaller
from agent_service.kinds.base import (
    AskModel,
    CallTools,
    Done,
    End,
    ModelReplied,
    Run,
    ToolsAnswered,
    Turn,
)
from agent_service.llm.messages import LLMReply, ToolCall, Usage
from agent_service.models import StepStatus, StepType
from agent_service.store.agents import AgentSpec
from agent_service.store.lifecycle import Charge, Claim
from agent_service.store.steps import RecordedStep, StepWrite
from agent_service.tools.outcomes import ToolOutcome
from agent_service.tracing import NO_TRACE, TaskTrace

UNKNOWN_OUTCOME = (
    "error: the outcome of this call is unknown: it was sent, then the worker running it was lost before the"
    " reply was recorded; the tool is not idempotent, so it is not called again"
)
ANSWERED = (StepStatus.SUCCEEDED, StepStatus.FAILED, StepStatus.REJECTED)


class StepLog:
    """One claimed task's run of a durable kind, its recorded steps replayed into it."""

    def __init__(
        self,
        claim: Claim,
        run: Run,
        steps: Sequence[RecordedStep],
        *,
        agent: AgentSpec,
        settings: Settings,
        now: datetime,
    ) -> None:
        self.claim, self._run, self._agent, self._settings = claim, run, agent, settings
        self.position = 0  # where the next step goes
        self.turns = 0  # model turns
        self._started = aware(steps[0].created_at) if steps else now
        decisions = {(step.created_at, step.decided_at) for step in steps if step.decided_at is not None}
        self._waited = sum((aware(d) - aware(c)).total_seconds() for c, d in decisions)
        self._last: tuple[str, Usage | None] = (agent.model, None)
        self._calls: list[Call] = []
        self._in_flight: dict[Future[ToolOutcome], Call] = {}
        self._asked_at = time.monotonic()
        self._turn = self._next(None)
        for step in steps:
            self._replay(step)

    def step(self, event: Event, *, now: datetime) -> Plan:
        """Take in `event` and decide what comes next (changing this run's state as if the plan's writes were
        committed: the caller drops the run if they are not)."""
        writes: list[StepWrite] = []
        charge = None
        if isinstance(event, Replied):
            writes.append(self._turn_write(event))
            charge = event.charge
        elif isinstance(event, ToolDone):
            writes.append(self._tool_result(event.future))
        return self._plan(writes, charge, now=now)

    def start(
        self, caller: ToolCaller, calls: list[Call], *, trace: TaskTrace = NO_TRACE
    ) -> tuple[Future[ToolOutcome], ...]:
        """Send these calls (their `started` steps, if any, are committed), each with a span in `trace`."""
        for call in calls:
            tool = call.request.tool
            assert tool is not None  # a call without a tool has a problem: it is answered, never started
            key = None if tool.idempotent else self.idempotency_key(call.call)
            future = caller.submit(
                tool, _arguments(call.call), allowed_hosts=call.request.allowed_hosts, idempotency_key=key
            )
            trace.tool_call(tool=tool.name, call_id=call.call.id, future=future)
            self._in_flight[future] = call
        return tuple(self._in_flight)

    def idempotency_key(self, call: ToolCall) -> str:
        """The same for the same call of the same task, whichever attempt sends it."""
        return f"{self.claim.task_id}:{call.id}"[:200]

    def _next(self, done: Done | None) -> Turn:
        """The run's next turn (its calls given positions); a run that cannot go on ends with why."""
        try:
            turn = self._run.next(done)
        except (PermanentError, RetryableError) as exc:
            return End(error=exc)
        if isinstance(turn, CallTools):
            self._calls = [Call(self.position + index, request) for index, request in enumerate(turn.calls)]
            self.position += len(turn.calls)
        return turn

    def _replay(self, step: RecordedStep) -> None:
        if step.step_type is StepType.MODEL_TURN:
            self._answer_calls()
            calls = tuple(ToolCall(c["id"], c["name"], c["arguments"]) for c in step.tool_calls or ())
            reply = LLMReply(step.content or "", None, tool_calls=calls)
            self._took_turn(reply, model=step.model or self._agent.model)
            return
        if step.position >= self.position:  # a call of a later tool turn: the run is told this turn's results
            self._answer_calls()
        for call in self._calls:
            if call.position == step.position:
                call.status, call.recorded = step.status, True
                call.result = step.content if step.status in ANSWERED else None

    def _took_turn(self, reply: LLMReply, *, model: str) -> None:
        self.turns += 1
        self.position += 1
        self._last = (model, reply.usage)
        self._turn = self._next(ModelReplied(reply))

    def _answer_calls(self) -> None:
        """Tell the run its calls' results, once every one is answered, and take its next turn."""
        if not isinstance(self._turn, CallTools) or any(call.result is None for call in self._calls):
            return
        results = tuple(call.result or "" for call in self._calls)
        self._calls = []
        self._turn = self._next(ToolsAnswered(results))

    def _turn_write(self, event: Replied) -> StepWrite:
        reply, at = event.reply, self.position
        calls = _with_unique_ids(reply.tool_calls, position=at)
        values: dict[str, Any] = dict(
            step_type=StepType.MODEL_TURN,
            status=StepStatus.SUCCEEDED,
            content=reply.text,
            tool_calls=[call._asdict() for call in calls] or None,
            model=event.model,
            duration_ms=round((time.monotonic() - self._asked_at) * 1000),
        )
        if event.charge is not None:
            usage = event.charge.usage
            values.update(
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
                cached_tokens=usage.cached_tokens,
                cost_usd=event.charge.cost_usd,
            )
        self._took_turn(replace(reply, tool_calls=calls), model=event.model)
        return StepWrite(at, values)

    def _tool_result(self, future: Future[ToolOutcome]) -> StepWrite:
        call = self._in_flight.pop(future)
        try:
            outcome = future.result()
            call.result, ok, elapsed = outcome.as_model_text(), outcome.ok, outcome.elapsed_ms
        except Exception as exc:  # call_tool turns the tool's own failures into outcomes; this is anything else
            call.result, ok, elapsed = f"error: the call failed: {type(exc).__name__}: {exc}", False, None
        status = StepStatus.SUCCEEDED if ok else StepStatus.FAILED
        return self._result_write(call, status, duration_ms=elapsed)

    def _result_write(self, call: Call, status: StepStatus, **values: Any) -> StepWrite:
        write = StepWrite(
            call.position, call_values(call) | dict(status=status, content=call.result, **values), call.recorded
        )
        call.status, call.recorded = status, True
        return write

    def _plan(self, writes: list[StepWrite], charge: Charge | None, *, now: datetime) -> Plan:
        if self._in_flight:
            return Plan(writes, charge)  # the turn's other calls are still under way
        self._answer_calls()
        turn = self._turn
        if isinstance(turn, End):
            ended = RunEnded(turn.result, *self._last) if turn.result is not None else RunEnded(error=turn.error)
            return Plan(writes, charge, next=ended)
        if isinstance(turn, AskModel):
            return Plan(writes, charge, next=self._ask(turn, now))
        if (over := self._over_budget(now)) is not None:
            return Plan(writes, charge, next=over)
        start: list[Call] = []
        approvals: list[Call] = []
        for call in (call for call in self._calls if call.result is None):
            if call.status is StepStatus.STARTED:  # sent by a run that was lost: never sent again
                call.result = UNKNOWN_OUTCOME
                writes.append(self._result_write(call, StepStatus.FAILED))
            elif call.status is StepStatus.EXPIRED:
                return Plan(writes, charge, next=RunEnded(error=PermanentError("its tool call's approval expired")))
            elif call.status is StepStatus.AWAITING_APPROVAL:
                approvals.append(call)
            elif call.request.problem is not None or call.request.tool is None:
                call.result = f"error: {call.request.problem or 'no tool makes this call'}"
                writes.append(self._result_write(call, StepStatus.FAILED))
            elif call.request.needs_approval and call.status is not StepStatus.APPROVED:
                approvals.append(call)
            else:
                start.append(call)
                if not call.request.tool.idempotent:
                    key = self.idempotency_key(call.call)
                    writes.append(self._result_write(call, StepStatus.STARTED, idempotency_key=key))
        if start:  # the calls that need no approval run first
            return Plan(writes, charge, start=start)
        if approvals:
            return self._pause(writes, charge, approvals, now=now)
        return self._plan(writes, charge, now=now)  # every call answered here: the run is told, and goes on

    def _pause(self, writes: list[StepWrite], charge: Charge | None, calls: list[Call], *, now: datetime) -> Plan:
        expires = now + timedelta(seconds=self._settings.approval_timeout_seconds)
        for call in calls:
            if call.status is not StepStatus.AWAITING_APPROVAL:
                writes.append(self._result_write(call, StepStatus.AWAITING_APPROVAL, approval_expires_at=expires))
        names = ", ".join(dict.fromkeys(call.call.name for call in calls))
        reason = f"awaiting approval of tool {names} (python cli.py approve|reject {self.claim.task_id})"
        return Plan(writes, charge, next=Paused(reason), pause=reason)

    def _ask(self, turn: AskModel, now: datetime) -> Next:
        if self.turns >= self._agent.max_steps:
            return RunEnded(
                error=PermanentError(
                    f"step limit reached: {self.turns} model turns without a final answer (max_steps {self.turns})"
                )
            )
        if (over := self._over_budget(now)) is not None:
            return over
        self._asked_at = time.monotonic()
        return turn

    def _over_budget(self, now: datetime) -> RunEnded | None:
        """The failure when the run's time (from its first step, reviewers' time left out) is spent."""
        budget = self._agent.time_budget_seconds
        if (now - self._started).total_seconds() - self._waited <= budget:
            return None
        return RunEnded(error=PermanentError(f"time budget of {budget:g} s spent after {self.turns} model turns"))


def call_values(call: Call) -> dict[str, Any]:
    """A tool call's step columns: its arguments parsed, or as the model wrote them when they are not JSON."""
    try:
        arguments = _arguments(call.call)
    except ValueError:
        arguments = call.call.arguments  # kept as the model wrote it
    return dict(step_type=StepType.TOOL_CALL, tool_call_id=call.call.id, tool_name=call.call.name, arguments=arguments)


def _arguments(call: ToolCall) -> Any:
    """The arguments the call carries, parsed (none written: no arguments). Raises: ValueError (not JSON)."""
    return json.loads(call.arguments or "{}")


def _with_unique_ids(calls: Sequence[ToolCall], *, position: int) -> tuple[ToolCall, ...]:
    """The turn's calls, each with an id of its own (the provider's, unless it gave none or gave one twice):
    tool results answer calls by id, and a call's idempotency key is made from it."""
    seen: set[str] = set()
    unique = []
    for index, call in enumerate(calls):
        call_id = call.id if call.id and call.id not in seen else f"call_{position}_{index}"
        seen.add(call_id)
        unique.append(call._replace(id=call_id))
    return tuple(unique)
