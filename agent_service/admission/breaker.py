"""The circuit breaker: per provider (OPENAI_BASE_URL's host) and model, shared by every worker through Redis.

    closed ──(at least `min_calls` calls in the window and `failure_ratio` of them failed,
              or at once on a refused key or exhausted quota)──> open
    open ──(after `cooldown_seconds`)──> half-open: one probe call, across all workers, is let through
    half-open ──(the probe succeeds)──> closed        half-open ──(the probe fails)──> open again

Only the provider's failures count (see `errors.ProviderFault`): a request the task made bad (too long,
filtered) says nothing of the provider. While a model's breaker is open its tasks are deferred without
spending an attempt, or run on their agent's fallback model if that one's breaker is closed.

State lives in one Redis hash per breaker (`open_until`, `reason`, and call and failure counts in ten
buckets per window) and a probe lease (SET NX with an expiry, so a probe whose worker died frees up).
Each decision is one Lua script: one round trip per batch in `admit`, one per group of ended calls in
`release`. Outcomes of calls admitted before the breaker opened are ignored while it is open or half-open:
only the probe speaks for the provider then.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

from redis import Redis, RedisError

from agent_service.admission.base import CallEnded, Candidate, Decision, Override
from agent_service.config import Settings
from agent_service.errors import ProviderFault
from agent_service.models import LimitScope
from agent_service.monitoring import BREAKER_TRANSITIONS
from agent_service.notifications import NO_NOTIFICATIONS, Event, EventType, Notifier
from agent_service.store.overrides import OverrideCache

logger = logging.getLogger(__name__)

KEY_PREFIX = "agent_service:breaker:"
DEFAULT_PROVIDER = "api.openai.com"  # the openai client's endpoint when OPENAI_BASE_URL is unset
# While the probe is under way the other tasks look again this soon (or after the cool-down, if shorter):
# a probe usually ends within seconds, and a task should not wait a whole cool-down after the breaker closed.
PROBE_WAIT_SECONDS = 5.0
REASON_CHARS = 300

_PER_MODEL = frozenset({LimitScope.MODEL})
OVERRIDE_NAMES = {
    "breaker_min_calls": Override("calls within the window before failures can open a model's breaker", _PER_MODEL),
    "breaker_failure_ratio": Override("the share of failed calls that opens a model's breaker", _PER_MODEL),
    "breaker_cooldown_seconds": Override("how long a model's breaker stays open before a probe call", _PER_MODEL),
}


@dataclass(frozen=True)
class BreakerPolicy:
    """When one model's breaker opens and for how long."""

    window_seconds: float
    min_calls: int
    failure_ratio: float
    cooldown_seconds: float


@dataclass(frozen=True)
class _State:
    """One breaker as `admit` found it: closed, open (until `open_until`, a Unix time in ms) or probing (a
    probe call is under way)."""

    name: str
    open_until_ms: int
    reason: str


# KEYS: each breaker's hash and probe lease, in pairs. ARGV: now (ms), probe lease (ms), number of breakers,
# each breaker's key expiry (ms), then per candidate: its model's breaker (1-based), its fallback's (0: none),
# its probe token. Returns one pick per candidate (0 defer, 1 model, 2 fallback, 3 model as the probe,
# 4 fallback as the probe), then each breaker's state, open_until and reason.
_ADMIT = """
local now, lease, n = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local states, untils, reasons = {}, {}, {}
for i = 1, n do
  local found = redis.call('HMGET', KEYS[2 * i - 1], 'open_until', 'reason')
  local open_until = tonumber(found[1])
  if not open_until then states[i] = 'closed'
  elseif now < open_until then states[i] = 'open'
  else states[i] = 'half' end
  untils[i], reasons[i] = open_until or 0, found[2] or ''
end
local reply = {}
for at = 4 + n, #ARGV, 3 do
  local pick = 0
  for slot = 1, 2 do
    local k = tonumber(ARGV[at + slot - 1])
    if pick == 0 and k > 0 then
      if states[k] == 'closed' then
        pick = slot
      elseif states[k] == 'half' then
        if redis.call('SET', KEYS[2 * k], ARGV[at + 2], 'NX', 'PX', lease) then
          pick = slot + 2
          redis.call('PEXPIRE', KEYS[2 * k - 1], ARGV[3 + k])
        end
        states[k] = 'probing'
      end
    end
  end
  reply[#reply + 1] = pick
end
for i = 1, n do
  reply[#reply + 1] = states[i] == 'half' and 'probing' or states[i]
  reply[#reply + 1] = untils[i]
  reply[#reply + 1] = reasons[i]
end
return reply
"""

