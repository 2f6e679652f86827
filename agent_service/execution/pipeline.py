"""Running agent tasks: claim, admit, call, record. Plain functions with explicit collaborators; the
Celery task shells in `tasks.py` call them."""

from __future__ import annotations

import itertools
import re
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from agent_service.admission.base import Admission, CallEnded, Candidate, Decision, Verdict
from agent_service.clock import utcnow
from agent_service.config import Settings
from agent_service.database import session_scope
from agent_service.errors import (
    CallCancelledError,
    ContentFilteredError,
    ContextLengthExceededError,
    InvalidOutputError,
    PermanentError,
    RetryableError,
    TaskValidationError,
    classify,
)
from agent_service.execution.cancellation import RunningCalls
from agent_service.execution.liveness import current_owner, owner_is_gone
from agent_service.execution.outcomes import Outcome, TaskOutcome
from agent_service.execution.replies import Arrived, ReplyStore
from agent_service.execution.retry import backoff_delay
from agent_service.execution.steps import (
    ApiRun,
    AskModel,
    AwaitTools,
    Event,
    Paused,
    Replied,
    RunEnded,
    StepRuns,
    ToolDone,
)
from agent_service.execution.tool_calls import ToolCaller
from agent_service.ids import parse_task_id
from agent_service.kinds import KINDS, kind_named
from agent_service.kinds.base import KindName, KindResult, TaskKind, TaskWork
from agent_service.live.events import EventKind, stream_key
from agent_service.live.publisher import LivePublisher, Update
from agent_service.llm.messages import LLMReply, LLMRequest, Message, Usage
from agent_service.llm.prices import PriceBook
from agent_service.llm.runners import LLMRunner
from agent_service.models import TaskStatus
from agent_service.monitoring import count_llm_usage, time_llm_calls
from agent_service.store import lifecycle
from agent_service.store.groups import note_tasks_ended
from agent_service.store.lifecycle import Charge, Claim, Finished, Skip

RECORD_ATTEMPTS = 5
CONTENT_FILTERED = "content_filter"  # the finish_reason of a reply the provider's filter stopped
# Figures in a provider's context-length error (OpenAI's wordings).
CONTEXT_LIMIT = re.compile(r"maximum context length is (\d+)")
PROMPT_SIZE = re.compile(r"(\d+) in the messages|resulted in (\d+) tokens")
NO_ADMISSION_CHECKS = Admission()


@dataclass(frozen=True)
class Answer:
    """A reply its kind accepted, with the model that gave it and what the call cost."""

    result: KindResult
    model: str
    usage: Usage | None
    charge: Charge | None


@dataclass(frozen=True)
class Unusable:
    """A reply that was paid for but cannot be the task's result (filtered, or refused by its kind)."""

    error: RetryableError | PermanentError
    charge: Charge | None
    text: str = ""  # the reply, for a re-ask


# What a claim ends with: an answer, a paid reply it cannot use, a deferral by admission, a pause for a
# reviewer (multi-step runs), or the exception that stopped it.
Settlement = Answer | Unusable | Decision | Paused | BaseException
# Told of each group of outcomes as it is recorded, each with its position in the batch.
OnSettled = Callable[[list[tuple[int, TaskOutcome]]], None] | None
# Told, after the commit, of the groups whose last task that commit ended.
OnGroupsEnded = Callable[[list[str]], None] | None
# The outcomes that end a task (a superseded claim's task was ended by whoever superseded it).
_ENDING = (Outcome.COMPLETED, Outcome.FAILED)


@dataclass(frozen=True)
class _Prepared:
    """A claim ready to call: its kind, its work and the request built for it."""

    claim: Claim
    kind: TaskKind
    work: TaskWork
    candidate: Candidate
    truncated: bool = False  # sent again with its description cut to fit the model's context
    reasked: bool = False  # sent again with its unusable reply and why (once)
    paid_before: Charge | None = None  # what this attempt's earlier call cost (a re-ask's first reply)
    run: ApiRun | None = None  # a multi-step run (the api kind): its turns and tool calls are steps


