"""Running agent tasks: claim, admit, call, record. Plain functions with explicit collaborators; the
Celery task shells in `tasks.py` call them."""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from admission.base import Admission, CallEnded, Candidate, Decision, Verdict
from config import Settings
from database import session_scope
from errors import CallCancelledError, PermanentError, RetryableError, TaskValidationError, classify
from execution.aborts import RunningCalls
from execution.liveness import current_owner, owner_is_gone
from execution.outcomes import Outcome, TaskOutcome
from execution.replies import Arrived, ReplyStore
from execution.retry import backoff_delay
from kinds import KINDS, kind_named
from kinds.base import KindResult, TaskKind, TaskWork
from llm.messages import LLMReply, LLMRequest, Usage
from llm.runners import LLMRunner
from models import TaskStatus
from monitoring import time_llm_calls
from store import lifecycle
from store.lifecycle import Claim, Finished, Skip, utcnow

RECORD_ATTEMPTS = 5
NO_ADMISSION_CHECKS = Admission()


@dataclass(frozen=True)
class Answer:
    """A reply its kind accepted, with the model that gave it and what the call cost."""

    result: KindResult
    model: str
    usage: Usage | None


# What a claim ends with: an answer, a deferral by admission, or the exception that stopped it.
Settlement = Answer | Decision | BaseException
# Told of each group of outcomes as it is recorded, each with its position in the batch.
OnSettled = Callable[[list[tuple[int, TaskOutcome]]], None] | None


@dataclass(frozen=True)
class _Prepared:
    """A claim ready to call: its kind, its work and the request built for it."""

    claim: Claim
    kind: TaskKind
    work: TaskWork
    candidate: Candidate


def execute_agent_task(
    task_id: Any,
    *,
    session_factory: sessionmaker[Session],
    settings: Settings,
    llm: LLMRunner,
    admission: Admission = NO_ADMISSION_CHECKS,
    replies: ReplyStore | None = None,
) -> TaskOutcome:
    """Run one attempt of one task; see `execute_agent_tasks`."""
    return execute_agent_tasks(
        [task_id], session_factory=session_factory, settings=settings, llm=llm, admission=admission, replies=replies
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
    replies: ReplyStore | None = None,
    running: RunningCalls | None = None,
) -> list[TaskOutcome]:
    """Run one attempt of each task: claim them all in one transaction, ask `admission` which may run,
    call the LLM for those (concurrently, on `llm`) with no connection held, and record the outcomes as
    the replies arrive: one transaction per group that arrived within `batch_flush_seconds`, so a slow
    reply never holds back the others. A deferred task gives its attempt back.

    With `replies`, a task whose earlier attempt was lost after its reply arrived is settled with that
    reply, and a cacheable call with a cached one, before admission and with no call; each reply that
    arrives is kept until its outcome is recorded. With `running`, the calls under way are listed there so
    that cancelling a task aborts its call.

    `on_settled` is called with each group of outcomes once it is recorded (the deliveries that are not to
    run come first, right after the claim), each outcome with the position of its id in `task_ids`; it must
    not raise.

    Returns one outcome per id, in order. Raises: what the database raises (the caller classifies it);
    LLM errors are classified and recorded in the rows.
    """
    started = time.monotonic()
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
    calls = _Calls(settings=settings, llm=llm, admission=admission, replies=replies, running=running)

    def record(group: list[tuple[Claim, Settlement]]) -> None:
        outcomes = _record(group, session_factory=session_factory, settings=settings, started=started)
        settled.update(outcomes)
        if on_settled:
            on_settled([(positions[task_id], outcome) for task_id, outcome in outcomes.items()])
        if replies:
            replies.forget((claim.task_id, claim.attempt) for claim, _ in group if claim.task_id in calls.replied)

    runs = [step for step in steps if isinstance(step, Claim)]
    try:
        for group in calls.settlements(runs, kinds=kinds):
            record(group)
    except Exception as exc:
        # Cut short (the soft time limit, say): the claims not yet settled are settled with that error, since
        # a row left running under a live owner would wait for the stale threshold.
        calls.abandon(runs)
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


