"""Running agent tasks: claim, admit, call, record. Plain functions with explicit collaborators; the
Celery task shells in `tasks.py` call them."""

from __future__ import annotations

import itertools
import re
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from admission.base import Admission, CallEnded, Candidate, Decision, Verdict
from config import Settings
from database import session_scope
from errors import (
    ContentFilteredError,
    ContextLengthExceededError,
    PermanentError,
    RetryableError,
    TaskValidationError,
    classify,
)
from execution.liveness import current_owner, owner_is_gone
from execution.outcomes import Outcome, TaskOutcome
from execution.retry import backoff_delay
from kinds import KINDS, kind_named
from kinds.base import KindResult, TaskKind, TaskWork
from llm.messages import LLMReply, LLMRequest, Usage
from llm.prices import PriceBook
from llm.runners import LLMRunner
from models import TaskStatus
from monitoring import count_llm_usage, time_llm_calls
from store import lifecycle
from store.lifecycle import Charge, Claim, Finished, Skip, utcnow

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


# What a claim ends with: an answer, a paid reply it cannot use, a deferral by admission, or the exception
# that stopped it.
Settlement = Answer | Unusable | Decision | BaseException
# Told of each group of outcomes as it is recorded, each with its position in the batch.
OnSettled = Callable[[list[tuple[int, TaskOutcome]]], None] | None


@dataclass(frozen=True)
class _Prepared:
    claim: Claim
    kind: TaskKind
    work: TaskWork
    candidate: Candidate
    truncated: bool = False  # sent again with its description cut to fit the model's context


def execute_agent_task(
    task_id: Any,
    *,
    session_factory: sessionmaker[Session],
    settings: Settings,
    llm: LLMRunner,
    admission: Admission = NO_ADMISSION_CHECKS,
    prices: PriceBook | None = None,
) -> TaskOutcome:
    """Run one attempt of one task; see `execute_agent_tasks`."""
    return execute_agent_tasks(
        [task_id], session_factory=session_factory, settings=settings, llm=llm, admission=admission, prices=prices
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
) -> list[TaskOutcome]:
    """Run one attempt of each task: claim them all in one transaction, ask `admission` which may run,
    call the LLM for those (concurrently, on `llm`) with no connection held, and record the outcomes as
    the replies arrive: one transaction per group that arrived within `batch_flush_seconds`, so a slow
    reply never holds back the others. A deferred task gives its attempt back.

    Every reply is charged to its task (tokens and cost at `prices`, by default those the settings give),
    a reply that cannot be used as well.

    `on_settled` is called with each group of outcomes once it is recorded (the deliveries that are not to
    run come first, right after the claim), each outcome with the position of its id in `task_ids`; it must
    not raise.

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

    def record(group: list[tuple[Claim, Settlement]]) -> None:
        outcomes = _record(group, session_factory=session_factory, settings=settings, started=started)
        settled.update(outcomes)
        _count_charges(how for _, how in group)
        if on_settled:
            on_settled([(positions[task_id], outcome) for task_id, outcome in outcomes.items()])

    runs = [step for step in steps if isinstance(step, Claim)]
    try:
        for group in _settlements(runs, settings=settings, llm=llm, admission=admission, kinds=kinds, prices=prices):
            record(group)
    except Exception as exc:
        # Cut short (the soft time limit, say): the claims not yet settled are settled with that error, since
        # a row left running under a live owner would wait for the stale threshold.
        record([(claim, exc) for claim in runs if claim.task_id not in settled])
    not_run_at = dict(not_run)
    return [settled[step.task_id] if isinstance(step, Claim) else not_run_at[at] for at, step in enumerate(steps)]


def parse_task_id(task_id: Any) -> uuid.UUID:
    """Raises: TaskValidationError when `task_id` is not a UUID (or its string)."""
    if isinstance(task_id, uuid.UUID):
        return task_id
    try:
        return uuid.UUID(task_id)
    except (TypeError, ValueError, AttributeError):
        raise TaskValidationError(f"invalid task id: a task id must be a UUID string, got {task_id!r:.80}") from None


def _settlements(
    claims: list[Claim],
    *,
    settings: Settings,
    llm: LLMRunner,
    admission: Admission,
    kinds: Mapping[str, TaskKind],
    prices: PriceBook,
) -> Iterator[list[tuple[Claim, Settlement]]]:
    """Each claim with how it ends, in groups: first the claims that must not run and those admission
    turned away, then the replies, the first to arrive with every other one that arrives within the next
    `batch_flush_seconds`. A task too long for its model's context whose agent allows it is sent again,
    once, with its description cut to fit (through admission again)."""
    prepared: list[tuple[Claim, _Prepared]] = []
    stopped: list[tuple[Claim, Settlement]] = []
    for claim in claims:
        step = _prepare(claim, settings=settings, kinds=kinds)
        if isinstance(step, _Prepared):
            prepared.append((claim, step))
        else:
            stopped.append((claim, step))
    decisions = _admit(admission, [step.candidate for _, step in prepared], settings=settings)
    stopped += [
        (claim, _turned_away(decision))
        for (claim, _), decision in zip(prepared, decisions, strict=True)
        if decision.verdict is not Verdict.RUN
    ]
    if stopped:
        yield stopped
    admitted = [
        _with_request(step, decision.request)
        for (_, step), decision in zip(prepared, decisions, strict=True)
        if decision.verdict is Verdict.RUN
    ]
    pending: dict[Future[LLMReply], _Prepared] = {}
    _submit(admitted, llm=llm, into=pending)
    while pending:
        first, _ = wait(pending, return_when=FIRST_COMPLETED)
        more, _ = wait(pending.keys() - first, timeout=settings.batch_flush_seconds)
        ended = [(pending.pop(future), future) for future in first | more]
        admission.release([_call_ended(step, future) for step, future in ended])
        outcomes = [(step, _interpret(step, future, prices=prices)) for step, future in ended]
        again = [cut for step, how in outcomes if (cut := _cut_to_fit(step, how, kinds=kinds)) is not None]
        retried = {step.claim.task_id for step in again}
        group = [(step.claim, how) for step, how in outcomes if step.claim.task_id not in retried]
        for step, decision in zip(again, admission.admit([step.candidate for step in again]), strict=True):
            if decision.verdict is Verdict.RUN:
                _submit([_with_request(step, decision.request)], llm=llm, into=pending)
            else:
                group.append((step.claim, _turned_away(decision)))
        if group:
            yield group


def _submit(steps: list[_Prepared], *, llm: LLMRunner, into: dict[Future[LLMReply], _Prepared]) -> None:
    futures = llm.submit([step.candidate.request for step in steps])
    time_llm_calls(futures, [step.candidate.request.model for step in steps])
    into.update(zip(futures, steps, strict=True))


def _cut_to_fit(step: _Prepared, how: Settlement, *, kinds: Mapping[str, TaskKind]) -> _Prepared | None:
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
    characters = sum(len(text) for _, text in request.messages)
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


def _with_request(step: _Prepared, request: LLMRequest | None) -> _Prepared:
    """The step with the request admission chose instead of the task's own, if it chose one."""
    return step if request is None else replace(step, candidate=replace(step.candidate, request=request))