@dataclass
class _Routed:
    """Where multi-step runs go after their events: a model turn to admit, tool calls to wait on, or the end."""

    ask: list[_Prepared] = field(default_factory=list)
    tools: list[tuple[_Prepared, tuple[Future[Any], ...]]] = field(default_factory=list)
    ended: list[tuple[Claim, Settlement]] = field(default_factory=list)


def execute_agent_task(
    task_id: Any,
    *,
    session_factory: sessionmaker[Session],
    settings: Settings,
    llm: LLMRunner,
    admission: Admission = NO_ADMISSION_CHECKS,
    prices: PriceBook | None = None,
    replies: ReplyStore | None = None,
    tool_caller: ToolCaller | None = None,
) -> TaskOutcome:
    """Run one attempt of one task; see `execute_agent_tasks`."""
    return execute_agent_tasks(
        [task_id],
        session_factory=session_factory,
        settings=settings,
        llm=llm,
        admission=admission,
        prices=prices,
        replies=replies,
        tool_caller=tool_caller,
    )[0]


def execute_agent_tasks(
    task_ids: Sequence[Any],
    *,
    session_factory: sessionmaker[Session],
    settings: Settings,
    llm: LLMRunner,
    admission: Admission = NO_ADMISSION_CHECKS,
    kinds: Mapping[str, TaskKind] = KINDS,
    on_settled: OnSettled = None,
    prices: PriceBook | None = None,
    replies: ReplyStore | None = None,
    running: RunningCalls | None = None,
    live: LivePublisher | None = None,
    on_groups_ended: OnGroupsEnded = None,
    tool_caller: ToolCaller | None = None,
) -> list[TaskOutcome]:
    """Run one attempt of each task: claim them all in one transaction, ask `admission` which may run,
    call the LLM for those (concurrently, on `llm`) with no connection held, and record the outcomes as
    the replies arrive: one transaction per group that arrived within `batch_flush_seconds`, so a slow
    reply never holds back the others. A deferred task gives its attempt back.

    Every reply is charged to its task (tokens and cost at `prices`, by default those the settings give),
    a reply that cannot be used as well.

    With `replies`, a task whose earlier attempt was lost after its reply arrived is settled with that
    reply, and a cacheable call with a cached one, before admission and with no call; each reply that
    arrives is kept until its outcome is recorded. With `running`, the calls under way are listed there so
    that cancelling a task aborts its call. With `live`, the calls of the tasks someone follows stream their
    tokens to the task's stream, after a `started` event (the outcomes' events are the caller's, through
    `on_settled`).

    A multi-step run (the api kind) resumes after its last recorded step, records each model turn and tool
    call as it happens (`execution.steps`), makes its tool calls on `tool_caller` (by default one of its own),
    and (with `live`) publishes each step for the task's followers.

    `on_settled` is called with each group of outcomes once it is recorded (the deliveries that are not to
    run come first, right after the claim), each outcome with the position of its id in `task_ids`; it must
    not raise. `on_groups_ended` is called likewise with the ids of the groups whose last task ended.

    Returns one outcome per id, in order. Raises: what the database raises (the caller classifies it);
    LLM errors are classified and recorded in the rows.
    """
    started = time.monotonic()
    prices = prices or PriceBook(settings)
    ids = [_valid_id(task_id) for task_id in task_ids]
    with session_scope(session_factory) as session:
        claimed = lifecycle.claim_tasks(
            session,
            [i for i in ids if isinstance(i, uuid.UUID)],
            settings=settings,
            now=utcnow(),
            owner=current_owner(),
            owner_is_gone=owner_is_gone,
        )
    claims = iter(claimed)
    steps = [next(claims) if isinstance(task_id, uuid.UUID) else task_id for task_id in ids]
    positions = {step.task_id: at for at, step in enumerate(steps) if isinstance(step, Claim)}
    not_run = [(at, _not_run(step, started)) for at, step in enumerate(steps) if not isinstance(step, Claim)]
    if not_run and on_settled:
        on_settled(not_run)
    settled: dict[uuid.UUID, TaskOutcome] = {}
    caller = tool_caller or ToolCaller(settings)  # its loop thread starts with the first tool call, if any
    step_runs = StepRuns(session_factory=session_factory, settings=settings, caller=caller, live=live)
    calls = _Calls(
        settings=settings,
        llm=llm,
        admission=admission,
        prices=prices,
        replies=replies,
        running=running,
        live=live,
        runs=step_runs,
    )

    def record(group: list[tuple[Claim, Settlement]]) -> None:
        _count_charges(how for _, how in group)
        outcomes, ended = _record(group, session_factory=session_factory, settings=settings, started=started)
        settled.update(outcomes)
        if on_settled:
            on_settled([(positions[task_id], outcome) for task_id, outcome in outcomes.items()])
        if replies:
            replies.forget((claim.task_id, claim.attempt) for claim, _ in group if claim.task_id in calls.replied)
        if ended and on_groups_ended:
            on_groups_ended(ended)

    runs = [step for step in steps if isinstance(step, Claim)]
    try:
        for group in calls.settlements(runs, kinds=kinds):
            record(group)
    except Exception as exc:
        # Cut short (the soft time limit, say): the claims not yet settled are settled with that error, since
        # a row left running under a live owner would wait for the stale threshold.
        calls.abandon(runs)
        record([(claim, exc) for claim in runs if claim.task_id not in settled])
    finally:
        if tool_caller is None:
            caller.close()
    not_run_at = dict(not_run)
    return [settled[step.task_id] if isinstance(step, Claim) else not_run_at[at] for at, step in enumerate(steps)]


