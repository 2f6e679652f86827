"""Global rate limits: requests and tokens per minute per model (LLM_RATE_LIMITS, or a model's own
`rpm`/`tpm` override), and per agent and per user (overrides), shared by every worker through Redis.

Each limit is a GCRA bucket: one Redis key holding its theoretical arrival time (TAT), which every
reservation pushes forward by `amount * 60 / per_minute` seconds and which must stay within
`rate_limit_burst_seconds` of now. Before a batch's calls, one Lua script reserves, for each candidate,
one request and its estimated tokens (the prompt's characters / 4 plus `max_tokens`) in every limit that
applies, or in none of them. A candidate that fits within `rate_limit_max_wait_seconds` runs once its
slot comes (the worker sleeps until then); one that does not is deferred until about when it would fit,
without spending an attempt, so the provider never answers 429. After each call a second script takes
the difference between the estimate and the real usage back (or adds it), atomically.

A reservation needs no lease: a TAT only says when the bucket empties, and its key expires then. A worker
SIGKILLed holding reservations leaves them counted as spent, which the bucket drains at the limit's rate:
within `burst + max_wait` seconds plus the reserved amount's own share, capacity is back in full.
See docs/decisions.md, "Rate limits: one GCRA script for every limit".
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

from redis import Redis, RedisError
from redis.commands.core import Script

from agent_service.admission.base import CallEnded, Candidate, Decision, Override, release_failed, unreachable
from agent_service.config import Settings
from agent_service.llm.messages import LLMRequest
from agent_service.models import LimitScope
from agent_service.store.overrides import OverrideCache

RPM, TPM = "rpm", "tpm"
OVERRIDE_NAMES = {
    RPM: Override("LLM requests per minute (all workers together)", frozenset(LimitScope)),
    TPM: Override("LLM tokens per minute, prompt and completion (all workers together)", frozenset(LimitScope)),
}
KEY_PREFIX = "agent_service:rate"
MIN_RETRY_SECONDS = 0.1
SPREAD_SECONDS = 0.1

# KEYS: the limits' buckets. ARGV: burst seconds, max wait seconds, spread seconds, then per candidate: how
# many buckets it needs, then per bucket its index in KEYS and the seconds its amount costs there. Returns per candidate
# {index of the bucket that held it back or 0, seconds to wait}: index 0 is a reservation (sleep the wait
# before calling), another index a refusal (the wait is when it would fit, counting the refusals before
# it in this batch as if they had been reserved, so that they come back one after the other). The calls of
# a batch are sent together, after the batch's longest wait: a batch in which some call fits now reserves
# no later slot, and one that waits takes only the slots within SPREAD_SECONDS of its first, so no call
# reaches the provider more than SPREAD_SECONDS after its slot (later calls would bunch up there: holding
# a whole second of slots met 429s from a server enforcing 700/min against our 600/min).
_RESERVE = """
local now = redis.call('TIME')
now = tonumber(now[1]) + tonumber(now[2]) / 1e6
local burst, max_wait, spread = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tat, queued, changed = {}, {}, {}
for i, key in ipairs(KEYS) do
  tat[i] = math.max(tonumber(redis.call('GET', key) or 0), now)
  queued[i] = tat[i]
end
local function wait(from, cost) return from + math.min(cost, burst) - burst - now end
local result = {}
local sends_now, first_wait = false, nil
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
  -- A batch sends what fits now at once; only a batch none of whose calls fits now waits, for the slots
  -- that come within `spread` of its first one: its calls go together, each at most `spread` late.
  local reserve = worst <= 0 or (not sends_now and worst <= max_wait and worst <= (first_wait or worst) + spread)
  sends_now = sends_now or worst <= 0
  if reserve and worst > 0 and not first_wait then first_wait = worst end
  for j = 1, needed do
    local k, cost = tonumber(ARGV[at + 2 * j - 1]), tonumber(ARGV[at + 2 * j])
    if reserve then
      tat[k] = tat[k] + cost
      changed[k] = true
    end
    queued[k] = queued[k] + cost
  end
  if reserve then
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

# KEYS: buckets. ARGV: per bucket, the seconds to take back (negative: to add). Returns nothing.
_RECONCILE = """
local now = redis.call('TIME')
now = tonumber(now[1]) + tonumber(now[2]) / 1e6
for i, key in ipairs(KEYS) do
  local back = tonumber(ARGV[i])
  local tat = tonumber(redis.call('GET', key) or 0)
  if back < 0 then tat = math.max(tat, now) end
  tat = tat - back
  if tat > now then
    redis.call('SET', key, string.format('%.6f', tat), 'PXAT', math.ceil(tat * 1000) + 1000)
  else
    redis.call('DEL', key)
  end
end
"""


@dataclass(frozen=True)
class _Limit:
    """One limit that applies to a candidate: its bucket, its rate, and its name in a reason."""

    key: str
    kind: str  # RPM or TPM
    per_minute: float
    label: str

    def seconds(self, amount: float) -> float:
        return amount * 60 / self.per_minute


@dataclass(frozen=True)
class _Reservation:
    """What one admitted call holds, to be reconciled when it ends."""

    limits: tuple[_Limit, ...]
    prompt_tokens: int
    max_tokens: int