def _call_ended(step: _Prepared, future: Future[LLMReply]) -> CallEnded:
    error = future.exception()
    return CallEnded(step.candidate, error=error) if error is not None else CallEnded(step.candidate, future.result())


def _prepare(claim: Claim, *, settings: Settings, kinds: Mapping[str, TaskKind]) -> _Prepared | PermanentError:
    if claim.agent is None:
        return PermanentError(f"bad agent configuration: {claim.agent_error}")
    if claim.attempt > settings.task_max_attempts:
        # Only a run whose worker died gets here: the row was claimed but never settled.
        return PermanentError(f"gave up after {claim.attempt - 1} attempts: the worker running it was lost each time")
    try:
        kind = kind_named(claim.agent.kind, kinds)
        work = TaskWork(claim.agent, claim.title, claim.description)
        request = kind.build_request(work)
    except PermanentError as exc:
        return exc
    candidate = Candidate(claim.task_id, claim.user_id, claim.attempt, claim.agent, request)
    return _Prepared(claim, kind, work, candidate)


def _turned_away(decision: Decision) -> Settlement:
    if decision.verdict is Verdict.REFUSE:
        return PermanentError(f"refused: {decision.reason}")
    return decision


def _interpret(step: _Prepared, future: Future[LLMReply], *, prices: PriceBook) -> Settlement:
    model = step.candidate.request.model
    error = future.exception()
    if error is not None:
        classified = classify(error)  # the LLM process classifies its errors; an in-process runner does not
        if isinstance(classified, ContextLengthExceededError):
            return ContextLengthExceededError(str(classified).replace("the model's", f"{model}'s", 1))
        return classified
    reply = future.result()
    charge = Charge(model, reply.usage, prices.cost(model, reply.usage)) if reply.usage else None
    if reply.finish_reason == CONTENT_FILTERED:
        return Unusable(ContentFilteredError(f"the provider's content filter stopped {model}'s reply"), charge)
    try:
        return Answer(step.kind.interpret(step.work, reply), model, reply.usage, charge)
    except (PermanentError, RetryableError) as exc:
        return Unusable(exc, charge)


def _count_charges(settlements: Iterable[Settlement]) -> None:
    for how in settlements:
        if isinstance(how, Answer | Unusable) and how.charge is not None:
            usage = how.charge.usage
            tokens = {
                "prompt": usage.prompt_tokens,
                "completion": usage.completion_tokens,
                "cached": usage.cached_tokens,
            }
            count_llm_usage(how.charge.model, tokens=tokens, cost_usd=how.charge.cost_usd)


def _record(
    group: list[tuple[Claim, Settlement]],
    *,
    session_factory: sessionmaker[Session],
    settings: Settings,
    started: float,
) -> dict[uuid.UUID, TaskOutcome]:
    """Record a group of outcomes in one transaction, each timed from `started` (the claim) to the commit.
    The replies are paid for, so a database that is briefly unreachable (a restart, a failover) is waited
    for here rather than by a new attempt."""
    for attempt in itertools.count(1):
        try:
            with session_scope(session_factory) as session:
                outcomes = {claim.task_id: _settle(session, claim, how, settings=settings) for claim, how in group}
            seconds = time.monotonic() - started
            return {task_id: replace(outcome, seconds=seconds) for task_id, outcome in outcomes.items()}
        except Exception as exc:
            if attempt == RECORD_ATTEMPTS or not isinstance(classify(exc), RetryableError):
                raise
            time.sleep(backoff_delay(attempt, settings=settings))
    raise AssertionError("unreachable")


def _settle(session: Session, claim: Claim, how: Settlement, *, settings: Settings) -> TaskOutcome:
    if isinstance(how, Decision):
        if not lifecycle.record_deferral(session, claim, reason=how.reason, now=utcnow()):
            return _superseded(session, claim)
        return _outcome(claim, Outcome.DEFERRED, error=how.reason, retry_in=how.retry_in)
    if isinstance(how, BaseException):
        return _record_error(session, claim, classify(how), settings=settings)
    if isinstance(how, Unusable):
        return _record_error(session, claim, how.error, settings=settings, charge=how.charge)
    result = how.result.text[: settings.max_result_length]
    done = lifecycle.record_success(session, claim, result=result, model=how.model, charge=how.charge, now=utcnow())
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