class _Calls:
    """How a batch's claims end: settled before any call (stored replies, admission), or by their calls."""

    def __init__(
        self,
        *,
        settings: Settings,
        llm: LLMRunner,
        admission: Admission,
        prices: PriceBook,
        replies: ReplyStore | None,
        running: RunningCalls | None,
        live: LivePublisher | None,
        runs: StepRuns,
    ) -> None:
        self._settings, self._llm, self._admission, self._prices = settings, llm, admission, prices
        self._replies, self._running, self._live, self._runs = replies, running, live, runs
        self.replied: set[uuid.UUID] = set()  # the claims settled from a reply, which is kept until recorded

    def settlements(
        self, claims: list[Claim], *, kinds: Mapping[str, TaskKind]
    ) -> Iterator[list[tuple[Claim, Settlement]]]:
        """Each claim with how it ends, in groups: first those settled without a call (stored replies, the
        claims that must not run, those admission turned away), then the replies, the first to arrive with
        every other one that arrives within the next `batch_flush_seconds`. A task too long for its model's
        context whose agent allows it is sent again, once, with its description cut to fit (through admission
        again)."""
        stopped: list[tuple[Claim, Settlement]] = []
        prepared: list[_Prepared] = []
        for claim in claims:
            step = _prepare(claim, kinds=kinds)
            if isinstance(step, _Prepared):
                prepared.append(step)
            else:
                stopped.append((claim, step))
        resumed = self._resume(prepared)
        stopped += resumed.ended
        prepared = [step for step in prepared if step.kind.name != KindName.API] + resumed.ask
        stored = self._replies.lookup([step.candidate for step in prepared]) if self._replies else {}
        to_admit: list[_Prepared] = []
        kept_turns: list[tuple[_Prepared, Event]] = []
        for step in prepared:
            found = stored.get(step.claim.task_id)
            if found is not None and step.run is not None and found.position != step.run.position:
                found = None  # a turn recorded already
            if found is not None:
                self.replied.add(step.claim.task_id)
                how = _answered(step, found.reply, model=found.model, prices=self._prices)
                if step.run is not None and isinstance(how, Answer):
                    kept_turns.append((step, Replied(found.reply, how.model, how.charge)))
                else:
                    stopped.append((step.claim, how))
            elif step.claim.attempt > self._settings.task_max_attempts:
                # Only a run whose worker died gets here: the row was claimed but never settled.
                stopped.append((step.claim, _gave_up(step.claim)))
            else:
                to_admit.append(step)
        after_kept = self._advance(kept_turns)
        stopped += after_kept.ended
        to_admit += after_kept.ask
        decisions = _admit(self._admission, [step.candidate for step in to_admit], settings=self._settings)
        stopped += [
            (step.claim, _turned_away(decision))
            for step, decision in zip(to_admit, decisions, strict=True)
            if decision.verdict is not Verdict.RUN
        ]
        if stopped:
            yield stopped
        admitted = [
            _with_request(step, decision.request)
            for step, decision in zip(to_admit, decisions, strict=True)
            if decision.verdict is Verdict.RUN
        ]
        yield from self._calls(admitted, tooling=resumed.tools + after_kept.tools)

    def abandon(self, claims: list[Claim]) -> None:
        """These claims are settled otherwise (cut short): their calls are no longer ours to abort, and their
        kept replies stay kept, for the next attempt."""
        if self._running:
            self._running.discard(claim.task_id for claim in claims)
        self.replied.clear()

    def _calls(
        self, admitted: list[_Prepared], *, tooling: list[tuple[_Prepared, tuple[Future[Any], ...]]]
    ) -> Iterator[list[tuple[Claim, Settlement]]]:
        """The calls' outcomes, in groups as they arrive. A multi-step run's turn that arrives is recorded and
        followed by its tool calls (waited on here too) and its next turn (admitted again), until it ends."""
        pending: dict[Future[Any], _Prepared] = {}
        tool_calls: set[Future[Any]] = set()
        self._submit(_streamed(self._live, admitted) if self._live else admitted, into=pending)
        self._await_tools(tooling, into=pending, tool_calls=tool_calls)
        while pending:
            first, _ = wait(pending, return_when=FIRST_COMPLETED)
            done = [(pending.pop(future), future) for future in first]
            more, _ = wait(pending, timeout=self._settings.batch_flush_seconds)
            done += [(pending.pop(future), future) for future in more]
            ended = self._arrived([(step, future) for step, future in done if future not in tool_calls])
            self._admission.release([_call_ended(step, ending) for step, ending, _ in ended])
            events: list[tuple[_Prepared, Event]] = [(s, ToolDone(f)) for s, f in done if f in tool_calls]
            tool_calls.difference_update(future for _, future in done)
            group: list[tuple[Claim, Settlement]] = []
            tries: list[tuple[_Prepared, Settlement | None]] = []
            for step, ending, how in ended:
                if step.run is not None and isinstance(how, Answer) and isinstance(ending, LLMReply):
                    events.append((step, Replied(ending, how.model, how.charge)))
                elif (retry := _second_try(step, how)) is not None:
                    tries.append((retry, how))
                else:
                    group.append((step.claim, how))
            routed = self._advance(events)
            group += routed.ended
            self._await_tools(routed.tools, into=pending, tool_calls=tool_calls)
            tries += [(step, None) for step in routed.ask]
            decisions = _admit(self._admission, [step.candidate for step, _ in tries], settings=self._settings)
            for (step, first_ending), decision in zip(tries, decisions, strict=True):
                if decision.verdict is Verdict.RUN:
                    self._submit([_with_request(step, decision.request)], into=pending)
                elif first_ending is not None:  # no second try now: the first call's outcome stands, its charge
                    group.append((step.claim, first_ending))
                else:  # a run's next turn turned away: its steps so far are recorded, it resumes after them
                    group.append((step.claim, _turned_away(decision)))
            if group:
                yield group

    def _resume(self, prepared: list[_Prepared]) -> _Routed:
        """The multi-step runs among `prepared`, rebuilt from their steps (one query, none without any) and
        routed to what each does first."""
        api = [step for step in prepared if step.kind.name == KindName.API]
        if not api:
            return _Routed()
        runs = self._runs.resume([(step.claim, step.work, step.candidate.request) for step in api])
        return self._advance([(replace(step, run=run), None) for step, run in zip(api, runs, strict=True)])

    def _advance(self, events: list[tuple[_Prepared, Event]]) -> _Routed:
        """Take in the runs' events (their steps recorded in one transaction) and route each to what follows."""
        routed = _Routed()
        if not events:
            return routed
        nexts = self._runs.advance([(step.run, event) for step, event in events if step.run is not None])
        for (step, _), after in zip(events, nexts, strict=True):
            if isinstance(after, AskModel):  # a followed task's turns go on streaming to its followers
                request = replace(after.request, stream_key=step.candidate.request.stream_key)
                routed.ask.append(replace(step, candidate=replace(step.candidate, request=request)))
            elif isinstance(after, AwaitTools):
                routed.tools.append((step, after.futures))
            elif isinstance(after, RunEnded):
                routed.ended.append((step.claim, _run_ended(after)))
            elif isinstance(after, Paused):
                routed.ended.append((step.claim, after))
        return routed

    def _await_tools(
        self,
        tooling: list[tuple[_Prepared, tuple[Future[Any], ...]]],
        *,
        into: dict[Future[Any], _Prepared],
        tool_calls: set[Future[Any]],
    ) -> None:
        for step, futures in tooling:
            into.update((future, step) for future in futures)
            tool_calls.update(futures)

    def _submit(self, steps: list[_Prepared], *, into: dict[Future[Any], _Prepared]) -> None:
        futures = self._llm.submit([step.candidate.request for step in steps])
        time_llm_calls(futures, [step.candidate.request.model for step in steps])
        into.update(zip(futures, steps, strict=True))
        if self._running:
            self._running.add((step.claim.task_id, future) for future, step in zip(futures, steps, strict=True))

    def _arrived(
        self, ended: list[tuple[_Prepared, Future[LLMReply]]]
    ) -> list[tuple[_Prepared, LLMReply | BaseException, Settlement]]:
        """Interpret these ended calls, and keep their replies (in one write) as soon as they are seen."""
        if self._running:
            self._running.discard(step.claim.task_id for step, _ in ended)
        endings = [(step, _ending(future)) for step, future in ended]
        settled = [(step, ending, _interpret(step, ending, prices=self._prices)) for step, ending in endings]
        arrived = [
            Arrived(
                step.candidate,
                ending,
                cacheable=isinstance(how, Answer) and step.run is None,
                position=step.run.position if step.run else None,
            )
            for step, ending, how in settled
            if isinstance(ending, LLMReply)
        ]
        if self._replies and arrived:
            self._replies.keep(arrived)
            self.replied.update(item.candidate.task_id for item in arrived)
        return settled


