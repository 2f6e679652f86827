"""A claim on its way through its run's turns (`Turning`), and what each model call's ending leads to: the
run's next turn, a durable run's event to record, or the claim's settlement. Nothing here names a kind:
a kind's run decides, through `kinds.base`'s protocol."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from agent_service.admission.base import Candidate, Decision, Verdict
from agent_service.errors import (
    CallNotSentError,
    ContentFilteredError,
    ContextLengthExceededError,
    PermanentError,
    RetryableError,
    classify,
)
from agent_service.execution.plans import Replied, RunEnded
from agent_service.execution.settling import Answer, Settlement, Unusable
from agent_service.execution.steps import StepLog
from agent_service.kinds import kind_named
from agent_service.kinds.base import AskModel, End, ModelReplied, Run, TaskKind, TaskWork, Turn
from agent_service.llm.messages import LLMReply, LLMRequest
from agent_service.llm.prices import PriceBook
from agent_service.store.lifecycle import Charge, Claim

CONTENT_FILTERED = "content_filter"  # the finish_reason of a reply the provider's filter stopped


@dataclass(frozen=True)
class Turning:
    """A claim on its way: its kind, its work, its kind's run, and the model call it asks now."""

    claim: Claim
    kind: TaskKind
    work: TaskWork
    run: Run
    candidate: Candidate | None = None  # the model call it asks (None: not known yet)
    log: StepLog | None = None  # a durable run: its steps
    truncated: bool = False  # started again with its description cut to fit the model's context
    paid: Charge | None = None  # what this attempt's earlier calls cost, not recorded yet (a one-shot run)
    after: Settlement | None = None  # what the claim ends with if this call cannot be made now

    @property
    def asked(self) -> Candidate:
        """The model call it asks."""
        assert self.candidate is not None  # asked for only once its run has said which
        return self.candidate

    @property
    def request(self) -> LLMRequest:
        return self.asked.request

    def asking(self, request: LLMRequest) -> Turning:
        """This claim asking `request` next (whether it streams is decided as it is sent: `Calls.submit`)."""
        claim = self.claim
        return replace(self, candidate=Candidate(claim.task_id, claim.user_id, claim.attempt, self.work.agent, request))


# What a claim does after a model call's ending: ask again, hand its durable run an event, or settle.
Taken = Turning | Replied | Settlement


def prepare(claim: Claim, *, kinds: Mapping[str, TaskKind]) -> Turning | Settlement:
    """The claim's run started: a durable one as is (its steps are loaded next), another with its first turn."""
    if claim.agent is None:
        return PermanentError(f"bad agent configuration: {claim.agent_error}")
    try:
        kind = kind_named(claim.kind or claim.agent.kind, kinds)
        work = TaskWork(claim.agent, claim.title, claim.description, claim.payload)
        turning = Turning(claim, kind, work, kind.start(work))
        return turning if kind.durable else following(turning, turning.run.next(None), model=work.agent.model)
    except (PermanentError, RetryableError) as exc:
        return exc


def following(
    turning: Turning, turn: Turn, *, model: str, charge: Charge | None = None, text: str = ""
) -> Turning | Settlement:
    """What a one-shot run's `turn` (after a reply of `model` that cost `charge`, or at its start) leads to."""
    if isinstance(turn, AskModel):
        after = None if turn.after is None else Unusable(turn.after, charge, text)
        return replace(turning.asking(turn.request), paid=charge, after=after)
    if isinstance(turn, End) and turn.result is not None:
        return Answer(turn.result, model, None, charge)
    error = turn.error if isinstance(turn, End) else None
    return Unusable(error or PermanentError(f"kind {turning.kind.name} calls tools: it must be durable"), charge, text)


def taken(turning: Turning, ending: LLMReply | BaseException, *, model: str, prices: PriceBook) -> Taken:
    """What the call's ending leads to: an error classified (with what the attempt paid so far), or the reply
    charged and given to the run (a durable run's as an event to record, a filtered one as a failure)."""
    if isinstance(ending, BaseException):
        return _failed(turning, ending, model=model)
    reply = ending
    charge = Charge(model, reply.usage, prices.cost(model, reply.usage)).after(turning.paid) if reply.usage else None
    charge = charge or turning.paid  # a reply with no usage (a cache hit) is charged nothing
    if reply.finish_reason == CONTENT_FILTERED:
        return Unusable(ContentFilteredError(f"the provider's content filter stopped {model}'s reply"), charge)
    if turning.log is not None:
        return Replied(reply, model, charge)
    try:
        turn = turning.run.next(ModelReplied(reply))
    except (PermanentError, RetryableError) as exc:
        return Unusable(exc, charge, reply.text)
    after = following(turning, turn, model=model, charge=charge, text=reply.text)
    return replace(after, usage=reply.usage) if isinstance(after, Answer) else after


def run_ended(ended: RunEnded) -> Settlement:
    """A durable run's end as the claim's settlement: its answer (each turn charged when recorded)."""
    if ended.result is None:
        return ended.error or PermanentError("the run ended without a result")
    return Answer(ended.result, ended.model, ended.usage, charge=None)


def turned_away(decision: Decision) -> Settlement:
    if decision.verdict is Verdict.REFUSE:
        return PermanentError(f"refused: {decision.reason}")
    return decision


def gave_up(claim: Claim) -> PermanentError:
    return PermanentError(f"gave up after {claim.attempt - 1} attempts: the worker running it was lost each time")


def _failed(turning: Turning, error: BaseException, *, model: str) -> Settlement:
    if isinstance(error, CallNotSentError):
        # Never sent, so nothing was paid: as if admission had turned it away.
        return turning.after or Decision.defer(str(error), retry_in=error.delay or 0.0)
    classified = classify_call_error(error, model=model)
    # A second call that failed: the first one's reply was paid for all the same.
    return Unusable(classified, turning.paid) if turning.paid else classified


def classify_call_error(error: BaseException, *, model: str) -> PermanentError | RetryableError:
    classified = classify(error)  # the LLM process classifies its errors; an in-process runner does not
    if isinstance(classified, ContextLengthExceededError):
        classified = ContextLengthExceededError(str(classified).replace("the model's", f"{model}'s", 1))
    return classified
