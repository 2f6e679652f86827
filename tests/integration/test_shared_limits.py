"""The shared admission controls on real Redis (and PostgreSQL for the overrides): rate-limit reservations
reconciled with the real usage, concurrency leases, and pause. Several workers are in
test_rate_limited_workers.py and tests/chaos/test_limits_after_crash.py."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

import pytest
import redis
from redis.asyncio import Redis as AsyncRedis
from redis.backoff import NoBackoff
from redis.retry import Retry

from agent_service.admission import build_admission
from agent_service.admission.base import CallEnded, Candidate, Verdict
from agent_service.admission.concurrency import ConcurrencyCaps
from agent_service.admission.pause import PAUSED, PauseCheck, pause, resume
from agent_service.admission.rate_limits import RateLimits
from agent_service.config import ModelRateLimit, Settings
from agent_service.database import session_scope
from agent_service.errors import CallNotSentError
from agent_service.llm.messages import LLMReply, LLMRequest, Message, ModelOptions, Usage
from agent_service.llm.send_slots import leave_on_time, wait_for_slot
from agent_service.models import LimitScope
from agent_service.store.agents import AgentSpec
from agent_service.store.overrides import OverrideCache, set_override
from tests.integration.conftest import IDLE_REDIS
from tests.support import free_port

MODEL = "gpt-4o-mini"
AGENT = AgentSpec(uuid.uuid4(), "You are careful.", MODEL, 0.1, 100, ModelOptions())


@pytest.fixture
def shared() -> redis.Redis:
    """An emptied Redis DB that no worker reads, standing for the workers' shared Redis."""
    client = redis.Redis.from_url(IDLE_REDIS)
    client.flushdb()
    return client


@pytest.fixture
def overrides(rollback_factory) -> OverrideCache:
    return OverrideCache(rollback_factory, ttl_seconds=0)


def candidate(user_id: str = "u1", *, text: str = "Summarise the report", max_tokens: int = 100) -> Candidate:
    request = LLMRequest(MODEL, 0.1, max_tokens, ModelOptions(), (Message("user", text),))
    return Candidate(uuid.uuid4(), user_id, 1, AGENT, request)


def limiter(settings: Settings, shared, overrides, **values) -> RateLimits:
    """Rate limits with a one-second burst, reserving only slots that come now (no hold) unless told."""
    configured = settings.model_copy(
        update={
            "rate_limit_max_wait_seconds": 0.0,
            "rate_limit_burst_seconds": 1.0,
            "admission_hold_seconds": 0.0,
            **values,
        }
    )
    return RateLimits(configured, redis=lambda: shared, overrides=overrides)


def verdicts(decisions) -> list[str]:
    return [decision.reason if decision.verdict is Verdict.DEFER else "run" for decision in decisions]


# ---------------------------------------------------------------- rate limits


def test_calls_over_the_model_rpm_are_deferred_one_after_the_other_naming_the_limit(settings, shared, overrides):
    # Given 120 requests a minute for the model, two at once at most (a one-second burst), and no waiting
    limits = limiter(settings, shared, overrides, llm_rate_limits={MODEL: ModelRateLimit(rpm=120)})
    # When a batch of five asks
    decisions = limits.admit([candidate() for _ in range(5)])
    # Then two run and three wait, each for the next free slot (one every half second)
    assert verdicts(decisions) == ["run", "run"] + [f"rate limit {MODEL} RPM"] * 3
    assert [round(d.retry_in, 1) for d in decisions[2:]] == [0.5, 1.0, 1.5]