class _Calls:
    """How a batch's claims end: settled before any call (stored replies, admission), or by their calls."""

    def __init__(
        self,
        *,
        settings: Settings,
        llm: LLMRunner,
        admission: Admission,
        replies: ReplyStore | None,
        running: RunningCalls | None,
    ) -> None:
        self._settings, self._llm, self._admission = settings, llm, admission
        self._replies, self._running = replies, running
        self.replied: set[uuid.UUID] = set()  # the claims settled from a reply, which is kept until recorded

    def settlements(
        self, claims: list[Claim], *, kinds: Mapping[str, TaskKind]
    ) -> Iterator[list[tuple[Claim, Settlement]]]:
        """Each claim with how it ends, in groups: first those settled without a call (stored replies, the
        claims that must not run, those admission turned away), then the replies, the first to arrive with
        every other one that arrives within the next `batch_flush_seconds`."""
        stopped: list[tuple[Claim, Settlement]] = []
        prepared: list[_Prepared] = []
        for claim in claims:
            step = _prepare(claim, kinds=kinds)
            if isinstance(step, _Prepared):
                prepared.append(step)
            else:
                stopped.append((claim, step))
        stored = self._replies.lookup([step.candidate for step in prepared]) if self._replies else {}
        to_admit: list[_Prepared] = []
        for step in prepared:
            if (found := stored.get(step.claim.task_id)) is not None:
                self.replied.add(step.claim.task_id)
                stopped.append((step.claim, _answered(step, found.reply, model=found.model)))
            elif step.claim.attempt > self._settings.task_max_attempts:
                # Only a run whose worker died gets here: the row was claimed but never settled.
                stopped.append((step.claim, _gave_up(step.claim)))
            else:
                to_admit.append(step)
        decisions = self._admission.admit([step.candidate for step in to_admit])
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
        yield from self._calls(admitted)

    def abandon(self, claims: list[Claim]) -> None:
        """These claims are settled otherwise (cut short): their calls are no longer ours to abort, and their
        kept replies stay kept, for the next attempt."""
        if self._running:
            self._running.discard(claim.task_id for claim in claims)
        self.replied.clear()

    def _calls(self, admitted: list[_Prepared]) -> Iterator[list[tuple[Claim, Settlement]]]:
        futures = self._llm.submit([step.candidate.request for step in admitted])
        time_llm_calls(futures, [step.candidate.request.model for step in admitted])
        pending: dict[Future[LLMReply], _Prepared] = dict(zip(futures, admitted, strict=True))
        if self._running:
            self._running.add((step.claim.task_id, future) for future, step in pending.items())
        while pending:
            first, _ = wait(pending, return_when=FIRST_COMPLETED)
            ended = self._arrived([(pending.pop(future), future) for future in first])
            more, _ = wait(pending, timeout=self._settings.batch_flush_seconds)
            ended += self._arrived([(pending.pop(future), future) for future in more])
            self._admission.release([_call_ended(step, ending) for step, ending, _ in ended])
            yield [(step.claim, how) for step, _, how in ended]

    def _arrived(
        self, ended: list[tuple[_Prepared, Future[LLMReply]]]
    ) -> list[tuple[_Prepared, LLMReply | BaseException, Settlement]]:
        """Interpret these ended calls, and keep their replies (in one write) as soon as they are seen."""
        if self._running:
            self._running.discard(step.claim.task_id for step, _ in ended)
        endings = [(step, _ending(future)) for step, future in ended]
        settled = [(step, ending, _interpret(step, ending)) for step, ending in endings]
        arrived = [
            Arrived(step.candidate, ending, cacheable=isinstance(how, Answer))
            for step, ending, how in settled
            if isinstance(ending, LLMReply)
        ]
        if self._replies and arrived:
            self._replies.keep(arrived)
            self.replied.update(item.candidate.task_id for item in arrived)
        return settled


def _with_request(step: _Prepared, request: LLMRequest | None) -> _Prepared:
    """The step with the request admission chose instead of the task's own, if it chose one."""
    return step if request is None else replace(step, candidate=replace(step.candidate, request=request))


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
        kind = kind_named(claim.agent.kind, kinds)
        work = TaskWork(claim.agent, claim.title, claim.description)
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


def _interpret(step: _Prepared, ending: LLMReply | BaseException) -> Settlement:
    if isinstance(ending, BaseException):
        return ending
    return _answered(step, ending, model=step.candidate.request.model)


def _answered(step: _Prepared, reply: LLMReply, *, model: str) -> Settlement:
    """The answer if the task's kind accepts the reply, else the error it raised."""
    try:
        return Answer(step.kind.interpret(step.work, reply), model, reply.usage)
    except (PermanentError, RetryableError) as exc:
        return exc


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
    result = how.result.text[: settings.max_result_length]
    done = lifecycle.record_success(session, claim, result=result, model=how.model, usage=how.usage, now=utcnow())
    if not done:
        return _superseded(session, claim)
    usage = how.usage
    tokens = {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens} if usage else {}
    finished = Finished(TaskStatus.COMPLETED, result=result, usage=usage)
    return _outcome(claim, Outcome.COMPLETED, finished=finished, **tokens)


def _record_error(
    session: Session, claim: Claim, error: RetryableError | PermanentError, *, settings: Settings
) -> TaskOutcome:
    retry = isinstance(error, RetryableError) and claim.attempt < settings.task_max_attempts
    exhausted = isinstance(error, RetryableError) and not retry
    message = f"gave up after {claim.attempt} attempts: {error}" if exhausted else str(error)
    record = lifecycle.record_retry if retry else lifecycle.record_failure
    if not record(session, claim, error=message, now=utcnow()):
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
