"""The admission seam's decisions: checks asked in order, the first to turn a candidate away decides,
later checks never see it, and what an earlier check granted to it is given back at once."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence

import pytest

from agent_service.admission.base import Admission, CallEnded, Candidate, Decision, Verdict
from agent_service.llm.messages import LLMRequest, Message, ModelOptions
from agent_service.store.agents import AgentSpec

AGENT = AgentSpec(uuid.uuid4(), "You are careful.", "gpt-4o-mini", 0.1, 100, ModelOptions())


def candidate(user_id: str) -> Candidate:
    request = LLMRequest("gpt-4o-mini", 0.1, 100, ModelOptions(), (Message("user", f"task of {user_id}"),))
    return Candidate(uuid.uuid4(), user_id, 1, AGENT, request)


class RecordingCheck:
    """A check that answers by a rule on each candidate, and records what it was asked and given back."""

    name = "recording"

    def __init__(self, rule: Callable[[Candidate], Decision] = lambda _: Decision.run()) -> None:
        self.rule = rule
        self.asked: list[list[str]] = []
        self.released: list[list[str]] = []

    def admit(self, candidates: Sequence[Candidate]) -> list[Decision]:
        self.asked.append([c.user_id for c in candidates])
        return [self.rule(c) for c in candidates]

    def release(self, ended: Sequence[CallEnded]) -> None:
        self.released.append([e.candidate.user_id for e in ended])


def defer(user_id: str, reason: str = "busy") -> Callable[[Candidate], Decision]:
    return lambda c: Decision.defer(reason, retry_in=2.0) if c.user_id == user_id else Decision.run()


def refuse(user_id: str, reason: str = "paused") -> Callable[[Candidate], Decision]:
    return lambda c: Decision.refuse(reason) if c.user_id == user_id else Decision.run()


def verdicts(decisions: list[Decision]) -> list[Verdict]:
    return [decision.verdict for decision in decisions]


def test_with_no_check_configured_every_candidate_runs():
    assert verdicts(Admission().admit([candidate("a"), candidate("b")])) == [Verdict.RUN, Verdict.RUN]


def test_a_deferral_carries_its_reason_and_when_to_try_again():
    [decision] = Admission([RecordingCheck(defer("a", "rate limit for user a"))]).admit([candidate("a")])
    assert decision == Decision(Verdict.DEFER, "rate limit for user a", 2.0)


def test_checks_are_asked_in_order_and_the_first_to_turn_a_candidate_away_decides():
    # Given a first check that defers a, and a second that would refuse both a and b
    first, second = RecordingCheck(defer("a")), RecordingCheck(lambda c: Decision.refuse("closed"))
    # When a, b and c are admitted
    decisions = Admission([first, second]).admit([candidate("a"), candidate("b"), candidate("c")])
    # Then a is deferred (the first check decided), b and c refused by the second
    assert [(d.verdict, d.reason) for d in decisions] == [
        (Verdict.DEFER, "busy"),
        (Verdict.REFUSE, "closed"),
        (Verdict.REFUSE, "closed"),
    ]


def test_a_later_check_never_sees_a_candidate_an_earlier_one_turned_away():
    first, second = RecordingCheck(refuse("a")), RecordingCheck()
    Admission([first, second]).admit([candidate("a"), candidate("b")])
    assert (first.asked, second.asked) == ([["a", "b"]], [["b"]])


def test_when_every_candidate_is_turned_away_the_later_checks_are_not_asked():
    first, second = RecordingCheck(lambda c: Decision.defer("full", retry_in=1.0)), RecordingCheck()
    Admission([first, second]).admit([candidate("a")])
    assert second.asked == []


def test_what_a_check_granted_to_a_candidate_a_later_check_turned_away_is_released_at_once():
    # Given three checks: the first grants a and b, the second defers b, the third refuses a
    first, second, third = RecordingCheck(), RecordingCheck(defer("b")), RecordingCheck(refuse("a"))
    Admission([first, second, third]).admit([candidate("a"), candidate("b"), candidate("c")])
    # Then the first gives back a and b, the second (which granted a) gives back a, the third nothing
    assert sorted(map(sorted, first.released)) == [["a", "b"]]
    assert second.released == [["a"]]
    assert third.released == []


def test_nothing_is_released_when_every_candidate_runs():
    first, second = RecordingCheck(), RecordingCheck()
    Admission([first, second]).admit([candidate("a"), candidate("b")])
    assert (first.released, second.released) == ([], [])


def test_releasing_ended_calls_reaches_every_check_and_releasing_none_reaches_none():
    first, second = RecordingCheck(), RecordingCheck()
    admission = Admission([first, second])
    admission.release([CallEnded(candidate("a"))])
    admission.release([])
    assert (first.released, second.released) == ([["a"]], [["a"]])


def test_a_check_may_run_a_candidate_with_another_request_which_later_checks_and_the_call_see():
    # Given a first check that sends user a's task to a fallback model, and a second that records what it sees
    fallback = LLMRequest("gpt-4o", 0.1, 100, ModelOptions(), (Message("user", "task of a"),))
    first = RecordingCheck(lambda c: Decision.run(request=fallback) if c.user_id == "a" else Decision.run())
    seen: list[str] = []
    second = RecordingCheck(lambda c: seen.append(c.request.model) or Decision.run())
    # When both are asked
    decisions = Admission([first, second]).admit([candidate("a"), candidate("b")])
    # Then the second check saw the fallback for a, and the decision carries it to the call
    assert seen == ["gpt-4o", "gpt-4o-mini"]
    assert [d.request.model if d.request else None for d in decisions] == ["gpt-4o", None]


def test_when_a_later_check_raises_what_the_earlier_ones_granted_is_given_back():
    # Given a first check that grants everything, and a second whose shared state is out of reach
    first = RecordingCheck()

    class OutOfReach(RecordingCheck):
        def admit(self, candidates: Sequence[Candidate]) -> list[Decision]:
            raise ConnectionError("Redis is down")

    # When a batch is asked about, Then the error reaches the caller and the first check's grants are released
    with pytest.raises(ConnectionError):
        Admission([first, OutOfReach()]).admit([candidate("a"), candidate("b")])
    assert first.released == [["a", "b"]]
