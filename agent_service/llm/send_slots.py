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
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

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


def reserve_arguments(
    candidates: Sequence[Sequence[tuple[str, float]]],
    *,
    burst_seconds: float,
    horizon_seconds: float,
    pause_key: str | None,
) -> tuple[list[str], list[float | str]]:
    """RESERVE's KEYS and ARGV for `candidates`, in order, each given as the (bucket, seconds its amount costs
    there) of every limit it needs. The buckets come first in KEYS, each once, in the order the script's answers
    index them (1-based); the pause key, when the pause is obeyed, last."""
    buckets = list(dict.fromkeys(bucket for needs in candidates for bucket, _ in needs))
    argv: list[float | str] = [burst_seconds, horizon_seconds, int(pause_key is not None)]
    for needs in candidates:
        argv.append(len(needs))
        for bucket, cost in needs:
            argv += [buckets.index(bucket) + 1, f"{cost:.6f}"]
    return buckets + ([pause_key] if pause_key else []), argv


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
    within `max_wait_seconds`), having waited for it. The calls found late in one pass of the loop take their
    new slots in one script call (`LateSlots`).

    Raises: CallNotSentError while the service is paused, or when no slot comes within the wait (the call is
    not sent, and its task is deferred with its attempt given back); RedisError when Redis cannot be reached.
    """
    waited = bool(slot.not_before)
    if time.time() > slot.leave_by:
        answer = await _late_slots(redis).take(slot)
        if answer is None:
            raise CallNotSentError(PAUSED_BEFORE_LEAVING)
        blocker, wait = int(answer[0]), float(answer[1])
        if blocker:
            raise CallNotSentError("its rate-limit slot came too late", delay=wait)
        if wait > 0:
            await asyncio.sleep(wait)
            waited = True
    if waited and slot.pause_key and await redis.exists(slot.pause_key):
        raise CallNotSentError(PAUSED_BEFORE_LEAVING)


class LateSlots:
    """New slots for the late calls of one event loop, through one Redis client: the calls found late in one
    pass of the loop are reserved together, in the order they came, in one call of the reservation script. At
    full load on a busy host a loop that falls behind finds hundreds of calls late at once, and a round trip
    each would put it further behind."""

    def __init__(self, redis: AsyncRedis) -> None:
        self._script = redis.register_script(RESERVE)
        self._waiting: list[tuple[SendSlot, asyncio.Future[list[Any] | None]]] = []
        self._reserving: set[asyncio.Task[None]] = set()  # the loop keeps only weak references to its tasks

    def take(self, slot: SendSlot) -> asyncio.Future[list[Any] | None]:
        """The script's answer for a new slot like `slot`'s: [index of the bucket that held it back or 0, seconds
        to wait], or None while the service is paused."""
        loop = asyncio.get_running_loop()
        if not self._waiting:
            loop.call_soon(self._reserve_waiting)  # after every call that runs in this pass of the loop
        future: asyncio.Future[list[Any] | None] = loop.create_future()
        self._waiting.append((slot, future))
        return future

    def _reserve_waiting(self) -> None:
        waiting, self._waiting = self._waiting, []
        task = asyncio.get_running_loop().create_task(self._reserve(waiting))
        self._reserving.add(task)
        task.add_done_callback(self._reserving.discard)

    async def _reserve(self, waiting: list[tuple[SendSlot, asyncio.Future[list[Any] | None]]]) -> None:
        alike: dict[tuple[float, float, str | None], list[tuple[SendSlot, asyncio.Future[list[Any] | None]]]] = {}
        for slot, future in waiting:
            alike.setdefault((slot.burst_seconds, slot.max_wait_seconds, slot.pause_key), []).append((slot, future))
        for (burst, max_wait, pause_key), calls in alike.items():
            keys, argv = reserve_arguments(
                [tuple(zip(slot.buckets, slot.costs, strict=True)) for slot, _ in calls],
                burst_seconds=burst,
                horizon_seconds=max_wait,
                pause_key=pause_key,
            )
            try:
                answers = cast(list, await self._script(keys=keys, args=argv))
            except Exception as exc:  # each call raises it, as its own script call would have
                for _, future in calls:
                    if not future.done():  # a call cancelled meanwhile
                        future.set_exception(exc)
                continue
            for (_, future), answer in zip(calls, [None] * len(calls) if answers == [-1] else answers, strict=True):
                if not future.done():
                    future.set_result(answer)


def _late_slots(redis: AsyncRedis) -> LateSlots:
    if redis not in _late:
        _late[redis] = LateSlots(redis)
    return _late[redis]


# One per client; a client belongs to one event loop, whose thread alone reads or adds its entry.
_late: weakref.WeakKeyDictionary[AsyncRedis, LateSlots] = weakref.WeakKeyDictionary()
