"""Which calls admission turned away a batch holds (its claim kept) and until when, on a clock the test moves."""

from __future__ import annotations

import uuid
from types import SimpleNamespace

from agent_service.admission.base import Decision
from agent_service.execution.scheduling import Holds


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def turning(*, after=None) -> SimpleNamespace:
    """What the holds read of a claim on its way: its task id, and what it ends with if it cannot call now."""
    return SimpleNamespace(claim=SimpleNamespace(task_id=uuid.uuid4()), after=after)


def test_a_deferral_is_held_until_its_wait_has_passed():
    clock = Clock()
    holds, held = Holds(30, clock=clock), turning()
    assert holds.hold(held, Decision.defer("cap", retry_in=2.0))
    assert holds.wait_seconds() == 2.0 and holds.due() == []
    clock.now += 2.0
    assert holds.due() == [held] and not holds


def test_a_claim_is_held_no_longer_than_the_limit_in_all():
    clock = Clock()
    holds, held = Holds(5, clock=clock), turning()
    assert holds.hold(held, Decision.defer("cap", retry_in=3.0))
    clock.now += 3.0
    holds.due()
    # a second wait that would take it past 5 s held in all: given back instead
    assert not holds.hold(held, Decision.defer("cap", retry_in=3.0))


def test_what_may_not_wait_in_the_batch_is_not_held():
    holds = Holds(30, clock=Clock())
    assert not holds.hold(turning(), Decision.defer("paused", retry_in=3.0, holdable=False))
    assert not holds.hold(turning(), Decision.defer("spend cap", retry_in=300.0))  # longer than the limit
    assert not holds.hold(turning(after=RuntimeError("first try's outcome")), Decision.defer("cap", retry_in=1.0))
    assert not holds.hold(turning(), Decision.refuse("over the cap"))
    assert not Holds(0, clock=Clock()).hold(turning(), Decision.defer("cap", retry_in=0.0))
    assert holds.wait_seconds() is None
