"""The durable runs of a batch together (`execution.steps`): their steps loaded in one query, each group of
events recorded in one short transaction, the tool calls started once the steps that must precede them are
committed, and each step published to the task's followers after the commit, before the tool calls it
announces are sent."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from datetime import datetime

from sqlalchemy.orm import Session, sessionmaker

from agent_service.config import Settings
from agent_service.database import session_scope
from agent_service.errors import PermanentError
from agent_service.execution.plans import AwaitTools, Event, Next, Plan, RunEnded
from agent_service.execution.steps import StepLog, call_values
from agent_service.execution.tool_calls import ToolCaller
from agent_service.kinds.base import Run, TaskWork
from agent_service.live import steps as live_steps
from agent_service.live.publisher import LivePublisher, Update
from agent_service.monitoring import count_llm_usage
from agent_service.store import lifecycle
from agent_service.store.lifecycle import Claim
from agent_service.store.steps import ClaimSteps, RecordedStep, load_steps, write_steps
from agent_service.tracing import NO_TRACES, TaskTraces

LOST_CLAIM = "the run lost its claim on the task (cancelled, or taken over) before its step was recorded"


class DurableRuns:
    """The durable runs of the batches of one worker: their steps loaded, recorded, and their tool calls made."""

    def __init__(
        self,
        *,
        session_factory: sessionmaker[Session],
        settings: Settings,
        caller: ToolCaller,
        clock: Callable[[], datetime],
        live: LivePublisher | None = None,
        traces: TaskTraces = NO_TRACES,
    ) -> None:
        self._session_factory, self._settings, self._caller = session_factory, settings, caller
        self._clock, self._live, self._traces = clock, live, traces

    def resume(self, runs: Sequence[tuple[Claim, TaskWork, Run]]) -> list[StepLog]:
        """Each claimed task's run, its recorded steps replayed into it (one query for them all)."""
        now = self._clock()
        recorded = self.load([claim.task_id for claim, _, _ in runs])
        return [
            StepLog(claim, run, recorded[claim.task_id], agent=work.agent, settings=self._settings, now=now)
            for claim, work, run in runs
        ]

    def advance(self, events: Sequence[tuple[StepLog, Event]]) -> list[Next]:
        """What comes next for each run after its event, the steps the events make recorded in one transaction
        first (a run whose claim was lost records nothing and ends)."""
        now = self._clock()
        plans = [run.step(event, now=now) for run, event in events]
        owned = [True] * len(plans)
        if any(plan.writes or plan.charge or plan.pause for plan in plans):  # a fresh run asks before it writes
            owned = self.record([(run.claim, plan) for (run, _), plan in zip(events, plans, strict=True)], now=now)
        updates: list[Update] = []
        for (run, _), plan, kept in zip(events, plans, owned, strict=True):
            if kept:
                if plan.charge is not None:
                    count_llm_usage(plan.charge.model, tokens=plan.charge.token_counts(), cost_usd=plan.charge.cost_usd)
                updates += _live_updates(run, plan)
        if self._live is not None and updates:
            # For the followed tasks only, in one round trip; before the tool calls announced here leave.
            self._live.publish_many(updates)
        return [self._next(run, plan, kept) for (run, _), plan, kept in zip(events, plans, owned, strict=True)]

    def _next(self, run: StepLog, plan: Plan, kept: bool) -> Next:
        """The run's next move: its end if its claim was lost, else its plan's, its tool calls sent first."""
        if not kept:
            return RunEnded(error=PermanentError(LOST_CLAIM))
        if not plan.start:
            return plan.next
        return AwaitTools(run.start(self._caller, plan.start, trace=self._traces.of(run.claim.task_id)))

    def load(self, task_ids: list[uuid.UUID]) -> dict[uuid.UUID, list[RecordedStep]]:
        """The recorded steps of each task, in position order (one query)."""
        with session_scope(self._session_factory) as session:
            return load_steps(session, task_ids)

    def record(self, plans: list[tuple[Claim, Plan]], *, now: datetime) -> list[bool]:
        """Write the plans' steps, charges and pauses (one transaction, the steps of them all written together);
        whether each claim still owned its task."""
        writing = [(claim, plan) for claim, plan in plans if plan.writes or plan.charge or plan.pause]
        with session_scope(self._session_factory) as session:
            written = write_steps(session, [ClaimSteps(c, p.writes, p.charge) for c, p in writing], now=now)
            owned = {
                claim.task_id: kept
                and (plan.pause is None or lifecycle.record_pause(session, claim, reason=plan.pause, now=now))
                for (claim, plan), kept in zip(writing, written, strict=True)
            }
        return [owned.get(claim.task_id, True) for claim, _ in plans]


def _live_updates(run: StepLog, plan: Plan) -> list[Update]:
    """What followers of the run see of this plan (`live.steps`): each step written, then each call sent."""
    events = [event for write in plan.writes for event in live_steps.written(write.position, write.values)]
    events += [live_steps.called(call.position, call.call.name, call_values(call)["arguments"]) for call in plan.start]
    return [Update(run.claim.task_id, kind, data) for kind, data in events]
