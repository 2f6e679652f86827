"""The circuit breaker's states on real Redis, with a clock the test moves: failures open it, an
authentication error at once, task-caused errors never; while open tasks wait (or run on their agent's
fallback); after the cool-down one probe goes through, for every worker; its success closes the breaker,
its failure opens it again."""

from __future__ import annotations

import time
import uuid

import pytest
import redis
from prometheus_client import REGISTRY

from agent_service.admission.base import CallEnded, Candidate, Decision, Verdict
from agent_service.admission.breaker import KEY_PREFIX, BreakerPolicy, CircuitBreaker, build_breaker
from agent_service.errors import PermanentError, ProviderFault, RetryableError
from agent_service.llm.messages import LLMReply, LLMRequest, Message, ModelOptions, Usage
from agent_service.models import LimitScope
from agent_service.store.agents import AgentSpec
from agent_service.store.overrides import OverrideCache, set_override
from tests.integration.conftest import IDLE_REDIS

POLICY = BreakerPolicy(window_seconds=60, min_calls=4, failure_ratio=0.5, cooldown_seconds=10)
OVERLOADED = RetryableError("LLM request failed (503): overloaded", fault=ProviderFault.UNAVAILABLE)
BAD_KEY = PermanentError("LLM request failed (401): Incorrect API key provided", fault=ProviderFault.DENIED)
TOO_LONG = PermanentError("LLM request failed (400): context length exceeded")  # the task's own fault
REPLY = LLMReply("fine", Usage(3, 2, 5))


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def provider() -> str:
    """A provider of the test's own, so its breakers are the test's alone."""
    return f"llm-{uuid.uuid4().hex[:8]}.test"


@pytest.fixture
def client() -> redis.Redis:
    return redis.Redis.from_url(IDLE_REDIS)


def worker(client, provider, clock, *, lease: float = 60.0) -> CircuitBreaker:
    """One worker's breaker check; several made alike share their breakers through Redis."""
    return CircuitBreaker(client, provider=provider, policy=lambda _: POLICY, probe_lease_seconds=lease, clock=clock)


def candidate(model: str = "gpt-4o-mini", *, fallback: str | None = None) -> Candidate:
    agent = AgentSpec(uuid.uuid4(), "Be brief.", model, 0.1, 100, ModelOptions(), fallback_model=fallback)
    request = LLMRequest(model, 0.1, 100, ModelOptions(), (Message("user", "hello"),))
    return Candidate(uuid.uuid4(), "u1", 1, agent, request)


def ran(breaker: CircuitBreaker, *candidates: Candidate) -> list[Candidate]:
    """Admit the candidates; the ones that run (with the request they run with), the rest deferred."""
    decisions = breaker.admit(candidates)
    return [_with(c, d) for c, d in zip(candidates, decisions, strict=True) if d.verdict is Verdict.RUN]


def _with(c: Candidate, decision: Decision) -> Candidate:
    return Candidate(c.task_id, c.user_id, c.attempt, c.agent, decision.request or c.request)


def end(breaker: CircuitBreaker, calls: list[Candidate], *outcomes) -> None:
    """Report how each call ended: a reply, an error, or None for a call that was never made."""
    breaker.release(
        [
            CallEnded(c, reply=o) if isinstance(o, LLMReply) else CallEnded(c, error=o)
            for c, o in zip(calls, outcomes, strict=True)
        ]
    )


def open_breaker(breaker: CircuitBreaker, model: str = "gpt-4o-mini") -> None:
    calls = ran(breaker, *(candidate(model) for _ in range(4)))
    end(breaker, calls, REPLY, REPLY, OVERLOADED, OVERLOADED)


