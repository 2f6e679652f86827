"""Multi-step runs (the api kind): model turns and tool calls, each recorded as a step as it happens, so that
a run resumed after a crash, a retry, a deferral or an approval starts after its last recorded step.

An `ApiRun` is one claimed task's run: rebuilt from its recorded steps (the conversation so far, the tool
calls of its last turn still to answer), it decides what comes next from each event (a model turn arrived, a
tool call ended) and which steps to write. `StepRuns` does that for the batch's runs together: one query to
load their steps, one short transaction per group of events, and the tool calls started once the steps that
must precede them are committed. The pipeline (`execution.pipeline`) sends the model turns, through admission
like any call. See docs/decisions.md, "Durable steps".
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from agent_service.clock import utcnow
from agent_service.config import Settings
from agent_service.database import session_scope
from agent_service.errors import PermanentError
from agent_service.execution.tool_calls import ToolCaller
from agent_service.kinds.api import agent_tools, allowed_hosts
from agent_service.kinds.base import KindResult, TaskWork
from agent_service.live.events import EventKind
from agent_service.live.publisher import LivePublisher, Update
from agent_service.llm.messages import LLMReply, LLMRequest, Message, ToolCall, Usage
from agent_service.models import StepStatus, StepType
from agent_service.monitoring import count_llm_usage
from agent_service.store import lifecycle
from agent_service.store.lifecycle import Charge, Claim
from agent_service.store.steps import RecordedStep, StepWrite, load_steps, write_steps
from agent_service.tools.definitions import ToolDefinition, validate_arguments
from agent_service.tools.http import ToolOutcome

UNKNOWN_OUTCOME = (
    "error: the outcome of this call is unknown: it was sent, then the worker running it was lost before the"
    " reply was recorded; the tool is not idempotent, so it is not called again"
)
LOST_CLAIM = "the run lost its claim on the task (cancelled, or taken over) before its step was recorded"
_ANSWERED = (StepStatus.SUCCEEDED, StepStatus.FAILED, StepStatus.REJECTED)
LIVE_TEXT_CHARS = 500  # of a step's text or a tool's result, in a live event


@dataclass(frozen=True)
class Replied:
    """A model turn's reply arrived (or was found kept in Redis), with the model that gave it and its cost."""

    reply: LLMReply
    model: str
    charge: Charge | None


@dataclass(frozen=True)
class ToolDone:
    """A tool call of the run ended."""

    future: Future[ToolOutcome]


@dataclass(frozen=True)
class AskModel:
    """Next: this model turn, sent through admission."""

    request: LLMRequest


@dataclass(frozen=True)
class AwaitTools:
    """Next: these tool calls, started, end."""

    futures: tuple[Future[ToolOutcome], ...]


@dataclass(frozen=True)
class RunEnded:
    """The run is over: its result (the last turn's text, already charged step by step) or why it failed."""

    result: KindResult | None = None
    model: str = ""
    usage: Usage | None = None
    error: PermanentError | None = None


@dataclass(frozen=True)
class Paused:
    """The run waits for a reviewer (recorded): the task is `awaiting_approval`, its claim given back."""

    reason: str


# What comes after an event; None: other tool calls of the turn are still under way.
Next = AskModel | AwaitTools | RunEnded | Paused | None
Event = Replied | ToolDone | None  # None: the run is resumed


@dataclass
class _Call:
    """A tool call of the run's last model turn, at its step position; `result` once the model may read it."""

    position: int
    call: ToolCall
    status: StepStatus | None = None
    result: str | None = None
    recorded: bool = False


@dataclass
class Plan:
    """What one event leads to: the steps to write (with a model turn's charge), the calls to start once they
    are committed, and what comes next; `pause` to give the claim back for a reviewer."""

    writes: list[StepWrite]
    charge: Charge | None = None
    start: list[_Call] = field(default_factory=list)
    next: Next = None
    pause: str | None = None