def _streamed(live: LivePublisher, steps: list[_Prepared]) -> list[_Prepared]:
    """The steps, those of followed tasks with their request streaming its tokens (a re-ask keeps it), after
    a `started` event: one round trip to ask, one more only when some are followed."""
    followed = live.followed([step.claim.task_id for step in steps])
    if not followed:
        return steps
    started = [step for step in steps if str(step.claim.task_id) in followed]
    details = ({"attempt": step.claim.attempt, "model": step.candidate.request.model} for step in started)
    live.publish_many(Update(step.claim.task_id, EventKind.STARTED, data) for step, data in zip(started, details))
    return [
        _with_request(step, replace(step.candidate.request, stream_key=stream_key(step.claim.task_id)))
        if str(step.claim.task_id) in followed
        else step
        for step in steps
    ]


def _with_request(step: _Prepared, request: LLMRequest | None) -> _Prepared:
    """The step with the request admission chose instead of the task's own, if it chose one."""
    return step if request is None else replace(step, candidate=replace(step.candidate, request=request))


def _second_try(step: _Prepared, how: Settlement) -> _Prepared | None:
    """The step to send again, once, within this attempt: cut to fit its context, or re-asked; else None (and
    never a multi-step run's turn, whose conversation is its steps)."""
    if step.run is not None:
        return None
    return _cut_to_fit(step, how) or _reask(step, how)