def test_half_the_calls_failing_within_the_window_opens_the_breaker_and_tasks_wait_out_the_cool_down(
    client, provider, clock
):
    breaker = worker(client, provider, clock)
    # Given three calls, one failed: too few to judge
    calls = ran(breaker, *(candidate() for _ in range(4)))
    assert len(calls) == 4
    end(breaker, calls[:3], REPLY, REPLY, OVERLOADED)
    assert len(ran(breaker, candidate())) == 1
    # When a fourth fails: two of four
    end(breaker, calls[3:], OVERLOADED)
    # Then the next tasks are deferred for the cool-down, saying why
    [decision] = breaker.admit([candidate()])
    assert decision.verdict is Verdict.DEFER and decision.retry_in == 10
    assert decision.reason == (
        f"breaker open for gpt-4o-mini at {provider}: 2 of 4 calls failed within 60s, the last: {OVERLOADED}"
    )
    clock.now += 4
    assert breaker.admit([candidate()])[0].retry_in == 6
    opened = {"provider": provider, "model": "gpt-4o-mini", "transition": "opened"}
    assert REGISTRY.get_sample_value("agent_service_breaker_transitions_total", opened) == 1
    # And a breaker per model: another model's calls still run
    assert len(ran(breaker, candidate("gpt-4o"))) == 1


def test_failures_below_the_ratio_or_older_than_the_window_leave_the_breaker_closed(client, provider, clock):
    breaker = worker(client, provider, clock)
    calls = ran(breaker, *(candidate() for _ in range(5)))
    end(breaker, calls, REPLY, REPLY, REPLY, OVERLOADED, OVERLOADED)  # 2 of 5
    assert len(ran(breaker, candidate())) == 1
    clock.now += 61  # those five have left the window
    calls = ran(breaker, *(candidate() for _ in range(3)))
    end(breaker, calls, OVERLOADED, OVERLOADED, OVERLOADED)  # 3 of 3, but fewer than 4 calls
    assert len(ran(breaker, candidate())) == 1


def test_errors_the_task_caused_do_not_count_against_the_provider(client, provider, clock):
    breaker = worker(client, provider, clock)
    calls = ran(breaker, *(candidate() for _ in range(10)))
    end(breaker, calls, *[TOO_LONG] * 8, OVERLOADED, REPLY)  # of the provider's two calls, one failed
    assert len(ran(breaker, candidate())) == 1


def test_an_authentication_error_opens_the_breaker_at_once(client, provider, clock):
    breaker = worker(client, provider, clock)
    [call] = ran(breaker, candidate())
    end(breaker, [call], BAD_KEY)
    [decision] = breaker.admit([candidate()])
    assert decision.verdict is Verdict.DEFER and decision.retry_in == 10
    assert decision.reason == f"breaker open for gpt-4o-mini at {provider}: {BAD_KEY}"


def test_after_the_cool_down_one_probe_goes_through_for_all_workers_and_its_success_closes_the_breaker(
    client, provider, clock
):
    first, second = worker(client, provider, clock), worker(client, provider, clock)
    open_breaker(first)
    clock.now += 10
    # When two workers ask at once: one candidate runs, as the probe
    [probe] = ran(first, candidate(), candidate(), candidate())
    [waiting] = second.admit([candidate()])
    assert waiting.verdict is Verdict.DEFER and waiting.retry_in == 5
    assert waiting.reason.startswith(f"breaker open for gpt-4o-mini at {provider} (a probe call is under way): ")
    # When a call admitted before the breaker opened succeeds now, it proves nothing: still one probe
    end(second, [candidate()], REPLY)
    assert ran(second, candidate()) == []
    # When the probe succeeds, Then the breaker is closed for every worker
    end(first, [probe], REPLY)
    assert len(ran(second, candidate(), candidate())) == 2
    assert client.keys(f"{KEY_PREFIX}{provider}*") == []


def test_a_failed_probe_opens_the_breaker_for_another_cool_down(client, provider, clock):
    breaker = worker(client, provider, clock)
    open_breaker(breaker)
    clock.now += 10
    [probe] = ran(breaker, candidate(), candidate())
    end(breaker, [probe], OVERLOADED)
    [decision] = breaker.admit([candidate()])
    assert decision.verdict is Verdict.DEFER and decision.retry_in == 10
    assert decision.reason == f"breaker open for gpt-4o-mini at {provider}: the probe call failed: {OVERLOADED}"