# KEYS: each breaker's hash and probe lease, in pairs. ARGV: now (ms), then per breaker: window (ms), min
# calls, failure ratio, cool-down (ms), key expiry (ms), calls, failed calls, the reason to open it at once
# ('' for none), the reason failures would open it, the number of outcomes, then each outcome's probe token
# and 's' (succeeded), 'f' (the provider failed it) or 'n' (says nothing of the provider). Returns each
# breaker's transition ('', 'opened', 'closed' or 'reopened') and, when it opened, why.
_RELEASE = """
local now = tonumber(ARGV[1])
local why
local function open(key, cooldown, expiry, reason)
  redis.call('DEL', key)
  redis.call('HSET', key, 'open_until', now + cooldown, 'reason', reason)
  redis.call('PEXPIRE', key, expiry)
  why = reason
end
local reply, at = {}, 2
for i = 1, #KEYS / 2 do
  local key, probe = KEYS[2 * i - 1], KEYS[2 * i]
  local window, min_calls, ratio = tonumber(ARGV[at]), tonumber(ARGV[at + 1]), tonumber(ARGV[at + 2])
  local cooldown, expiry = tonumber(ARGV[at + 3]), ARGV[at + 4]
  local calls, failed, denied, failing = tonumber(ARGV[at + 5]), tonumber(ARGV[at + 6]), ARGV[at + 7], ARGV[at + 8]
  local outcomes = tonumber(ARGV[at + 9])
  local first_outcome = at + 10
  at = first_outcome + 2 * outcomes
  local transition = ''
  why = ''
  if redis.call('HEXISTS', key, 'open_until') == 1 then
    local holder, verdict = redis.call('GET', probe), nil
    if holder then
      for o = first_outcome, at - 1, 2 do
        if ARGV[o] == holder then verdict = ARGV[o + 1] end
      end
    end
    if verdict == 's' then
      redis.call('DEL', key, probe)
      transition = 'closed'
    elseif verdict == 'f' then
      open(key, cooldown, expiry, denied ~= '' and denied or ('the probe call failed: ' .. failing))
      redis.call('DEL', probe)
      transition = 'reopened'
    elseif verdict == 'n' then
      redis.call('DEL', probe)
    end
  elseif denied ~= '' then
    open(key, cooldown, expiry, denied)
    transition = 'opened'
  elseif calls > 0 then
    local size = math.floor(window / 10)
    local bucket = math.floor(now / size)
    redis.call('HINCRBY', key, 'c:' .. bucket, calls)
    if failed > 0 then redis.call('HINCRBY', key, 'f:' .. bucket, failed) end
    local counted = redis.call('HGETALL', key)
    local total, failures, oldest = 0, 0, bucket - 9
    for f = 1, #counted, 2 do
      local field, value = counted[f], tonumber(counted[f + 1])
      local of = tonumber(string.sub(field, 3))
      if of < oldest then redis.call('HDEL', key, field)
      elseif string.sub(field, 1, 1) == 'c' then total = total + value
      else failures = failures + value end
    end
    if failed > 0 and total >= min_calls and failures >= ratio * total then
      open(key, cooldown, expiry,
        string.format('%d of %d calls failed within %gs, the last: %s', failures, total, window / 1000, failing))
      transition = 'opened'
    else
      redis.call('PEXPIRE', key, window * 2)
    end
  end
  reply[#reply + 1] = transition
  reply[#reply + 1] = why
end
return reply
"""


