"""Global rate limits: requests and tokens per minute per model (LLM_RATE_LIMITS, or a model's own `rpm`/`tpm`
override), and per agent and per user (overrides), shared by every worker through Redis.

Each limit is a GCRA bucket: one Redis key holding its theoretical arrival time (TAT), which every reservation
pushes forward by `amount * 60 / per_minute` seconds and which must stay within `rate_limit_burst_seconds` of
the call's slot. Before a batch's calls, one Lua script reserves, for each candidate whose slot comes within
`admission_hold_seconds`, one request and its estimated tokens (the prompt's characters / 4, plus `max_tokens`
when `rate_limit_count_max_tokens`, as OpenAI counts them) in every limit that applies, or in none of them. The
request carries its slot (`llm.send_slots.SendSlot`) to the LLM process, which sends it when the slot comes,
without the worker's thread or a claim waiting for it; a call that leaves more than `rate_limit_late_seconds`
after its slot (a busy host) takes a new one as it leaves, so calls reserved apart never leave together. A
candidate whose slot is further is deferred, without spending an attempt, to come back when half the horizon
is left before it would fit. When the pause is obeyed, the same script reads it, and a call that waited for its
slot reads it again before it leaves. After each call a second script takes the difference between the
estimate and the real usage back (or adds it), atomically.

A reservation needs no lease: a TAT only says when the bucket empties, and its key expires then. A worker
SIGKILLed holding reservations leaves them counted as spent, which the bucket drains at the limit's rate:
within `burst` seconds plus the reserved amount's own share, capacity is back in full. See docs/decisions.md,
"Rate limits: one GCRA script for every limit", "Rate limits: a slot is taken when the call leaves" and "Rate
limits: slots reserved ahead".
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import cast

from redis import Redis, RedisError
from redis.commands.core import Script

from agent_service.admission.base import CallEnded, Candidate, Decision, Override, release_failed, unreachable
from agent_service.admission.pause import PAUSE_KEY, PAUSE_RETRY_SECONDS, PAUSED
from agent_service.config import Settings
from agent_service.llm.messages import LLMRequest
from agent_service.llm.send_slots import RESERVE, SendSlot, reserve_arguments
from agent_service.models import LimitScope
from agent_service.monitoring import RATE_LIMIT_WAIT
from agent_service.store.overrides import OverrideCache

RPM, TPM = "rpm", "tpm"
OVERRIDE_NAMES = {
    RPM: Override("LLM requests per minute (all workers together)", frozenset(LimitScope)),
    TPM: Override("LLM tokens per minute, prompt and completion (all workers together)", frozenset(LimitScope)),
}
KEY_PREFIX = "agent_service:rate"
MIN_RETRY_SECONDS = 0.1

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

    name = "rate_limits"

    def __init__(
        self,
        settings: Settings,
        *,
        redis: Callable[[], Redis],
        overrides: OverrideCache,
    ) -> None:
        self._redis = redis
        self._overrides = overrides
        self._models = settings.llm_rate_limits
        self.burst_seconds = settings.rate_limit_burst_seconds
        self.max_wait_seconds = settings.rate_limit_max_wait_seconds
        self.horizon_seconds = settings.admission_hold_seconds
        self._late_seconds = settings.rate_limit_late_seconds
        self._counts_max_tokens = settings.rate_limit_count_max_tokens
        self._pause_key = PAUSE_KEY if settings.pause_enabled else None  # read in the same script when obeyed
        self._held: dict[tuple[uuid.UUID, int], _Reservation] = {}
        self._lock = threading.Lock()
        self._scripts: dict[str, Script] = {}

    def admit(self, candidates: Sequence[Candidate]) -> list[Decision]:
        """Reserves the calls whose slots come within the horizon, each to be sent when its slot comes, and
        defers the others: one script call, which also reads the pause when it is obeyed."""
        limits = [self._limits(candidate) for candidate in candidates]
        if not any(limits):
            return [Decision.run()] * len(candidates)
        amounts = [self._amounts(candidate.request) for candidate in candidates]
        keys, argv = reserve_arguments(
            [
                [(limit.key, _cost(limit, amount)) for limit in applying]
                for applying, amount in zip(limits, amounts, strict=True)
            ],
            burst_seconds=self.burst_seconds,
            horizon_seconds=self.horizon_seconds,
            pause_key=self._pause_key,
        )
        try:
            answers = self._script("reserve", RESERVE)(keys=keys, args=argv)
        except RedisError as exc:
            return unreachable(candidates, "rate limits", exc)
        if answers == [-1]:
            return [Decision.defer(PAUSED, retry_in=PAUSE_RETRY_SECONDS, holdable=False)] * len(candidates)
        now = time.time()
        decisions = []
        for candidate, applying, amount, answer in zip(
            candidates, limits, amounts, cast(list[list[bytes]], answers), strict=True
        ):
            blocker, wait = int(answer[0]), float(answer[1])
            if blocker:
                decisions.append(self._deferred(applying, keys[blocker - 1], wait))
                continue
            if wait:
                RATE_LIMIT_WAIT.labels(candidate.request.model).observe(wait)
            decisions.append(self._reserved(candidate, applying, amount, now=now, wait=wait))
        return decisions

    def _deferred(self, applying: tuple[_Limit, ...], blocker: str, wait: float) -> Decision:
        """A candidate whose slot is beyond the horizon waits outside, coming back when half the horizon is left
        before it would fit: early enough to find its slot within the horizon, late enough not to be turned
        away again by the calls reserved before it."""
        label = next(limit.label for limit in applying if limit.key == blocker)
        retry_in = max(MIN_RETRY_SECONDS, wait - self.horizon_seconds / 2)
        return Decision.defer(f"rate limit {label}", retry_in=retry_in, holdable=False)

    def _reserved(
        self, candidate: Candidate, applying: tuple[_Limit, ...], amounts: tuple[int, int], *, now: float, wait: float
    ) -> Decision:
        """A reserved candidate runs, holding its reservation, with a request that leaves when its slot comes
        (`wait` seconds after `now`, this host's time) and by `rate_limit_late_seconds` after it, or takes a new
        slot as it leaves (`llm.send_slots`)."""
        with self._lock:
            self._held[(candidate.task_id, candidate.attempt)] = _Reservation(applying, *amounts)
        slot = SendSlot(
            not_before=now + wait if wait else 0.0,
            leave_by=now + wait + self._late_seconds,
            buckets=tuple(limit.key for limit in applying),
            costs=tuple(_cost(limit, amounts) for limit in applying),
            burst_seconds=self.burst_seconds,
            max_wait_seconds=self.max_wait_seconds,
            pause_key=self._pause_key,
        )
        return Decision.run(request=replace(candidate.request, send_slot=slot))

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

    def _amounts(self, request: LLMRequest) -> tuple[int, int]:
        """The prompt's estimated tokens and the reply's share reserved before the call: its `max_tokens` when
        the provider counts them on arrival (OpenAI does), else none (the reply's tokens are added after)."""
        return request.estimated_prompt_tokens(), request.max_tokens if self._counts_max_tokens else 0

    def _script(self, name: str, source: str) -> Script:
        if name not in self._scripts:
            self._scripts[name] = self._redis().register_script(source)
        return self._scripts[name]


def _cost(limit: _Limit, amounts: tuple[int, int]) -> float:
    """The seconds of `limit` that a call of these amounts (prompt tokens, reply tokens reserved) costs."""
    return limit.seconds(1 if limit.kind == RPM else sum(amounts))


def _taken_back(kind: str, held: _Reservation, call: CallEnded) -> float:
    """How much of the reservation in a `kind` limit to give back (negative: to add) once `call` ended."""
    if not call.called:
        return 1 if kind == RPM else held.prompt_tokens + held.max_tokens
    if kind == RPM:
        return 0
    usage = call.reply.usage if call.reply is not None else None
    if held.max_tokens:
        # Reserved as the provider counts on arrival (prompt and max_tokens), which it keeps whatever the reply
        # used: only the prompt's estimate is corrected.
        return held.prompt_tokens - usage.prompt_tokens if usage is not None else 0
    return held.prompt_tokens - usage.total_tokens if usage is not None else 0
