"""Running agent tasks: claim, admit, schedule turns, settle. Plain functions on one `RunContext`; the Celery
task shells in `tasks.py` call them.

Who does what: `scheduling` drives each claim's run of turns (`turns`, the kind's run deciding), with its
model calls (`calls`) and, for a durable kind, its steps (`steps`, `durable`); `truncation` is the second
try of a call too long for its model; `settling` records how each claim ends.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import Any

from agent_service.database import session_scope
from agent_service.errors import TaskValidationError
from agent_service.execution.calls import Calls
from agent_service.execution.context import RunContext
from agent_service.execution.durable import DurableRuns
from agent_service.execution.liveness import current_owner, owner_is_gone
from agent_service.execution.outcomes import Outcome, TaskOutcome
from agent_service.execution.scheduling import Scheduler
from agent_service.execution.settling import Settlement, count_charges, not_run, record
from agent_service.execution.tool_calls import ToolCaller
from agent_service.ids import parse_task_id
from agent_service.llm.prices import PriceBook
from agent_service.store import lifecycle
from agent_service.store.lifecycle import Claim


def execute_agent_task(task_id: Any, context: RunContext) -> TaskOutcome:
    """Run one attempt of one task; see `execute_agent_tasks`."""
    return execute_agent_tasks([task_id], context)[0]


def execute_agent_tasks(task_ids: Sequence[Any], context: RunContext) -> list[TaskOutcome]:
    """Run one attempt of each task: claim them all in one transaction, ask admission which may run, make
    their runs' calls (model calls concurrently on the LLM runner, tool calls beside them) with no
    connection held, and record the outcomes as they come: one transaction per group that ended within
    `batch_flush_seconds`, so a slow reply never holds back the others. A deferred task gives its attempt
    back. Every reply is charged to its task (a reply that cannot be used as well).

    With `context.replies`, a task whose earlier attempt was lost after its reply arrived is settled with
    that reply, and a cacheable call with a cached one, with no call; each reply that arrives is kept until
    its outcome is recorded. With `context.running`, cancelling a task aborts its call. With `context.live`,
    a followed task's calls stream their tokens to its stream after a `started` event, and a durable run's
    steps are published (the outcomes' events are the caller's, through `on_settled`).

    A durable kind's run resumes after its last recorded step and records each model turn and tool call as
    it happens (`execution.steps`).

    `context.on_settled` is called with each group of outcomes once it is recorded (the deliveries that are
    not to run come first, right after the claim), each outcome with the position of its id in `task_ids`;
    `context.on_groups_ended` likewise with the ids of the groups whose last task ended.

    Returns one outcome per id, in order. Raises: what the database raises (the caller classifies it);
    LLM errors are classified and recorded in the rows.
    """
    started, claim_ns = time.monotonic(), time.time_ns()
    settings, traces = context.settings, context.traces
    ids = [_valid_id(task_id) for task_id in task_ids]
    valid = [i for i in ids if isinstance(i, uuid.UUID)]
    # In a transaction, though the claim of queued tasks is one statement: see docs/decisions.md, "The claim reads
    # its agents in the same statement" (in autocommit, a cut-off worker came back to a claim it never confirmed).
    with session_scope(context.session_factory) as session:
        claimed = lifecycle.claim_tasks(
            session, valid, settings=settings, now=context.clock(), owner=current_owner(), owner_is_gone=owner_is_gone
        )
    traces.spans("claim", valid, start_ns=claim_ns)
    claims = iter(claimed)
    steps = [next(claims) if isinstance(task_id, uuid.UUID) else task_id for task_id in ids]
    positions = {step.task_id: at for at, step in enumerate(steps) if isinstance(step, Claim)}
    skipped = [(at, not_run(step, started)) for at, step in enumerate(steps) if not isinstance(step, Claim)]
    if skipped and context.on_settled:
        context.on_settled(skipped)
    settled: dict[uuid.UUID, TaskOutcome] = {}
    caller = context.tool_caller or ToolCaller(settings)  # its loop thread starts with the first tool call, if any
    calls = Calls(
        settings=settings,
        llm=context.llm,
        admission=context.admission,
        replies=context.replies,
        running=context.running,
        live=context.live,
        traces=traces,
    )
    scheduler = Scheduler(
        settings=settings,
        calls=calls,
        runs=DurableRuns(
            session_factory=context.session_factory,
            settings=settings,
            caller=caller,
            clock=context.clock,
            live=context.live,
            traces=traces,
        ),
        prices=context.prices or PriceBook(settings),
        replies=context.replies,
        kinds=context.kinds,
        traces=traces,
    )

    def settle(group: list[tuple[Claim, Settlement]]) -> None:
        count_charges(how for _, how in group)
        settle_ns = time.time_ns()
        outcomes, ended = record(
            group, session_factory=context.session_factory, settings=settings, clock=context.clock, started=started
        )
        traces.spans("settle", outcomes, start_ns=settle_ns)
        settled.update(outcomes)
        if context.on_settled:
            context.on_settled([(positions[task_id], outcome) for task_id, outcome in outcomes.items()])
        if context.replies:
            # A claim taken back before it could record its reply leaves it kept for the attempt that takes over.
            recorded = [
                (claim.task_id, claim.attempt)
                for claim, _ in group
                if claim.task_id in calls.replied and outcomes[claim.task_id].status != Outcome.SUPERSEDED
            ]
            context.replies.forget(recorded)
        if ended and context.on_groups_ended:
            context.on_groups_ended(ended)

    runs = [step for step in steps if isinstance(step, Claim)]
    try:
        for group in scheduler.settlements(runs):
            settle(group)
    except Exception as exc:
        # Cut short (the soft time limit, say): the claims not yet settled are settled with that error, since
        # a row left running under a live owner would wait for the stale threshold.
        calls.abandon([claim.task_id for claim in runs])
        settle([(claim, exc) for claim in runs if claim.task_id not in settled])
    finally:
        if context.tool_caller is None:
            caller.close()
    not_run_at = dict(skipped)
    return [settled[step.task_id] if isinstance(step, Claim) else not_run_at[at] for at, step in enumerate(steps)]


def _valid_id(task_id: Any) -> uuid.UUID | TaskValidationError:
    try:
        return parse_task_id(task_id)
    except TaskValidationError as exc:
        return exc