def test_a_reserved_call_carries_its_slot_and_on_time_leaves_without_asking_redis_again(settings, shared, overrides):
    # Given 60 requests a minute for the model
    limits = limiter(settings, shared, overrides, llm_rate_limits={MODEL: ModelRateLimit(rpm=60)})
    # When a call is reserved
    [decision] = limits.admit([candidate()])
    slot = decision.request.send_slot
    # Then its request holds its slot: the bucket, one second of it, to leave within the late allowance
    assert slot is not None and slot.costs == (1.0,) and slot.buckets == (f"agent_service:rate:model:{MODEL}:rpm",)
    assert 0 < slot.leave_by - time.time() <= settings.rate_limit_late_seconds
    before = shared.get(slot.buckets[0])
    # and leaving on time takes nothing more
    asyncio.run(_leave(slot))
    assert shared.get(slot.buckets[0]) == before


def test_a_call_leaving_late_takes_a_new_slot_and_waits_for_it(settings, shared, overrides):
    # Given 60 requests a minute and a one-second burst: a call reserved, then late
    limits = limiter(settings, shared, overrides, llm_rate_limits={MODEL: ModelRateLimit(rpm=60)})
    [decision] = limits.admit([candidate()])
    late = replace(decision.request.send_slot, leave_by=time.time() - 1, max_wait_seconds=5.0)
    # When it leaves late, twice
    started = time.monotonic()
    asyncio.run(_leave(late))
    asyncio.run(_leave(late))
    # Then each took a new slot after the one before, waiting a second for it (the bucket holds one)
    assert time.monotonic() - started >= 1.8
    assert float(shared.get(late.buckets[0])) - time.time() > 0.5


def test_a_late_call_is_not_sent_while_paused_or_when_no_slot_comes_in_its_wait(settings, shared, overrides):
    # Given a late call, with the pause obeyed
    limits = limiter(settings, shared, overrides, llm_rate_limits={MODEL: ModelRateLimit(rpm=60)}, pause_enabled=True)
    [decision] = limits.admit([candidate()])
    late = replace(decision.request.send_slot, leave_by=time.time() - 1)
    # When the service is paused, it is not sent
    pause(shared)
    with pytest.raises(CallNotSentError, match="paused"):
        asyncio.run(_leave(late))
    resume(shared)
    # and when its next slot is further than it may wait, neither (its task is deferred, its attempt unspent)
    shared.set(late.buckets[0], time.time() + 30)
    with pytest.raises(CallNotSentError, match="too late") as refused:
        asyncio.run(_leave(late))
    assert refused.value.delay > 20


def test_calls_found_late_in_one_pass_of_the_loop_take_their_new_slots_in_one_script_call(settings, shared, overrides):
    # Given five calls reserved under a generous limit, all late
    limits = limiter(settings, shared, overrides, llm_rate_limits={MODEL: ModelRateLimit(rpm=6000)})
    decisions = limits.admit([candidate() for _ in range(5)])
    late = [replace(decision.request.send_slot, leave_by=time.time() - 1) for decision in decisions]
    bucket = late[0].buckets[0]
    reserved_until = float(shared.get(bucket))
    # When they leave together, on one loop
    with script_calls_naming(bucket) as calls:
        asyncio.run(_leave_together(late))
    # Then Redis ran one reservation for the five, and each took a new slot (0.01 s of the limit each)
    assert len(calls) == 1
    assert float(shared.get(bucket)) - max(reserved_until, time.time()) == pytest.approx(0.05, abs=0.02)


@contextmanager
def script_calls_naming(key: str) -> Iterator[list[str]]:
    """The scripts Redis runs (as MONITOR sees them) that name `key`, from the with-block's start to its end."""
    seen: list[str] = []
    end = f"{key}:end-of-watch"
    watcher = redis.Redis.from_url(IDLE_REDIS)
    with watcher.monitor() as monitor:

        def read() -> None:
            for command in monitor.listen():
                if end in command["command"]:
                    return
                if command["command"].upper().startswith("EVALSHA") and key in command["command"]:
                    seen.append(command["command"])

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        yield seen
        with redis.Redis.from_url(IDLE_REDIS) as client:
            client.exists(end)
        reader.join(timeout=5)
    watcher.close()