class ApiRun:
    """One claimed api task's run, rebuilt from its recorded steps."""

    def __init__(
        self,
        claim: Claim,
        work: TaskWork,
        first: LLMRequest,
        steps: Sequence[RecordedStep],
        *,
        settings: Settings,
        now: datetime,
    ) -> None:
        self.claim, self._agent, self._first, self._settings = claim, work.agent, first, settings
        self._tools: dict[str, ToolDefinition] = {tool.name: tool for tool in agent_tools(work.agent)}
        self._hosts = allowed_hosts(work.agent)
        self.messages: list[Message] = list(first.messages)
        self.position = 0  # where the next step goes
        self.turns = 0
        self._started = lifecycle.aware(steps[0].created_at) if steps else now
        decisions = {(step.created_at, step.decided_at) for step in steps if step.decided_at is not None}
        self._waited = sum((lifecycle.aware(d) - lifecycle.aware(c)).total_seconds() for c, d in decisions)
        self._final: str | None = None
        self._last: tuple[str, Usage | None] = (work.agent.model, None)
        self._calls: list[_Call] = []
        self._in_flight: dict[Future[ToolOutcome], _Call] = {}
        self._asked_at = time.monotonic()
        for step in steps:
            self._replay(step)

    def step(self, event: Event, *, now: datetime) -> Plan:
        """Take in `event` and decide what comes next (changing this run's state as if the plan's writes were
        committed: the caller drops the run if they are not)."""
        writes: list[StepWrite] = []
        charge = None
        if isinstance(event, Replied):
            writes.append(self._turn(event))
            charge = event.charge
        elif isinstance(event, ToolDone):
            writes.append(self._tool_result(event.future))
        return self._plan(writes, charge, now=now)

    def start(self, caller: ToolCaller, calls: list[_Call]) -> tuple[Future[ToolOutcome], ...]:
        """Send these calls (their `started` steps, if any, are committed)."""
        for call in calls:
            tool, arguments = self._tools[call.call.name], _arguments(call.call)
            key = None if tool.idempotent else self.idempotency_key(call.call)
            future = caller.submit(tool, arguments, allowed_hosts=self._hosts, idempotency_key=key)
            self._in_flight[future] = call
        return tuple(self._in_flight)

    def idempotency_key(self, call: ToolCall) -> str:
        """The same for the same call of the same task, whichever attempt sends it."""
        return f"{self.claim.task_id}:{call.id}"[:200]

    def _replay(self, step: RecordedStep) -> None:
        if step.step_type is StepType.MODEL_TURN:
            calls = tuple(ToolCall(c["id"], c["name"], c["arguments"]) for c in step.tool_calls or ())
            self._new_turn(step.content or "", calls, model=step.model or self._agent.model, usage=None)
            return
        for call in self._calls:
            if call.position == step.position:
                call.status, call.recorded = step.status, True
                call.result = step.content if step.status in _ANSWERED else None

    def _new_turn(self, text: str, calls: tuple[ToolCall, ...], *, model: str, usage: Usage | None) -> None:
        self._answer_calls()
        self.messages.append(Message("assistant", text, calls))
        self.turns += 1
        self._calls = [_Call(self.position + 1 + index, call) for index, call in enumerate(calls)]
        self.position += 1 + len(calls)
        self._final = None if calls else text
        self._last = (model, usage)

    def _answer_calls(self) -> None:
        """The tool messages answering the last turn's calls, in the order the model asked for them."""
        self.messages += [Message("tool", c.result or "", tool_call_id=c.call.id) for c in self._calls]
        self._calls = []

    def _turn(self, event: Replied) -> StepWrite:
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
        self._new_turn(reply.text, calls, model=event.model, usage=reply.usage)
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

    def _result_write(self, call: _Call, status: StepStatus, **values: Any) -> StepWrite:
        write = StepWrite(
            call.position, self._call_values(call) | dict(status=status, content=call.result, **values), call.recorded
        )
        call.status, call.recorded = status, True
        return write

    def _call_values(self, call: _Call) -> dict[str, Any]:
        try:
            arguments = _arguments(call.call)
        except ValueError:
            arguments = call.call.arguments  # kept as the model wrote it
        return dict(
            step_type=StepType.TOOL_CALL, tool_call_id=call.call.id, tool_name=call.call.name, arguments=arguments
        )

    def _plan(self, writes: list[StepWrite], charge: Charge | None, *, now: datetime) -> Plan:
        if self._in_flight:
            return Plan(writes, charge)  # the turn's other calls are still under way
        open_calls = [call for call in self._calls if call.result is None]
        if not open_calls:
            return Plan(writes, charge, next=self._ask(now))
        if (over := self._over_budget(now)) is not None:
            return Plan(writes, charge, next=over)
        start: list[_Call] = []
        approvals: list[_Call] = []
        for call in open_calls:
            if call.status is StepStatus.STARTED:  # sent by a run that was lost: never sent again
                call.result = UNKNOWN_OUTCOME
                writes.append(self._result_write(call, StepStatus.FAILED))
            elif call.status is StepStatus.EXPIRED:
                return Plan(writes, charge, next=RunEnded(error=PermanentError("its tool call's approval expired")))
            elif call.status is StepStatus.AWAITING_APPROVAL:
                approvals.append(call)
            elif (problem := self._problem(call)) is not None:
                call.result = f"error: {problem}"
                writes.append(self._result_write(call, StepStatus.FAILED))
            elif self._tools[call.call.name].requires_approval and call.status is not StepStatus.APPROVED:
                approvals.append(call)
            else:
                start.append(call)
                if not self._tools[call.call.name].idempotent:
                    key = self.idempotency_key(call.call)
                    writes.append(self._result_write(call, StepStatus.STARTED, idempotency_key=key))
        if start:  # the calls that need no approval run first
            return Plan(writes, charge, start=start)
        if approvals:
            return self._pause(writes, charge, approvals, now=now)
        return Plan(writes, charge, next=self._ask(now))

    def _pause(self, writes: list[StepWrite], charge: Charge | None, calls: list[_Call], *, now: datetime) -> Plan:
        expires = now + timedelta(seconds=self._settings.approval_timeout_seconds)
        for call in calls:
            if call.status is not StepStatus.AWAITING_APPROVAL:
                writes.append(self._result_write(call, StepStatus.AWAITING_APPROVAL, approval_expires_at=expires))
        names = ", ".join(dict.fromkeys(call.call.name for call in calls))
        reason = f"awaiting approval of tool {names} (python cli.py approve|reject {self.claim.task_id})"
        return Plan(writes, charge, next=Paused(reason), pause=reason)

    def _problem(self, call: _Call) -> str | None:
        """Why this call cannot be made as the model wrote it (its result then says so), else None."""
        tool = self._tools.get(call.call.name)
        if tool is None:
            return f"unknown tool {call.call.name!r}; the tools are: {', '.join(self._tools)}"
        try:
            arguments = _arguments(call.call)
        except ValueError as exc:
            return f"the arguments are not valid JSON: {exc}"
        problem = validate_arguments(tool, arguments)
        return None if problem is None else f"invalid arguments: {problem}"

    def _ask(self, now: datetime) -> Next:
        self._answer_calls()
        if self._final is not None:
            model, usage = self._last
            return RunEnded(KindResult(text=self._final), model=model, usage=usage)
        if self.turns >= self._agent.max_steps:
            return RunEnded(
                error=PermanentError(
                    f"step limit reached: {self.turns} model turns without a final answer (max_steps {self.turns})"
                )
            )
        if (over := self._over_budget(now)) is not None:
            return over
        self._asked_at = time.monotonic()
        return AskModel(replace(self._first, messages=tuple(self.messages)))

    def _over_budget(self, now: datetime) -> RunEnded | None:
        """The failure when the run's time (from its first step, reviewers' time left out) is spent."""
        budget = self._agent.time_budget_seconds
        if (now - self._started).total_seconds() - self._waited <= budget:
            return None
        return RunEnded(error=PermanentError(f"time budget of {budget:g} s spent after {self.turns} model turns"))