def _run_ended(ended: RunEnded) -> Settlement:
    """A run's end as the claim's settlement: its answer (each turn charged when recorded, so none here)."""
    if ended.result is None:
        return ended.error or PermanentError("the run ended without a result")
    return Answer(ended.result, ended.model, ended.usage, charge=None)


def _reask(step: _Prepared, how: Settlement) -> _Prepared | None:
    """The step again with its unusable reply and the reason, when the reply was not the structured output
    asked for and it was not re-asked already; else None. The first reply stays in the books."""
    if not (isinstance(how, Unusable) and isinstance(how.error, InvalidOutputError) and not step.reasked):
        return None
    request = step.candidate.request
    correction = f"That reply cannot be used: {how.error}. Answer again with only the output asked for."
    messages = (*request.messages, Message("assistant", how.text), Message("user", correction))
    candidate = replace(step.candidate, request=replace(request, messages=messages))
    return replace(step, candidate=candidate, reasked=True, paid_before=how.charge)


def _cut_to_fit(step: _Prepared, how: Settlement) -> _Prepared | None:
    """The step again with its description cut to fit its model's context, when the call exceeded it, the
    agent allows cutting and it was not cut already; else None."""
    if not (isinstance(how, ContextLengthExceededError) and step.work.agent.truncate_to_fit and not step.truncated):
        return None
    description = fitted_description(step.work.description, str(how), request=step.candidate.request)
    if description is None:
        return None
    work = replace(step.work, description=description)
    candidate = replace(step.candidate, request=step.kind.build_request(work))
    return replace(step, work=work, candidate=candidate, truncated=True)