async def _leave_together(slots) -> None:
    client = AsyncRedis.from_url(IDLE_REDIS)
    try:
        await asyncio.gather(*(leave_on_time(slot, client) for slot in slots))
    finally:
        await client.aclose()


async def _leave(slot) -> None:
    client = AsyncRedis.from_url(IDLE_REDIS)
    try:
        await leave_on_time(slot, client)
    finally:
        await client.aclose()


def test_calls_whose_slots_come_within_the_hold_are_reserved_ahead_and_each_leaves_when_its_slot_comes(
    settings, shared, overrides
):
    # Given 120 requests a minute (a slot every half second, two at once), calls held two seconds at most
    limits = limiter(
        settings, shared, overrides, llm_rate_limits={MODEL: ModelRateLimit(rpm=120)}, admission_hold_seconds=2.0
    )
    # When a batch of seven asks
    decisions = limits.admit([candidate() for _ in range(7)])
    # Then two leave at once and four are reserved for the next four slots, to be sent when each comes; the
    # seventh, two and a half seconds away, waits outside, back when half the hold is left before its slot
    assert verdicts(decisions) == ["run"] * 6 + [f"rate limit {MODEL} RPM"]
    slots = [decision.request.send_slot for decision in decisions[:6]]
    assert [slot.not_before for slot in slots[:2]] == [0.0, 0.0]
    ahead = [slot.not_before - time.time() for slot in slots[2:]]
    assert ahead == pytest.approx([0.5, 1.0, 1.5, 2.0], abs=0.1)
    assert decisions[6].retry_in == pytest.approx(1.5, abs=0.05)
    # and the third leaves when its slot comes, not before, taking nothing more
    before = shared.get(slots[2].buckets[0])
    started = time.monotonic()
    asyncio.run(_wait_and_leave(slots[2]))
    assert time.monotonic() - started >= ahead[0] - 0.05
    assert shared.get(slots[2].buckets[0]) == before


def test_a_call_reserved_ahead_is_not_sent_once_the_service_is_paused_while_it_waited(settings, shared, overrides):
    # Given a call reserved half a second ahead, with the pause obeyed
    limits = limiter(
        settings,
        shared,
        overrides,
        llm_rate_limits={MODEL: ModelRateLimit(rpm=120)},
        admission_hold_seconds=2.0,
        pause_enabled=True,
    )
    slot = limits.admit([candidate() for _ in range(3)])[2].request.send_slot
    assert slot.not_before > time.time()
    # When the service is paused while it waits for its slot
    pause(shared)
    # Then it is not sent (its task is deferred, its attempt unspent)
    with pytest.raises(CallNotSentError, match="paused"):
        asyncio.run(_wait_and_leave(slot))


async def _wait_and_leave(slot) -> None:
    await wait_for_slot(slot)
    await _leave(slot)


def test_a_candidate_is_reserved_in_every_limit_that_applies_or_in_none(settings, shared, overrides, rollback_factory):
    # Given a model limit of 240 requests a minute (four at once) and user u1 allowed 60 (one at once)
    with session_scope(rollback_factory) as session:
        set_override(session, LimitScope.USER, "u1", "rpm", "60")
    limits = limiter(settings, shared, overrides, llm_rate_limits={MODEL: ModelRateLimit(rpm=240)})
    # When u1 asks twice, then u2 four times
    first = limits.admit([candidate("u1"), candidate("u1")])
    second = limits.admit([candidate("u2") for _ in range(4)])
    # Then u1's second call is held back by u1's own limit and took nothing from the model's: u2 gets three
    assert verdicts(first) == ["run", "rate limit user u1 RPM"]
    assert verdicts(second) == ["run"] * 3 + [f"rate limit {MODEL} RPM"]


