"""Concurrency caps: at most N calls at once per agent and per user, across every worker.

Each agent's and user's calls hold leases in a Redis sorted set of lease ids scored by expiry. One Lua
script per batch drops the expired leases, counts, and gives a candidate a lease in every set that
applies only if each is under its cap. A lease is given back in `release`; one whose worker died
expires after `lease_seconds` (longer than any call can take), so a crash holds no capacity for good.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

from redis import Redis, RedisError
from redis.commands.core import Script

from agent_service.admission.base import CallEnded, Candidate, Decision, Override, release_failed, unreachable
from agent_service.config import Settings
from agent_service.models import LimitScope
from agent_service.store.overrides import OverrideCache

CAP = "concurrency_cap"
OVERRIDE_NAMES = {
    CAP: Override("LLM calls at once (0: no cap)", frozenset({LimitScope.AGENT, LimitScope.USER})),
}
KEY_PREFIX = "agent_service:leases"
# The k-th candidate of a batch turned away by a cap of N tries again after (1 + k // N) times this: the
# waiters come back in waves of about N rather than all at once.
RETRY_SECONDS = 1.0
# Beyond the LLM timeout and the waits for rate-limit slots: the moments between the call and `release`.
LEASE_MARGIN_SECONDS = 15.0

# KEYS: the lease sets. ARGV: lease seconds, each key's cap, then per candidate: its lease id, how many
# sets it needs, and their indexes in KEYS. Returns per candidate the index of the set that was full, or 0.
_ACQUIRE = """
local now = redis.call('TIME')
now = tonumber(now[1]) + tonumber(now[2]) / 1e6
local expiry = now + tonumber(ARGV[1])
local count, cap = {}, {}
for i, key in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  count[i] = redis.call('ZCARD', key)
  cap[i] = tonumber(ARGV[1 + i])
end
local result = {}
local at = 2 + #KEYS
while at <= #ARGV do
  local lease, needed = ARGV[at], tonumber(ARGV[at + 1])
  local full = 0
  for j = 1, needed do
    local k = tonumber(ARGV[at + 1 + j])
    if count[k] >= cap[k] and not redis.call('ZSCORE', KEYS[k], lease) then full = k end
  end
  if full == 0 then
    for j = 1, needed do
      local k = tonumber(ARGV[at + 1 + j])
      count[k] = count[k] + redis.call('ZADD', KEYS[k], expiry, lease)
    end
  end
  result[#result + 1] = full
  at = at + 2 + needed
end
for _, key in ipairs(KEYS) do redis.call('PEXPIREAT', key, math.ceil(expiry * 1000)) end
return result
"""


class ConcurrencyCaps:
    """Caps the calls at once of each agent and each user (settings, then `limit_overrides`)."""

    name = "concurrency"

    def __init__(self, settings: Settings, *, redis: Callable[[], Redis], overrides: OverrideCache) -> None:
        self._redis = redis
        self._overrides = overrides
        self._defaults = {
            LimitScope.AGENT: settings.agent_concurrency_cap,
            LimitScope.USER: settings.user_concurrency_cap,
        }
        # A call may wait for a rate-limit slot reserved ahead (up to the hold), then for a new one when it leaves
        # late, then run: its lease outlives all three.
        ahead = settings.admission_hold_seconds if settings.rate_limits_enabled else 0.0
        waits = ahead + settings.rate_limit_max_wait_seconds
        self.lease_seconds = settings.llm_timeout_seconds + waits + LEASE_MARGIN_SECONDS
        self._acquire: Script | None = None

    def admit(self, candidates: Sequence[Candidate]) -> list[Decision]:
        """One script call for the batch. A candidate under every cap runs holding a lease in each."""
        needs = [self._caps(candidate) for candidate in candidates]
        keys = list(dict.fromkeys(cap.key for need in needs for cap in need))
        if not keys:
            return [Decision.run()] * len(candidates)
        caps = {cap.key: cap.limit for need in needs for cap in need}
        argv: list[str | float] = [self.lease_seconds, *(caps[key] for key in keys)]
        for candidate, need in zip(candidates, needs, strict=True):
            argv += [candidate.call_id, len(need), *(keys.index(cap.key) + 1 for cap in need)]
        try:
            full = [int(index) for index in cast(list[int], self._script()(keys=keys, args=argv))]
        except RedisError as exc:
            return unreachable(candidates, "concurrency caps", exc)
        waiting: Counter[str] = Counter()
        decisions = []
        for need, index in zip(needs, full, strict=True):
            if index == 0:
                decisions.append(Decision.run())
                continue
            cap = next(cap for cap in need if cap.key == keys[index - 1])
            decisions.append(Decision.defer(cap.reason, retry_in=RETRY_SECONDS * (1 + waiting[cap.key] // cap.limit)))
            waiting[cap.key] += 1
        return decisions

    def release(self, ended: Sequence[CallEnded]) -> None:
        """Give the leases back: one pipelined round trip for the group. Every set the candidate may hold a
        lease in is asked, so a cap changed meanwhile leaves no lease behind."""
        if not ended:
            return
        try:
            pipe = self._redis().pipeline(transaction=False)
            for call in ended:
                for scope, subject in _subjects(call.candidate).items():
                    pipe.zrem(_key(scope, subject), call.candidate.call_id)
            pipe.execute()
        except RedisError as exc:
            release_failed("concurrency caps", exc)

    def _caps(self, candidate: Candidate) -> list[_Cap]:
        """The caps that apply to the candidate."""
        caps = []
        for scope, subject in _subjects(candidate).items():
            limit = math.floor(self._overrides.number(scope, subject, CAP, self._defaults[scope]) or 0)
            if limit > 0:
                caps.append(_Cap(_key(scope, subject), limit, f"{scope.value} {subject} concurrency cap {limit}"))
        return caps

    def _script(self) -> Script:
        if self._acquire is None:
            self._acquire = self._redis().register_script(_ACQUIRE)
        return self._acquire


@dataclass(frozen=True)
class _Cap:
    key: str
    limit: int
    reason: str


def _subjects(candidate: Candidate) -> dict[LimitScope, str]:
    return {LimitScope.AGENT: str(candidate.agent.id), LimitScope.USER: candidate.user_id}


def _key(scope: LimitScope, subject: str) -> str:
    return f"{KEY_PREFIX}:{scope.value}:{subject}"