class CircuitBreaker:
    """The breaker admission check; see the module docstring."""

    name = "breaker"

    def __init__(
        self,
        redis: Redis,
        *,
        provider: str,
        policy: Callable[[str], BreakerPolicy],
        probe_lease_seconds: float,
        clock: Callable[[], float] = time.time,
        notifier: Notifier = NO_NOTIFICATIONS,
    ) -> None:
        self.provider = provider
        self._notifier = notifier
        self._policy = policy
        self._probe_lease_ms = int(probe_lease_seconds * 1000)
        # Workers on several hosts compare their clocks with `open_until`: a few seconds of skew only moves
        # the probe that early or late, and the probe lease keeps it to one.
        self._clock = clock
        self._admit_script = redis.register_script(_ADMIT)
        self._release_script = redis.register_script(_RELEASE)

    def admit(self, candidates: Sequence[Candidate]) -> list[Decision]:
        """Run each candidate on its model while that model's breaker is closed (or as its probe), else on
        its fallback model likewise; defer the rest until the cool-down ends. One Redis round trip.
        Raises: RedisError."""
        wanted = (model for c in candidates for model in (c.request.model, c.agent.fallback_model) if model)
        models = list(dict.fromkeys(wanted))
        index = {model: at for at, model in enumerate(models, start=1)}
        now_ms = int(self._clock() * 1000)
        args: list[Any] = [now_ms, self._probe_lease_ms, len(models)]
        args += [self._expiry_ms(self._policy(model)) for model in models]
        for c in candidates:
            args += [index[c.request.model], index.get(c.agent.fallback_model or "", 0), c.call_id]
        reply = self._admit_script(keys=self._keys(models), args=args)
        picks, found = reply[: len(candidates)], reply[len(candidates) :]
        states = {
            model: _State(_text(found[3 * at]), int(found[3 * at + 1]), _text(found[3 * at + 2]))
            for at, model in enumerate(models)
        }
        return [self._decision(c, int(pick), states, now_ms) for c, pick in zip(candidates, picks, strict=True)]

    def release(self, ended: Sequence[CallEnded]) -> None:
        """Count the provider's successes and failures of these calls (or, while open, only the probe's),
        opening or closing breakers as they say (each change counted, logged and notified). One Redis round
        trip. Never raises: a count lost to a Redis outage only delays a breaker."""
        by_model: dict[str, list[CallEnded]] = {}
        for end in ended:
            by_model.setdefault(end.candidate.request.model, []).append(end)
        args: list[Any] = [int(self._clock() * 1000)]
        for model, ends in by_model.items():
            args += self._release_args(self._policy(model), ends)
        try:
            transitions = self._release_script(keys=self._keys(list(by_model)), args=args)
        except RedisError as exc:
            logger.warning("circuit breaker counts lost: %s", exc)
            return
        for model, transition, why in zip(by_model, transitions[::2], transitions[1::2], strict=True):
            if transition := _text(transition):
                BREAKER_TRANSITIONS.labels(provider=self.provider, model=model, transition=transition).inc()
                because = f": {_text(why)}" if why else ""
                logger.warning("circuit breaker %s for %s at %s%s", transition, model, self.provider, because)
                self._notifier.notify(self._event(model, transition, by_model[model]))

    def _event(self, model: str, transition: str, ends: list[CallEnded]) -> Event:
        """The notification of a change: no provider's message goes in it (a 401's can quote part of a key)."""
        labels = {"provider": self.provider, "model": model}
        if transition == "closed":
            summary = f"circuit breaker closed for {model} at {self.provider}: its probe call succeeded"
            return Event(EventType.BREAKER_CLOSED, summary, labels, {"transition": transition})
        if transition == "reopened":
            cause = "the probe call failed"
        elif any(getattr(end.error, "fault", None) is ProviderFault.DENIED for end in ends):
            cause = "the provider refused the key or the quota is used up"
        else:
            cause = "too many calls failed"
        summary = f"circuit breaker {transition} for {model} at {self.provider}: {cause}; its tasks wait"
        return Event(EventType.BREAKER_OPENED, summary, labels, {"transition": transition, "cause": cause})

    def _decision(self, candidate: Candidate, pick: int, states: dict[str, _State], now_ms: int) -> Decision:
        if pick in (1, 3):
            return Decision.run()
        fallback = candidate.agent.fallback_model
        if pick in (2, 4) and fallback:
            return Decision.run(request=replace(candidate.request, model=fallback))
        model = candidate.request.model
        state = states[model]
        waits = [self._wait(model, state, now_ms)]
        reason = f"breaker open for {model} at {self.provider}"
        if state.name == "probing":
            reason += " (a probe call is under way)"
        if fallback:
            waits.append(self._wait(fallback, states[fallback], now_ms))
            reason += f", and for its fallback {fallback}"
        if state.reason:
            reason += f": {state.reason}"
        return Decision.defer(reason, retry_in=min(waits), holdable=False)  # given back: an outage may last

    def _wait(self, model: str, state: _State, now_ms: int) -> float:
        """Seconds until a deferred task should look again at this (not closed) breaker."""
        if state.name == "probing":
            return min(self._policy(model).cooldown_seconds, PROBE_WAIT_SECONDS)
        return max(0.0, (state.open_until_ms - now_ms) / 1000)

    def _release_args(self, policy: BreakerPolicy, ends: list[CallEnded]) -> list[Any]:
        outcomes = [(end.candidate.call_id, _outcome(end)) for end in ends]
        faults = [end.error for end in ends if _outcome(end) == "f"]
        denied = [error for error in faults if getattr(error, "fault", None) is ProviderFault.DENIED]
        calls = sum(outcome != "n" for _, outcome in outcomes)
        return [
            int(policy.window_seconds * 1000),
            policy.min_calls,
            policy.failure_ratio,
            int(policy.cooldown_seconds * 1000),
            self._expiry_ms(policy),
            calls,
            len(faults),
            str(denied[0])[:REASON_CHARS] if denied else "",
            str(faults[-1])[:REASON_CHARS] if faults else "",
            len(outcomes),
            *(part for outcome in outcomes for part in outcome),
        ]

    def _expiry_ms(self, policy: BreakerPolicy) -> int:
        """How long a breaker's state outlives its last change: through the cool-down and a probe, so an
        open breaker never closes by expiring, then a window (an idle breaker is forgotten)."""
        return int((policy.cooldown_seconds + policy.window_seconds) * 1000) + self._probe_lease_ms

    def _keys(self, models: list[str]) -> list[str]:
        keys = []
        for model in models:
            key = f"{KEY_PREFIX}{self.provider}|{model}"
            keys += [key, f"{key}|probe"]
        return keys