def test_a_replys_unused_max_tokens_stay_counted_as_the_provider_counts_them_on_arrival(settings, shared, overrides):
    # Given a TPM limit whose one-second bucket holds one call's estimate (prompt + max_tokens) and 20 tokens
    request = candidate().request
    estimate = request.estimated_prompt_tokens() + request.max_tokens
    limits = limiter(settings, shared, overrides, llm_rate_limits={MODEL: ModelRateLimit(tpm=(estimate + 20) * 60)})
    [first] = limits.admit([running := candidate()])
    assert verdicts([first, *limits.admit([candidate()])]) == ["run", f"rate limit {MODEL} TPM"]
    # When the call ends having used 4 of its max_tokens (its prompt as estimated), then nothing comes back:
    # OpenAI keeps the max_tokens it counted when the request arrived, so a second call still does not fit
    prompt = request.estimated_prompt_tokens()
    limits.release([CallEnded(running, LLMReply("answer", Usage(prompt, 4, prompt + 4)))])
    assert verdicts(limits.admit([candidate()])) == [f"rate limit {MODEL} TPM"]


def test_without_max_tokens_counted_a_call_is_charged_what_its_reply_reports(settings, shared, overrides):
    # Given a provider that counts what was used: the estimate is the prompt alone, and the bucket holds it and 10
    request = candidate().request
    prompt = request.estimated_prompt_tokens()
    limits = limiter(
        settings,
        shared,
        overrides,
        rate_limit_count_max_tokens=False,
        llm_rate_limits={MODEL: ModelRateLimit(tpm=(prompt + 10) * 60)},
    )
    [first] = limits.admit([running := candidate()])
    assert verdicts([first, *limits.admit([candidate()])]) == ["run", f"rate limit {MODEL} TPM"]
    # When the call ends having used 5 tokens in all, then the rest of the estimate comes back: a second fits now
    limits.release([CallEnded(running, LLMReply("answer", Usage(2, 3, 5)))])
    assert verdicts(limits.admit([candidate()])) == ["run"]


def test_a_call_never_made_gives_its_request_and_tokens_back(settings, shared, overrides):
    limits = limiter(settings, shared, overrides, llm_rate_limits={MODEL: ModelRateLimit(rpm=60)})
    [decision] = limits.admit([turned_away := candidate()])
    limits.release([CallEnded(turned_away)])  # a later check turned it away
    assert verdicts([decision, *limits.admit([candidate()])]) == ["run", "run"]


def test_a_dead_workers_reservation_expires_with_its_bucket(settings, shared, overrides):
    # Given a worker that reserved the whole bucket (4 requests at 240 a minute) and died without releasing
    limits = limiter(settings, shared, overrides, llm_rate_limits={MODEL: ModelRateLimit(rpm=240)})
    assert verdicts(limits.admit([candidate() for _ in range(4)])) == ["run"] * 4
    [key] = shared.keys("agent_service:rate:*")
    # Then its key expires within the second the bucket takes to drain (plus a second of slack)
    assert 0 < shared.pttl(key) <= 2001
    # and another worker finds the whole bucket again once it drained
    time.sleep(1.0)
    other = limiter(settings, shared, overrides, llm_rate_limits={MODEL: ModelRateLimit(rpm=240)})
    assert verdicts(other.admit([candidate() for _ in range(4)])) == ["run"] * 4


# ---------------------------------------------------------------- concurrency caps


def caps(settings: Settings, shared, overrides, **values) -> ConcurrencyCaps:
    configured = settings.model_copy(update=values)
    return ConcurrencyCaps(configured, redis=lambda: shared, overrides=overrides)


def test_a_user_over_its_cap_waits_while_other_users_run(settings, shared, overrides):
    capped = caps(settings, shared, overrides, user_concurrency_cap=2)
    batch = [candidate("u1"), candidate("u1"), candidate("u2"), candidate("u1"), candidate("u1"), candidate("u1")]
    decisions = capped.admit(batch)
    assert verdicts(decisions) == ["run", "run", "run"] + ["user u1 concurrency cap 2"] * 3
    # the waiters come back in waves of two
    assert [d.retry_in for d in decisions[3:]] == [1.0, 1.0, 2.0]