def fitted_description(description: str, error: str, *, request: LLMRequest) -> str | None:
    """`description` cut so that the request fits the context the provider's `error` states ("maximum context
    length is N tokens ... M in the messages" or "resulted in M tokens"), with a tenth to spare; None when the
    error gives no figures or cutting all of the description would not be enough."""
    limit, prompt = _first_number(CONTEXT_LIMIT, error), _first_number(PROMPT_SIZE, error)
    if limit is None or prompt is None:
        return None
    room = limit - request.max_tokens  # what the messages may use
    characters = sum(len(message.content) for message in request.messages)
    excess_chars = (prompt - room) * characters / prompt * 1.1
    keep = int(len(description) - excess_chars)
    return description[:keep] if keep > 0 else None


def _first_number(pattern: re.Pattern[str], text: str) -> int | None:
    found = pattern.search(text)
    return int(next(group for group in found.groups() if group)) if found else None


def _admit(admission: Admission, candidates: list[Candidate], *, settings: Settings) -> list[Decision]:
    """Admission's decisions; while the state the controls share is out of reach (Redis down), every task
    waits, its attempt given back, rather than run unchecked or fail. Raises: a PermanentError of a check."""
    try:
        return admission.admit(candidates)
    except Exception as exc:
        error = classify(exc)
        if isinstance(error, PermanentError):
            raise error from exc
        wait_for = backoff_delay(1, settings=settings, requested=error.delay)
        return [Decision.defer(f"admission controls unavailable: {error}", retry_in=wait_for)] * len(candidates)


def _ending(future: Future[LLMReply]) -> LLMReply | BaseException:
    """The reply of an ended call, or the error it ended with (an aborted one: CallCancelledError)."""
    if future.cancelled():
        return CallCancelledError("cancelled while its LLM call ran; the call was aborted")
    return future.exception() or future.result()


