"""The rate-limit slot a call takes: the GCRA reservation script that admission runs for a batch before its
calls (`admission.rate_limits`), the wait for a slot reserved ahead, and the check the LLM process makes as
each call leaves.

Admission reserves each call's slot in every limit that applies: now, or ahead when it comes within
`ADMISSION_HOLD_SECONDS`. The call crosses to the LLM process at once and waits there for its slot on that
process's event loop (`wait_for_slot`, taking no place among the calls in flight), so a task held by a rate
limit costs its worker no claim, deferral or claim again. On a busy host the loop can wake late enough for calls
reserved apart to leave together (the provider answers 429 to the bunch). So a reserved request carries a
`SendSlot`: the time it may leave from, the time it must leave by (its slot, plus `RATE_LIMIT_LATE_SECONDS`),
and what a new slot costs in each of its limits. A call past that time takes a new slot in the same script
and leaves only then: whatever the delay, a call leaves within that lateness of the slot it holds, so the
provider sees at most the burst plus the lateness of the rate at once. A call that waited reads the pause
before it leaves. See docs/decisions.md, "Rate limits: a slot is taken when the call leaves" and "Rate limits:
slots reserved ahead".
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from agent_service.errors import CallNotSentError

if TYPE_CHECKING:
    from redis.asyncio import Redis as AsyncRedis

PAUSED_BEFORE_LEAVING = "paused before the call left"

# KEYS: the limits' buckets, then the pause key when the pause is obeyed. ARGV: burst seconds, horizon seconds,
# whether the last key is the pause key (1 or 0), then per candidate: how many buckets it needs, then per bucket
# its index in KEYS and the seconds its amount costs there. Returns {-1} while paused (nothing reserved); else per
# candidate {index of the bucket that held it back or 0, seconds to wait}: 0 is a reservation, for a slot that
# many seconds from now (within the horizon; 0: at once); another index, the seconds until it would fit,
# counting the candidates before it in this batch as if they had been reserved.
RESERVE = """
local now = redis.call('TIME')
now = tonumber(now[1]) + tonumber(now[2]) / 1e6
local burst, horizon, pause = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local buckets = #KEYS - pause
if pause == 1 and redis.call('EXISTS', KEYS[#KEYS]) == 1 then return {-1} end
local tat, queued, changed = {}, {}, {}
for i = 1, buckets do
  tat[i] = math.max(tonumber(redis.call('GET', KEYS[i]) or 0), now)
  queued[i] = tat[i]
end
local function wait(from, cost) return from + math.min(cost, burst) - burst - now end
local result = {}
local at = 4
while at <= #ARGV do
  local needed = tonumber(ARGV[at])
  local worst, blocker, queued_wait = 0, 0, 0
  for j = 1, needed do
    local k, cost = tonumber(ARGV[at + 2 * j - 1]), tonumber(ARGV[at + 2 * j])
    local w = wait(tat[k], cost)
    if w > worst then worst, blocker = w, k end
    queued_wait = math.max(queued_wait, wait(queued[k], cost))
  end
  for j = 1, needed do
    local k, cost = tonumber(ARGV[at + 2 * j - 1]), tonumber(ARGV[at + 2 * j])
    if worst <= horizon then
      tat[k] = tat[k] + cost
      changed[k] = true
    end
    queued[k] = queued[k] + cost
  end
  if worst <= horizon then
    result[#result + 1] = {0, string.format('%.6f', worst)}
  else
    result[#result + 1] = {blocker, string.format('%.6f', queued_wait)}
  end
  at = at + 1 + 2 * needed
end
for k in pairs(changed) do
  redis.call('SET', KEYS[k], string.format('%.6f', tat[k]), 'PXAT', math.ceil(tat[k] * 1000) + 1000)
end
return result
"""


@dataclass(frozen=True)
class SendSlot:
    """The rate-limit slot an admitted call holds: the time it may leave from (0: at once) and the time it must
    leave by (this host's `time.time()`, as the worker and its LLM process share a clock), the buckets it was
    reserved in with the seconds its amount costs in each, the burst they allow, how long a late call may wait
    for a new slot, and the pause key when the pause is obeyed."""

    leave_by: float
    buckets: tuple[str, ...]
    costs: tuple[float, ...]
    burst_seconds: float
    max_wait_seconds: float
    pause_key: str | None = None
    not_before: float = 0.0


async def wait_for_slot(slot: SendSlot | None) -> None:
    """Return once a call holding `slot` may leave: at once, or when its slot reserved ahead comes."""
    if slot is not None and (ahead := slot.not_before - time.time()) > 0:
        await asyncio.sleep(ahead)


async def leave_on_time(slot: SendSlot, redis: AsyncRedis) -> None:
    """Return when the call may leave: at once when it is on time (one that waited for a slot reserved ahead
    reads the pause first); else once it has a new slot in every bucket (taken all or none, as admission does,
    within `max_wait_seconds`), having waited for it.

    Raises: CallNotSentError while the service is paused, or when no slot comes within the wait (the call is
    not sent, and its task is deferred with its attempt given back); RedisError when Redis cannot be reached.
    """
    waited = bool(slot.not_before)
    if time.time() > slot.leave_by:
        pause = [slot.pause_key] if slot.pause_key else []
        argv: list[float | str] = [slot.burst_seconds, slot.max_wait_seconds, len(pause), len(slot.buckets)]
        for index, cost in enumerate(slot.costs, start=1):
            argv += [index, f"{cost:.6f}"]
        answer = cast(list, await redis.register_script(RESERVE)(keys=[*slot.buckets, *pause], args=argv))
        if answer == [-1]:
            raise CallNotSentError(PAUSED_BEFORE_LEAVING)
        blocker, wait = int(answer[0][0]), float(answer[0][1])
        if blocker:
            raise CallNotSentError("its rate-limit slot came too late", delay=wait)
        if wait > 0:
            await asyncio.sleep(wait)
            waited = True
    if waited and slot.pause_key and await redis.exists(slot.pause_key):
        raise CallNotSentError(PAUSED_BEFORE_LEAVING)