def _arguments(call: ToolCall) -> Any:
    """The arguments the model wrote, parsed (none written: no arguments). Raises: ValueError (not JSON)."""
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


class StepRuns:
    """The api runs of the batches of one worker: their steps loaded, recorded, and their tool calls made."""

    def __init__(
        self,
        *,
        session_factory: sessionmaker[Session],
        settings: Settings,
        caller: ToolCaller | None,
        live: LivePublisher | None = None,
    ) -> None:
        self._session_factory, self._settings, self._live = session_factory, settings, live
        self._caller = caller or ToolCaller(settings)

    def resume(self, runs: Sequence[tuple[Claim, TaskWork, LLMRequest]]) -> list[ApiRun]:
        """Each claimed task's run, rebuilt from its recorded steps (one query for them all)."""
        now = utcnow()
        with session_scope(self._session_factory) as session:
            recorded = load_steps(session, [claim.task_id for claim, _, _ in runs])
        return [
            ApiRun(claim, work, first, recorded[claim.task_id], settings=self._settings, now=now)
            for claim, work, first in runs
        ]

    def advance(self, events: Sequence[tuple[ApiRun, Event]]) -> list[Next]:
        """What comes next for each run after its event, the steps the events make recorded in one transaction
        first (a run whose claim was lost records nothing and ends)."""
        now = utcnow()
        plans = [run.step(event, now=now) for run, event in events]
        owned = [True] * len(plans)
        if any(plan.writes or plan.charge or plan.pause for plan in plans):  # a fresh run asks before it writes
            with session_scope(self._session_factory) as session:
                owned = [
                    self._write(session, run.claim, plan, now=now) for (run, _), plan in zip(events, plans, strict=True)
                ]
        nexts: list[Next] = []
        updates: list[Update] = []
        for (run, _), plan, kept in zip(events, plans, owned, strict=True):
            if not kept:
                nexts.append(RunEnded(error=PermanentError(LOST_CLAIM)))
                continue
            self._count(plan)
            updates += _live_updates(run, plan)
            nexts.append(AwaitTools(run.start(self._caller, plan.start)) if plan.start else plan.next)
        if self._live is not None and updates:
            self._live.publish_many(updates)  # for the followed tasks only, in one round trip
        return nexts

    def _write(self, session: Session, claim: Claim, plan: Plan, *, now: datetime) -> bool:
        if not (plan.writes or plan.charge or plan.pause):
            return True
        if not write_steps(session, claim, plan.writes, charge=plan.charge, now=now):
            return False
        return plan.pause is None or lifecycle.record_pause(session, claim, reason=plan.pause, now=now)

    def _count(self, plan: Plan) -> None:
        if plan.charge is not None:
            count_llm_usage(plan.charge.model, tokens=plan.charge.token_counts(), cost_usd=plan.charge.cost_usd)