def _call_ended(step: _Prepared, ending: LLMReply | BaseException) -> CallEnded:
    if isinstance(ending, BaseException):
        return CallEnded(step.candidate, error=ending)
    return CallEnded(step.candidate, reply=ending)


def _prepare(claim: Claim, *, kinds: Mapping[str, TaskKind]) -> _Prepared | PermanentError:
    if claim.agent is None:
        return PermanentError(f"bad agent configuration: {claim.agent_error}")
    try:
        kind = kind_named(claim.kind or claim.agent.kind, kinds)
        work = TaskWork(claim.agent, claim.title, claim.description, claim.payload)
        request = kind.build_request(work)
    except PermanentError as exc:
        return exc
    candidate = Candidate(claim.task_id, claim.user_id, claim.attempt, claim.agent, request)
    return _Prepared(claim, kind, work, candidate)


def _gave_up(claim: Claim) -> PermanentError:
    return PermanentError(f"gave up after {claim.attempt - 1} attempts: the worker running it was lost each time")


def _turned_away(decision: Decision) -> Settlement:
    if decision.verdict is Verdict.REFUSE:
        return PermanentError(f"refused: {decision.reason}")
    return decision


def _interpret(step: _Prepared, ending: LLMReply | BaseException, *, prices: PriceBook) -> Settlement:
    model = step.candidate.request.model
    if isinstance(ending, BaseException):
        classified = classify(ending)  # the LLM process classifies its errors; an in-process runner does not
        if isinstance(classified, ContextLengthExceededError):
            classified = ContextLengthExceededError(str(classified).replace("the model's", f"{model}'s", 1))
        # A re-ask that failed: its first reply was paid for all the same.
        return Unusable(classified, step.paid_before) if step.paid_before else classified
    return _answered(step, ending, model=model, prices=prices)


def _answered(step: _Prepared, reply: LLMReply, *, model: str, prices: PriceBook) -> Settlement:
    """The answer if the task's kind accepts the reply, else the paid reply with the error it raised. A reply
    with no usage (a cache hit) is charged nothing."""
    charge = (
        Charge(model, reply.usage, prices.cost(model, reply.usage)).after(step.paid_before) if reply.usage else None
    )
    charge = charge or step.paid_before
    if reply.finish_reason == CONTENT_FILTERED:
        return Unusable(ContentFilteredError(f"the provider's content filter stopped {model}'s reply"), charge)
    try:
        return Answer(step.kind.interpret(step.work, reply), model, reply.usage, charge)
    except (PermanentError, RetryableError) as exc:
        return Unusable(exc, charge, reply.text)


def _count_charges(settlements: Iterable[Settlement]) -> None:
    for how in settlements:
        if isinstance(how, Answer | Unusable) and how.charge is not None:
            count_llm_usage(how.charge.model, tokens=how.charge.token_counts(), cost_usd=how.charge.cost_usd)


def _record(
    group: list[tuple[Claim, Settlement]],
    *,
    session_factory: sessionmaker[Session],
    settings: Settings,
    started: float,
) -> tuple[dict[uuid.UUID, TaskOutcome], list[str]]:
    """Record a group of outcomes in one transaction, each timed from `started` (the claim) to the commit,
    with the groups (of tasks) that this ends; returns the outcomes and the ids of those groups. The replies
    are paid for, so a database that is briefly unreachable (a restart, a failover) is waited for here rather
    than by a new attempt."""
    for attempt in itertools.count(1):
        try:
            with session_scope(session_factory) as session:
                outcomes = {claim.task_id: _settle(session, claim, how, settings=settings) for claim, how in group}
                # Only grouped tasks: an ungrouped one costs no query here.
                ended = [
                    claim.task_id for claim, _ in group if claim.group_id and outcomes[claim.task_id].status in _ENDING
                ]
                groups_ended = note_tasks_ended(session, ended, now=utcnow())
            seconds = time.monotonic() - started
            return {task_id: replace(outcome, seconds=seconds) for task_id, outcome in outcomes.items()}, groups_ended
        except Exception as exc:
            if attempt == RECORD_ATTEMPTS or not isinstance(classify(exc), RetryableError):
                raise
            time.sleep(backoff_delay(attempt, settings=settings))
    raise AssertionError("unreachable")