def build_breaker(
    settings: Settings, *, redis: Redis, overrides: OverrideCache, notifier: Notifier = NO_NOTIFICATIONS
) -> CircuitBreaker:
    """The breaker for the provider the settings name, its policy from settings and per-model overrides,
    telling `notifier` of each change."""

    def policy(model: str) -> BreakerPolicy:
        def number(name: str, default: float) -> float:
            value = overrides.number(LimitScope.MODEL, model, name, default)
            return default if value is None else value

        return BreakerPolicy(
            window_seconds=settings.breaker_window_seconds,
            min_calls=int(number("breaker_min_calls", settings.breaker_min_calls)),
            failure_ratio=number("breaker_failure_ratio", settings.breaker_failure_ratio),
            cooldown_seconds=number("breaker_cooldown_seconds", settings.breaker_cooldown_seconds),
        )

    # A probe's call ends within the LLM timeout; the lease allows as much again for the wait before it.
    lease = 2 * settings.llm_timeout_seconds + 10
    return CircuitBreaker(
        redis, provider=provider_of(settings), policy=policy, probe_lease_seconds=lease, notifier=notifier
    )


def provider_of(settings: Settings) -> str:
    """The provider's host (and port, if given) from OPENAI_BASE_URL."""
    if not settings.openai_base_url:
        return DEFAULT_PROVIDER
    parts = urlsplit(settings.openai_base_url)
    return f"{parts.hostname}:{parts.port}" if parts.port else parts.hostname or DEFAULT_PROVIDER


def _outcome(end: CallEnded) -> str:
    """'s' the provider answered, 'f' the provider failed the call, 'n' it says nothing of the provider (not
    called, or the task's own fault)."""
    if end.reply is not None:
        return "s"
    return "f" if getattr(end.error, "fault", None) is not None else "n"


def _text(value: bytes | str | int) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
