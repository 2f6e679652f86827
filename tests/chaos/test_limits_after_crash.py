"""Scenario: a worker holding rate-limit reservations and concurrency leases is SIGKILLed. Nothing it held
stays held: its leases expire (LLM timeout + margin) and its reservations drain with their buckets, after
which a new worker runs the rest at the configured cap, every task exactly once, with no 429."""

from __future__ import annotations

import json
import time

import redis

from agent_service.admission.concurrency import KEY_PREFIX as LEASES
from agent_service.admission.concurrency import ConcurrencyCaps
from agent_service.admission.rate_limits import KEY_PREFIX as RATES
from agent_service.models import TaskStatus
from agent_service.store.overrides import OverrideCache
from tests.chaos.harness import sized
from tests.support import wait_until

TASKS = sized(40, 200)
CAP = 4


def test_reservations_and_leases_of_a_sigkilled_worker_are_released(scenario, llm):
    # Given a worker whose user may make 4 calls at once at 600 a minute, each call taking about a second
    run = scenario(
        "reservations and leases released after a crash",
        worker_concurrency=8,
        rate_limits_enabled=True,
        llm_rate_limits=json.loads('{"gpt-4o-mini": {"rpm": 600}}'),
        concurrency_caps_enabled=True,
        user_concurrency_cap=CAP,
    )
    llm.add_fault(fault="slow", match=run.token, delay_ms=1000)
    shared = redis.Redis.from_url(run.settings.redis_url)
    lease_seconds = ConcurrencyCaps(
        run.settings, redis=lambda: shared, overrides=OverrideCache(run.session_factory)
    ).lease_seconds
    doomed = run.start_worker("doomed")
    run.submit(TASKS)
    run.wait_for_progress(completed=CAP, running=CAP)

    def leases() -> dict[bytes, int]:
        return {key: shared.zcard(key) for key in shared.keys(f"{LEASES}:*")}

    # (running rows include the tasks the cap holds in their batches: wait for calls under way)
    wait_until(lambda: sum(leases().values()) == CAP, what="calls holding the cap's leases", timeout=30)
    # When it is SIGKILLed holding leases and reservations
    held = leases()
    reserved = shared.keys(f"{RATES}:*")
    run.kill_worker(doomed)
    killed_at, calls_before = time.monotonic(), len(llm.requests(run.prefix()))
    run.start_worker("rescuer", beat=True)
    # Then the rescuer's first call waits for no longer than the dead worker's leases last
    wait_for_call = time.monotonic()
    while len(llm.requests(run.prefix())) == calls_before:
        assert time.monotonic() - killed_at < lease_seconds + 10, "capacity never came back"
        time.sleep(0.1)
    resumed_after = time.monotonic() - killed_at
    # and every task completes exactly once, with no 429 from the provider and no lease left behind
    run.wait(timeout=sized(120, 400))
    tally = run.tally()
    assert sum(held.values()) == CAP and reserved, f"the worker held nothing when killed: {held} {reserved}"
    assert (tally.completed, tally.lost, tally.duplicates) == (TASKS, 0, 0)
    assert {row.status for row in run.rows()} == {TaskStatus.COMPLETED}
    assert [r for r in llm.requests(run.prefix()) if r["status"] == 429] == []
    assert resumed_after <= lease_seconds + 10 and wait_for_call >= killed_at
    # (a batch superseded by the take-over may still reserve a last slot as it ends: its bucket drains too)
    wait_until(lambda: shared.keys(f"{RATES}:*") == [], what="the last bucket drained", timeout=10)
    assert all(shared.zcard(key) == 0 for key in shared.keys(f"{LEASES}:*"))
    print(f"\ncapacity back {resumed_after:.1f} s after the kill (leases last {lease_seconds:.0f} s)")