def _settle(session: Session, claim: Claim, how: Settlement, *, settings: Settings) -> TaskOutcome:
    if isinstance(how, Paused):  # recorded with its steps: the task awaits a reviewer, its claim given back
        return _outcome(claim, Outcome.PAUSED, error=how.reason)
    if isinstance(how, Decision):
        if not lifecycle.record_deferral(session, claim, reason=how.reason, now=utcnow()):
            return _superseded(session, claim)
        return _outcome(claim, Outcome.DEFERRED, error=how.reason, retry_in=how.retry_in)
    if isinstance(how, BaseException):
        return _record_error(session, claim, classify(how), settings=settings)
    if isinstance(how, Unusable):
        return _record_error(session, claim, how.error, settings=settings, charge=how.charge)
    result = how.result.text[: settings.max_result_length]
    done = lifecycle.record_success(
        session, claim, result=result, result_data=how.result.data, model=how.model, charge=how.charge, now=utcnow()
    )
    if not done:
        return _superseded(session, claim)
    usage = how.usage
    tokens = {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens} if usage else {}
    finished = Finished(TaskStatus.COMPLETED, result=result, usage=usage)
    return _outcome(claim, Outcome.COMPLETED, finished=finished, **tokens)


def _record_error(
    session: Session,
    claim: Claim,
    error: RetryableError | PermanentError,
    *,
    settings: Settings,
    charge: Charge | None = None,
) -> TaskOutcome:
    retry = isinstance(error, RetryableError) and claim.attempt < settings.task_max_attempts
    exhausted = isinstance(error, RetryableError) and not retry
    message = f"gave up after {claim.attempt} attempts: {error}" if exhausted else str(error)
    record = lifecycle.record_retry if retry else lifecycle.record_failure
    if not record(session, claim, error=message, charge=charge, now=utcnow()):
        return _superseded(session, claim, error=message)
    if retry:
        requested = error.delay if isinstance(error, RetryableError) else None
        delay = backoff_delay(claim.attempt, settings=settings, requested=requested)
        return _outcome(claim, Outcome.RETRYING, error=message, retry_in=delay)
    return _outcome(claim, Outcome.FAILED, error=message, finished=Finished(TaskStatus.FAILED, error=message))


def _superseded(session: Session, claim: Claim, **details: Any) -> TaskOutcome:
    """The claim was lost: the task was cancelled, or another delivery took it over (and settles it)."""
    return _outcome(claim, Outcome.SUPERSEDED, finished=lifecycle.finished_state(session, claim.task_id), **details)


def _valid_id(task_id: Any) -> uuid.UUID | TaskValidationError:
    try:
        return parse_task_id(task_id)
    except TaskValidationError as exc:
        return exc


def _not_run(step: Skip | TaskValidationError, started: float) -> TaskOutcome:
    seconds = time.monotonic() - started
    if isinstance(step, TaskValidationError):
        return TaskOutcome("invalid", Outcome.REJECTED, error=str(step), seconds=seconds)
    if step.status is None:
        return TaskOutcome(
            str(step.task_id), Outcome.REJECTED, error=f"task not found: {step.task_id}", seconds=seconds
        )
    return TaskOutcome(str(step.task_id), Outcome.SKIPPED, error=step.reason, finished=step.finished, seconds=seconds)


def _outcome(claim: Claim, status: Outcome, **details: Any) -> TaskOutcome:
    agent_id = str(claim.agent.id) if claim.agent else None
    return TaskOutcome(str(claim.task_id), status, attempt=claim.attempt, agent_id=agent_id, **details)
