"""The admission seam: between claiming a task and calling the model, each check answers run, defer
(try later without spending an attempt) or refuse (fail now with a clear error).

An admission control (a rate limit, a concurrency cap, a spend cap, a breaker, a pause) is one file in
this package implementing `AdmissionCheck`; `Admission` asks the configured checks in order.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from llm.messages import LLMRequest
from store.agents import AgentSpec


class Verdict(str, enum.Enum):
    """What a check says of one task."""

    RUN = "run"
    DEFER = "defer"
    REFUSE = "refuse"


@dataclass(frozen=True)
class Decision:
    """A verdict with its reason, and for a deferral how long to wait before trying again."""

    verdict: Verdict
    reason: str = ""
    retry_in: float = 0.0

    @classmethod
    def run(cls) -> Decision:
        return _RUN

    @classmethod
    def defer(cls, reason: str, *, retry_in: float) -> Decision:
        return cls(Verdict.DEFER, reason, retry_in)

    @classmethod
    def refuse(cls, reason: str) -> Decision:
        return cls(Verdict.REFUSE, reason)


_RUN = Decision(Verdict.RUN)


@dataclass(frozen=True)
class Candidate:
    """A claimed task about to be sent to the model: who asked, with which agent, and the request."""

    task_id: uuid.UUID
    user_id: str
    attempt: int
    agent: AgentSpec
    request: LLMRequest


class AdmissionCheck(Protocol):
    """One admission control. Checks see a whole batch at once, so a shared limit can be asked once."""

    def admit(self, candidates: Sequence[Candidate]) -> list[Decision]:
        """One decision per candidate, in order."""

    def release(self, candidates: Sequence[Candidate]) -> None:
        """The calls of these admitted candidates have ended, whatever their outcome (give back leases)."""


class Admission:
    """The configured checks, asked in order: a candidate runs only if every check says run; the first
    check to defer or refuse it decides, and later checks do not see it."""

    def __init__(self, checks: Sequence[AdmissionCheck] = ()) -> None:
        self.checks = tuple(checks)

    def admit(self, candidates: Sequence[Candidate]) -> list[Decision]:
        """One decision per candidate, in order. What a check granted to a candidate that a later check
        turned away is released at once."""
        decisions = [Decision.run()] * len(candidates)
        granted: list[tuple[AdmissionCheck, list[int]]] = []
        for check in self.checks:
            asked = [index for index, decision in enumerate(decisions) if decision.verdict is Verdict.RUN]
            if not asked:
                break
            for index, answer in zip(asked, check.admit([candidates[index] for index in asked]), strict=True):
                decisions[index] = answer
            granted.append((check, [index for index in asked if decisions[index].verdict is Verdict.RUN]))
        for check, indexes in granted:
            if turned_away := [candidates[i] for i in indexes if decisions[i].verdict is not Verdict.RUN]:
                check.release(turned_away)
        return decisions

    def release(self, candidates: Sequence[Candidate]) -> None:
        """The calls of these admitted candidates have ended."""
        if candidates:
            for check in self.checks:
                check.release(candidates)