@pytest.mark.parametrize("how", [None, TOO_LONG], ids=["turned away by a later check", "failed by its task"])
def test_a_probe_that_says_nothing_of_the_provider_lets_another_probe_go(client, provider, clock, how):
    breaker = worker(client, provider, clock)
    open_breaker(breaker)
    clock.now += 10
    [probe] = ran(breaker, candidate())
    end(breaker, [probe], how)
    assert len(ran(breaker, candidate(), candidate())) == 1


def test_a_probe_whose_worker_died_is_replaced_once_its_lease_expires(client, provider, clock):
    breaker = worker(client, provider, clock, lease=0.3)
    open_breaker(breaker)
    clock.now += 10
    assert len(ran(breaker, candidate())) == 1  # and its worker never reports back
    assert ran(breaker, candidate()) == []
    time.sleep(0.5)  # the lease expires on Redis's own clock
    assert len(ran(breaker, candidate())) == 1


def test_while_its_model_is_open_an_agent_with_a_fallback_runs_on_the_fallback(client, provider, clock):
    breaker = worker(client, provider, clock)
    open_breaker(breaker)
    # Then a task whose agent names a fallback runs there, and one whose agent names none waits
    with_fallback, without = candidate(fallback="gpt-4o"), candidate()
    [rerouted] = ran(breaker, with_fallback, without)
    assert (rerouted.task_id, rerouted.request.model) == (with_fallback.task_id, "gpt-4o")
    # And the fallback's failures count against the fallback's own breaker
    open_breaker(breaker, "gpt-4o")
    clock.now += 3
    [decision] = breaker.admit([candidate(fallback="gpt-4o")])
    assert decision.verdict is Verdict.DEFER and decision.retry_in == 7
    assert decision.reason.startswith(f"breaker open for gpt-4o-mini at {provider}, and for its fallback gpt-4o: ")


def test_breaker_state_expires_so_nothing_outlives_a_crash(client, provider, clock):
    breaker = worker(client, provider, clock, lease=60)
    [call] = ran(breaker, candidate())
    end(breaker, [call], OVERLOADED)  # counted while closed: kept for two windows
    [key] = client.keys(f"{KEY_PREFIX}{provider}*")
    assert 0 < client.pttl(key) <= 120_000
    open_breaker(breaker)
    clock.now += 10
    ran(breaker, candidate())  # the probe
    ttls = sorted(client.pttl(key) for key in client.keys(f"{KEY_PREFIX}{provider}*"))
    assert 0 < ttls[0] <= 60_000 and ttls[1] <= (10 + 60 + 60) * 1000  # lease; open: cool-down + window + lease


def test_a_models_own_breaker_limits_override_the_settings(client, provider, settings, db_session, rollback_factory):
    # Given settings that need 10 calls, and an override for one model that needs 1 and cools down for 99 s
    set_override(db_session, LimitScope.MODEL, "flaky", "breaker_min_calls", "1")
    set_override(db_session, LimitScope.MODEL, "flaky", "breaker_cooldown_seconds", "99")
    db_session.flush()
    breaker = build_breaker(
        settings.model_copy(update={"openai_base_url": f"http://{provider}/v1"}),
        redis=client,
        overrides=OverrideCache(rollback_factory),
    )
    # When one call of each model fails, Then only the overridden model's breaker opens, for 99 s
    calls = ran(breaker, candidate("flaky"), candidate("steady"))
    end(breaker, calls, OVERLOADED, OVERLOADED)
    flaky, steady = breaker.admit([candidate("flaky"), candidate("steady")])
    assert flaky.verdict is Verdict.DEFER and 98 < flaky.retry_in <= 99
    assert steady.verdict is Verdict.RUN