def test_a_lease_given_back_lets_the_next_task_run(settings, shared, overrides):
    capped = caps(settings, shared, overrides, user_concurrency_cap=1)
    [first] = capped.admit([running := candidate()])
    assert verdicts([first, *capped.admit([candidate()])]) == ["run", "user u1 concurrency cap 1"]
    capped.release([CallEnded(running, LLMReply("answer", None))])
    assert verdicts(capped.admit([candidate()])) == ["run"]


def test_an_agents_own_cap_overrides_the_default(settings, shared, overrides, rollback_factory):
    with session_scope(rollback_factory) as session:
        set_override(session, LimitScope.AGENT, str(AGENT.id), "concurrency_cap", "1")
    capped = caps(settings, shared, overrides, agent_concurrency_cap=10)
    assert verdicts(capped.admit([candidate("u1"), candidate("u2")])) == ["run", f"agent {AGENT.id} concurrency cap 1"]


def test_a_dead_workers_lease_expires(settings, shared, overrides):
    # Given a lease taken by a worker that then died (leases here last half a second)
    capped = caps(settings, shared, overrides, user_concurrency_cap=1)
    capped.lease_seconds = 0.5
    assert verdicts(capped.admit([candidate()])) == ["run"]
    # Then the cap frees itself once the lease expired, with no release
    time.sleep(0.6)
    assert verdicts(caps(settings, shared, overrides, user_concurrency_cap=1).admit([candidate()])) == ["run"]


def test_a_lease_is_never_longer_than_a_call_can_take_plus_a_margin(settings, shared, overrides):
    capped = caps(settings, shared, overrides, user_concurrency_cap=1)
    capped.admit([candidate()])
    [key] = shared.keys("agent_service:leases:*")
    ttl = shared.pttl(key) / 1000
    assert settings.llm_timeout_seconds < ttl <= capped.lease_seconds + 0.001


# ---------------------------------------------------------------- pause


def test_while_paused_every_task_is_deferred_and_after_resume_they_run(shared):
    check = PauseCheck(lambda: shared)
    pause(shared)
    decisions = check.admit([candidate(), candidate("u2")])
    assert verdicts(decisions) == [PAUSED, PAUSED] and all(d.retry_in > 0 for d in decisions)
    assert resume(shared) is True
    assert verdicts(check.admit([candidate()])) == ["run"]
    assert resume(shared) is False


def test_the_controls_switched_on_are_asked_pause_first_and_rate_limits_last(settings, rollback_factory):
    on = settings.model_copy(
        update={"pause_enabled": True, "concurrency_caps_enabled": True, "rate_limits_enabled": True}
    )
    admission = build_admission(on, redis=lambda: redis.Redis.from_url(IDLE_REDIS), session_factory=rollback_factory)
    assert [type(check) for check in admission.checks] == [PauseCheck, ConcurrencyCaps, RateLimits]
    assert build_admission(settings, redis=lambda: None, session_factory=rollback_factory).checks == ()


def test_with_redis_unreachable_every_control_defers_its_tasks_and_releases_without_raising(settings, overrides):
    # Given controls whose Redis does not answer (nothing listens on the port)
    down = redis.Redis(port=free_port(), socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))
    on = settings.model_copy(update={"llm_rate_limits": {MODEL: ModelRateLimit(rpm=60)}, "user_concurrency_cap": 1})
    checks = [
        PauseCheck(lambda: down),
        ConcurrencyCaps(on, redis=lambda: down, overrides=overrides),
        RateLimits(on, redis=lambda: down, overrides=overrides),
    ]
    for check in checks:
        # Then each defers (no attempt spent, no call a limit could not vouch for) and names itself
        [decision] = check.admit([waiting := candidate()])
        assert decision.verdict is Verdict.DEFER and decision.reason.endswith("unavailable")
        check.release([CallEnded(waiting, LLMReply("answer", Usage(1, 1, 2)))])