def _live_updates(run: ApiRun, plan: Plan) -> list[Update]:
    """What followers of the run see of this plan: each model turn (`step`), each call as it is sent
    (`tool_call`), each result (`tool_result`) and each call left for a reviewer (`awaiting_approval`)."""
    task_id, updates = run.claim.task_id, []
    for write in plan.writes:
        values, status = write.values, write.values.get("status")
        text = (values.get("content") or "")[:LIVE_TEXT_CHARS]
        if values.get("step_type") is StepType.MODEL_TURN:
            calls = [call["name"] for call in values.get("tool_calls") or ()]
            tokens = {
                "prompt_tokens": values.get("prompt_tokens"),
                "completion_tokens": values.get("completion_tokens"),
            }
            data = {"position": write.position, "model": values.get("model"), "text": text, "tools": calls, **tokens}
            updates.append(Update(task_id, EventKind.STEP, data))
        elif status is StepStatus.AWAITING_APPROVAL:
            data = {"position": write.position, "name": values.get("tool_name"), "arguments": values.get("arguments")}
            updates.append(Update(task_id, EventKind.AWAITING_APPROVAL, data))
        elif status in _ANSWERED:
            data = {"position": write.position, "name": values.get("tool_name"), "status": status.value, "result": text}
            updates.append(Update(task_id, EventKind.TOOL_RESULT, data))
    for call in plan.start:
        data = {"position": call.position, "name": call.call.name, "arguments": call.call.arguments}
        updates.append(Update(task_id, EventKind.TOOL_CALL, data))
    return updates
