"""Scheduling a batch's turns: each claim's run started (a durable one's steps loaded and replayed), its
model calls answered from Redis when a reply is kept or cached, admitted and sent, its tool calls waited on
beside them, and each ending handed back to its run, until every claim is settled. Nothing here names a
kind: a kind's run decides its turns (`kinds.base`)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field, replace
from typing import Any

from agent_service.admission.base import Decision, Verdict
from agent_service.config import Settings
from agent_service.errors import CallCancelledError
from agent_service.execution.calls import Calls, with_request
from agent_service.execution.durable import DurableRuns
from agent_service.execution.plans import AwaitTools, Event, Paused, Replied, RunEnded, ToolDone
from agent_service.execution.replies import ReplyStore
from agent_service.execution.settling import Settlement
from agent_service.execution.steps import StepLog
from agent_service.execution.truncation import cut_to_fit
from agent_service.execution.turns import Taken, Turning, gave_up, prepare, run_ended, taken, turned_away
from agent_service.kinds.base import AskModel, TaskKind
from agent_service.llm.messages import LLMReply
from agent_service.llm.prices import PriceBook
from agent_service.store.lifecycle import Claim
from agent_service.tracing import NO_TRACES, TaskTraces

Tooling = tuple[Turning, tuple[Future[Any], ...]]
HELD_CANCELLED = "cancelled while its call was held by admission; the call was not made"


class Holds:
    """The calls admission deferred for a moment, held in the batch with their claims until they are due to be
    admitted again, rather than given back to the queue and claimed again (docs/decisions.md, "Held where they
    wait"). A claim is held for `limit_seconds` in all at most; 0 holds nothing."""

    def __init__(self, limit_seconds: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._limit, self._clock = limit_seconds, clock
        self._since: dict[uuid.UUID, float] = {}  # when each claim was first held
        self._due: list[tuple[float, Turning]] = []

    def __bool__(self) -> bool:
        return bool(self._due)

    def hold(self, turning: Turning, decision: Decision) -> bool:
        """Hold `turning` until `decision.retry_in` has passed, if it is a deferral that may be held (not one of a
        call's second try) and the claim would not have been held longer than the limit by then; returns whether
        it did."""
        if self._limit <= 0 or decision.verdict is not Verdict.DEFER or not decision.holdable:
            return False
        if turning.after is not None:
            return False
        now, task_id = self._clock(), turning.claim.task_id
        since = self._since.setdefault(task_id, now)
        if now + decision.retry_in - since > self._limit:
            del self._since[task_id]
            return False
        self._due.append((now + decision.retry_in, turning))
        return True

    def wait_seconds(self) -> float | None:
        """How long until the first held call is due (None: none is held)."""
        if not self._due:
            return None
        return max(0.0, min(due for due, _ in self._due) - self._clock())

    def due(self) -> list[Turning]:
        """The held calls that are due now, no longer held."""
        now = self._clock()
        due = [turning for at, turning in self._due if at <= now]
        self._due = [(at, turning) for at, turning in self._due if at > now]
        return due


@dataclass
class Routed:
    """Where claims go next: a model call to admit, tool calls to wait on, or their settlement."""

    ask: list[Turning] = field(default_factory=list)
    tools: list[Tooling] = field(default_factory=list)
    ended: list[tuple[Claim, Settlement]] = field(default_factory=list)

    def add(self, other: Routed) -> None:
        self.ask += other.ask
        self.tools += other.tools
        self.ended += other.ended


class Scheduler:
    """How a batch's claims end: settled before any call (stored replies, admission), or by their turns."""

    def __init__(
        self,
        *,
        settings: Settings,
        calls: Calls,
        runs: DurableRuns,
        prices: PriceBook,
        replies: ReplyStore | None,
        kinds: Mapping[str, TaskKind],
        traces: TaskTraces = NO_TRACES,
    ) -> None:
        self._settings, self._calls, self._runs, self._prices = settings, calls, runs, prices
        self._replies, self._kinds, self._traces = replies, kinds, traces

    def settlements(self, claims: list[Claim]) -> Iterator[list[tuple[Claim, Settlement]]]:
        """Each claim with how it ends, in groups: first those settled without a call (stored replies, the
        claims that must not run, those admission turned away), then as their calls end, the first to end
        with every other one that ends within the next `batch_flush_seconds`."""
        routed, durable = Routed(), list[Turning]()
        for claim in claims:
            how = prepare(claim, kinds=self._kinds)
            if isinstance(how, Turning):
                (durable if how.kind.durable else routed.ask).append(how)
            else:
                routed.ended.append((claim, how))
        routed.add(self._resume(durable))
        asking = self._unstored(routed)
        # The admitted calls leave before anything is settled: their slots were taken for now.
        pending: dict[Future[Any], Turning] = {}
        tool_calls: set[Future[Any]] = set()
        holds = Holds(self._settings.admission_hold_seconds)
        routed.ended += self._send(asking, into=pending, holds=holds, first=True)
        _await_tools(routed.tools, into=pending, tool_calls=tool_calls)
        if routed.ended:
            yield routed.ended
        yield from self._turns(pending, tool_calls, holds)

    def _send(
        self, asking: list[Turning], *, into: dict[Future[Any], Turning], holds: Holds, first: bool = False
    ) -> list[tuple[Claim, Settlement]]:
        """Admit these calls and send the admitted ones; a call deferred for a moment is held in `holds` (its
        claim kept), and the claims of the others turned away are returned with how they end."""
        decisions = self._calls.admit(asking)
        ended, held = [], []
        for turning, decision in zip(asking, decisions, strict=True):
            if _runs(decision):
                continue
            if holds.hold(turning, decision):
                held.append(turning.claim.task_id)
            else:
                ended.append((turning.claim, _not_now(turning, decision)))
        self._calls.hold(held)
        admitted = [with_request(t, d.request) for t, d in zip(asking, decisions, strict=True) if _runs(d)]
        self._calls.submit(admitted, into=into, first=first)
        return ended

    def _unstored(self, routed: Routed) -> list[Turning]:
        """The calls `routed` asks that are to be made: the others answered by a reply kept by an earlier
        attempt or cached (and routed on from there), or given up (a claim whose worker was lost each time)."""
        asking, routed.ask = routed.ask, []
        stored = self._replies.lookup([turning.asked for turning in asking]) if self._replies else {}
        to_make: list[Turning] = []
        answered: list[tuple[Turning, Taken]] = []
        for turning in asking:
            found = stored.get(turning.claim.task_id)
            if found is not None and turning.log is not None and found.position != turning.log.position:
                found = None  # a turn recorded already
            if found is not None:
                self._calls.replied.add(turning.claim.task_id)
                answered.append((turning, taken(turning, found.reply, model=found.model, prices=self._prices)))
            elif turning.claim.attempt > self._settings.task_max_attempts:
                # Only a run whose worker died gets here: the row was claimed but never settled.
                routed.ended.append((turning.claim, gave_up(turning.claim)))
            else:
                to_make.append(turning)
        after = self._route(answered)
        routed.ended += after.ended
        routed.tools += after.tools
        return to_make + after.ask

    def _turns(
        self, pending: dict[Future[Any], Turning], tool_calls: set[Future[Any]], holds: Holds
    ) -> Iterator[list[tuple[Claim, Settlement]]]:
        """The claims' settlements, in groups as their calls (`pending`, among them `tool_calls`) end and as the
        calls held in `holds` come due. Each call's ending goes back to its run: a next turn is admitted again,
        tool calls are waited on here too, a durable run's steps recorded; a held call is admitted again."""
        while pending or holds:
            done = self._next_ended(pending, holds)
            routed = self._ended(done, pending, tool_calls) if done else Routed()
            due, cancelled = self._calls.unhold(holds.due())
            routed.ended += [(turning.claim, CallCancelledError(HELD_CANCELLED)) for turning in cancelled]
            group = routed.ended + self._send(routed.ask + due, into=pending, holds=holds)
            if group:
                yield group

    def _next_ended(self, pending: dict[Future[Any], Turning], holds: Holds) -> list[tuple[Turning, Future[Any]]]:
        """The calls that end next, with every other one that ends within `batch_flush_seconds`; none when a held
        call comes due first."""
        if not pending:
            time.sleep(holds.wait_seconds() or 0.0)
            return []
        first, _ = wait(pending, timeout=holds.wait_seconds(), return_when=FIRST_COMPLETED)
        done = [(pending.pop(future), future) for future in first]
        if done:
            more, _ = wait(pending, timeout=self._settings.batch_flush_seconds)
            done += [(pending.pop(future), future) for future in more]
        return done

    def _ended(
        self, done: list[tuple[Turning, Future[Any]]], pending: dict[Future[Any], Turning], tool_calls: set[Future[Any]]
    ) -> Routed:
        """Where the claims whose calls ended go next (their tool calls waited on in `pending`)."""
        endings = self._calls.ended([(turning, future) for turning, future in done if future not in tool_calls])
        arrivals = [(turning, ending, self._taken(turning, ending)) for turning, ending in endings]
        self._calls.keep(arrivals)
        events: list[tuple[Turning, Event]] = [(t, ToolDone(f)) for t, f in done if f in tool_calls]
        tool_calls.difference_update(future for _, future in done)
        routed = self._route([(turning, how) for turning, _, how in arrivals], events)
        _await_tools(routed.tools, into=pending, tool_calls=tool_calls)
        return routed

    def _taken(self, turning: Turning, ending: LLMReply | BaseException) -> Taken:
        if self._traces.enabled and isinstance(ending, LLMReply) and ending.usage is not None:
            cost = self._prices.cost(turning.request.model, ending.usage)
            self._traces.of(turning.claim.task_id).add_cost(cost)
        how = taken(turning, ending, model=turning.request.model, prices=self._prices)
        if isinstance(how, BaseException):
            return cut_to_fit(turning, how) or how
        return how

    def _resume(self, durable: list[Turning]) -> Routed:
        """The durable runs, their recorded steps replayed (one query, none without any) and routed to what
        each does first."""
        if not durable:
            return Routed()
        logs = self._runs.resume([(turning.claim, turning.work, turning.run) for turning in durable])
        return self._route([], [(replace(turning, log=log), None) for turning, log in zip(durable, logs, strict=True)])

    def _route(self, items: list[tuple[Turning, Taken]], events: list[tuple[Turning, Event]] | None = None) -> Routed:
        """Where each claim goes after what its call came to: a durable run's events recorded (one transaction
        for them all) and routed to what follows."""
        routed, events = Routed(), list(events or ())
        for turning, how in items:
            if isinstance(how, Turning):
                routed.ask.append(how)
            elif isinstance(how, Replied):
                events.append((turning, how))
            else:
                routed.ended.append((turning.claim, how))
        if not events:
            return routed
        nexts = self._runs.advance([(_log(turning), event) for turning, event in events])
        for (turning, _), after in zip(events, nexts, strict=True):
            if isinstance(after, AskModel):
                routed.ask.append(turning.asking(after.request))
            elif isinstance(after, AwaitTools):
                routed.tools.append((turning, after.futures))
            elif isinstance(after, RunEnded):
                routed.ended.append((turning.claim, run_ended(after)))
            elif isinstance(after, Paused):
                routed.ended.append((turning.claim, after))
        return routed


def _await_tools(tooling: list[Tooling], *, into: dict[Future[Any], Turning], tool_calls: set[Future[Any]]) -> None:
    for turning, futures in tooling:
        into.update((future, turning) for future in futures)
        tool_calls.update(futures)


def _runs(decision: Decision) -> bool:
    return decision.verdict is Verdict.RUN


def _not_now(turning: Turning, decision: Decision) -> Settlement:
    """A call admission turned away: a second call's first outcome stands (its charge with it); else the
    claim is deferred or refused (a durable run's steps so far are recorded: it resumes after them)."""
    return turning.after if turning.after is not None else turned_away(decision)


def _log(turning: Turning) -> StepLog:
    assert turning.log is not None  # only durable runs have events
    return turning.log
