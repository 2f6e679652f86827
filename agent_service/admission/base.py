"""The admission seam: between claiming a task and calling the model, each check answers run, defer
(try later without spending an attempt) or refuse (fail now with a clear error).

An admission control (a rate limit, a concurrency cap, a spend cap, a breaker, a pause) is one file in
this package implementing `AdmissionCheck`; `Admission` asks the configured checks in order.
"""

from __future__ import annotations

import enum
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from agent_service.llm.messages import LLMReply, LLMRequest
from agent_service.models import LimitScope
from agent_service.monitoring import TURNED_AWAY
from agent_service.store.agents import AgentSpec

logger = logging.getLogger("agent_service")


@dataclass(frozen=True)
class Override:
    """A setting of a control that an agent, a user or a model may have of its own (`cli.py limits set`):
    what it means, and whom it may be set for. Its value is a number."""

    meaning: str
    scopes: frozenset[LimitScope]


class Verdict(str, enum.Enum):
    """What a check says of one task."""

    RUN = "run"
    DEFER = "defer"
    REFUSE = "refuse"


@dataclass(frozen=True)
class Decision:
    """A verdict with its reason, and for a deferral how long to wait before trying again (`holdable`: whether
    the worker may hold the call meanwhile, its claim kept, rather than give the task back to the queue). A run
    may carry a `request` to send instead of the task's own (a fallback model, say)."""

    verdict: Verdict
    reason: str = ""
    retry_in: float = 0.0
    request: LLMRequest | None = None
    holdable: bool = True

    @classmethod
    def run(cls, *, request: LLMRequest | None = None) -> Decision:
        return _RUN if request is None else cls(Verdict.RUN, request=request)

    @classmethod
    def defer(cls, reason: str, *, retry_in: float, holdable: bool = True) -> Decision:
        return cls(Verdict.DEFER, reason, retry_in, holdable=holdable)

    @classmethod
    def refuse(cls, reason: str) -> Decision:
        return cls(Verdict.REFUSE, reason)


_RUN = Decision(Verdict.RUN)
# A control that cannot reach its shared state (Redis) lets nothing through, as it cannot tell whether a
# call would pass a limit; the tasks wait this long, their attempts unspent.
UNREACHABLE_RETRY_SECONDS = 5.0


def unreachable(candidates: Sequence[Candidate], control: str, error: Exception) -> list[Decision]:
    """Every candidate deferred because `control`'s shared state could not be read (`error`); given back to the
    queue rather than held: an outage may last."""
    logger.warning("%s unavailable, tasks deferred: %s", control, error)
    reason = f"{control} unavailable"
    return [Decision.defer(reason, retry_in=UNREACHABLE_RETRY_SECONDS, holdable=False) for _ in candidates]


def release_failed(control: str, error: Exception) -> None:
    """`release` must not raise: what it could not give back expires by itself."""
    logger.warning("%s could not release (its reservations expire by themselves): %s", control, error)


@dataclass(frozen=True)
class Candidate:
    """A claimed task about to be sent to the model: who asked, with which agent, and the request."""

    task_id: uuid.UUID
    user_id: str
    attempt: int
    agent: AgentSpec
    request: LLMRequest

    @property
    def call_id(self) -> str:
        """This attempt's call, as the shared state of every control names it: `<task id>:<attempt>`."""
        return f"{self.task_id}:{self.attempt}"


@dataclass(frozen=True)
class CallEnded:
    """What became of an admitted candidate: its reply, or the (classified) error its call raised; neither
    when it was turned away by a later check and never called."""

    candidate: Candidate
    reply: LLMReply | None = None
    error: BaseException | None = None

    @property
    def called(self) -> bool:
        return self.reply is not None or self.error is not None


class AdmissionCheck(Protocol):
    """One admission control. Checks see a whole batch at once, so a shared limit can be asked once."""

    name: str  # the `control` label of agent_service_admission_turned_away_total

    def admit(self, candidates: Sequence[Candidate]) -> list[Decision]:
        """One decision per candidate, in order."""

    def release(self, ended: Sequence[CallEnded]) -> None:
        """These admitted candidates are done, called or not: give back leases, reconcile reservations with
        the real usage, count successes and failures. Must not raise."""


class Admission:
    """The configured checks, asked in order: a candidate runs only if every check says run; the first
    check to defer or refuse it decides, and later checks do not see it."""

    def __init__(self, checks: Sequence[AdmissionCheck] = ()) -> None:
        self.checks = tuple(checks)

    def admit(self, candidates: Sequence[Candidate]) -> list[Decision]:
        """One decision per candidate, in order. A check that runs a candidate with another request passes
        that request on to the later checks and to the call. What a check granted to a candidate that a
        later check turned away is released at once, as is every grant when a check raises.
        Raises: what a check raises (the pipeline defers the batch while the shared state is out of reach)."""
        current = list(candidates)
        decisions = [Decision.run()] * len(candidates)
        granted: list[tuple[AdmissionCheck, list[int]]] = []
        try:
            for check in self.checks:
                asked = [index for index, decision in enumerate(decisions) if decision.verdict is Verdict.RUN]
                if not asked:
                    break
                for index, answer in zip(asked, check.admit([current[index] for index in asked]), strict=True):
                    decisions[index] = _carried(answer, decisions[index])
                    if answer.request is not None:
                        current[index] = replace(current[index], request=answer.request)
                    if answer.verdict is not Verdict.RUN:
                        TURNED_AWAY.labels(check.name, answer.verdict.value).inc()
                granted.append((check, [index for index in asked if decisions[index].verdict is Verdict.RUN]))
        except Exception:
            # A check failed: nothing runs, so what the earlier checks granted is given back at once.
            decisions = [Decision.defer("a check failed", retry_in=0.0)] * len(candidates)
            raise
        finally:
            for check, indexes in granted:
                if turned_away := [CallEnded(current[i]) for i in indexes if decisions[i].verdict is not Verdict.RUN]:
                    _release_quietly(check, turned_away)
        return decisions

    def release(self, ended: Sequence[CallEnded]) -> None:
        """The calls of these admitted candidates have ended. A check that fails to take note is logged and
        passed over: what it holds expires on its own (every control's state does)."""
        if ended:
            for check in self.checks:
                _release_quietly(check, ended)


def _release_quietly(check: AdmissionCheck, ended: Sequence[CallEnded]) -> None:
    """`check.release`, logged and passed over when it fails: what it holds expires on its own."""
    try:
        check.release(ended)
    except Exception:
        logger.exception("admission check %s could not release %d call(s)", type(check).__name__, len(ended))


def _carried(answer: Decision, before: Decision) -> Decision:
    """A plain run keeps the request an earlier check chose."""
    if answer.verdict is Verdict.RUN and answer.request is None and before.request is not None:
        return before
    return answer