class RateLimits:
    """Reserves requests and tokens per minute in every limit that applies, all or none, before each call."""

    def __init__(
        self,
        settings: Settings,
        *,
        redis: Callable[[], Redis],
        overrides: OverrideCache,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._redis = redis
        self._overrides = overrides
        self._sleep = sleep
        self._models = settings.llm_rate_limits
        self.burst_seconds = settings.rate_limit_burst_seconds
        self.max_wait_seconds = settings.rate_limit_max_wait_seconds
        self._held: dict[tuple[uuid.UUID, int], _Reservation] = {}
        self._lock = threading.Lock()
        self._scripts: dict[str, Script] = {}

    def admit(self, candidates: Sequence[Candidate]) -> list[Decision]:
        """One script call for the batch; sleeps until the last admitted candidate's slot (at most
        `max_wait_seconds`) before returning."""
        limits = [self._limits(candidate) for candidate in candidates]
        keys = list(dict.fromkeys(limit.key for applying in limits for limit in applying))
        if not keys:
            return [Decision.run()] * len(candidates)
        amounts = [_amounts(candidate.request) for candidate in candidates]
        argv: list[float | str] = [self.burst_seconds, self.max_wait_seconds, SPREAD_SECONDS]
        for applying, (prompt, max_tokens) in zip(limits, amounts, strict=True):
            argv.append(len(applying))
            for limit in applying:
                amount = 1 if limit.kind == RPM else prompt + max_tokens
                argv += [keys.index(limit.key) + 1, f"{limit.seconds(amount):.6f}"]
        try:
            answers = cast(list[list[bytes]], self._script("reserve", _RESERVE)(keys=keys, args=argv))
        except RedisError as exc:
            return unreachable(candidates, "rate limits", exc)
        decisions, longest = [], 0.0
        for candidate, applying, (prompt, max_tokens), (blocker, seconds) in zip(
            candidates, limits, amounts, answers, strict=True
        ):
            wait = float(seconds)
            if int(blocker):
                label = next(limit.label for limit in applying if limit.key == keys[int(blocker) - 1])
                decisions.append(Decision.defer(f"rate limit {label}", retry_in=self._retry_in(wait)))
                continue
            if applying:
                with self._lock:
                    self._held[(candidate.task_id, candidate.attempt)] = _Reservation(applying, prompt, max_tokens)
            decisions.append(Decision.run())
            longest = max(longest, wait)
        if longest > 0:
            self._sleep(longest)
        return decisions

    def release(self, ended: Sequence[CallEnded]) -> None:
        """Reconcile each reservation with what its call really used: one script call for the group. A call
        never made gives everything back; a failed call keeps its request and prompt; an answered call is
        charged its reported tokens (kept as estimated when the provider reported none)."""
        back: dict[str, float] = {}
        for call in ended:
            with self._lock:
                held = self._held.pop((call.candidate.task_id, call.candidate.attempt), None)
            if held is None:
                continue
            for limit in held.limits:
                amount = _taken_back(limit.kind, held, call)
                if amount:
                    back[limit.key] = back.get(limit.key, 0.0) + limit.seconds(amount)
        if not back:
            return
        try:
            self._script("reconcile", _RECONCILE)(keys=list(back), args=[f"{s:.6f}" for s in back.values()])
        except RedisError as exc:
            release_failed("rate limits", exc)

    def _limits(self, candidate: Candidate) -> tuple[_Limit, ...]:
        model = candidate.request.model
        configured = self._models.get(model)
        subjects = (
            (LimitScope.MODEL, model, model),
            (LimitScope.AGENT, str(candidate.agent.id), f"agent {candidate.agent.id}"),
            (LimitScope.USER, candidate.user_id, f"user {candidate.user_id}"),
        )
        limits = []
        for scope, subject, label in subjects:
            for kind in (RPM, TPM):
                default = getattr(configured, kind) if scope is LimitScope.MODEL and configured else None
                per_minute = self._overrides.number(scope, subject, kind, default)
                if per_minute:
                    key = f"{KEY_PREFIX}:{scope.value}:{subject}:{kind}"
                    limits.append(_Limit(key, kind, per_minute, f"{label} {kind.upper()}"))
        return tuple(limits)

    def _retry_in(self, wait: float) -> float:
        """Come back when the wait left is one this check sleeps through."""
        return max(MIN_RETRY_SECONDS, wait - self.max_wait_seconds)

    def _script(self, name: str, source: str) -> Script:
        if name not in self._scripts:
            self._scripts[name] = self._redis().register_script(source)
        return self._scripts[name]


def _amounts(request: LLMRequest) -> tuple[int, int]:
    return request.estimated_prompt_tokens(), request.max_tokens


def _taken_back(kind: str, held: _Reservation, call: CallEnded) -> float:
    """How much of the reservation in a `kind` limit to give back (negative: to add) once `call` ended."""
    if not call.called:
        return 1 if kind == RPM else held.prompt_tokens + held.max_tokens
    if kind == RPM:
        return 0
    if call.error is not None:
        return held.max_tokens
    usage = call.reply.usage if call.reply is not None else None
    return held.prompt_tokens + held.max_tokens - usage.total_tokens if usage is not None else 0
