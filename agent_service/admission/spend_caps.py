"""Spend caps: what a user and an agent may spend on LLM calls per UTC day and per UTC month.

Before a call, its most possible cost (its prompt estimate and all of its max_tokens, at its model's price)
is reserved against every cap that applies, in one Lua script for the whole batch, so two workers cannot
both take the last dollar: a call runs only if what is spent, plus what is reserved, plus its estimate fits
every cap. When the call ends its reservation is replaced by what it really cost, so the part of its
max_tokens it did not use is room again. A task that does not fit is held, before any call: checked again after
SPEND_CAP_RELEASE_RECHECK_SECONDS while it would fit once the calls in flight gave back what they reserved, else
after SPEND_CAP_RECHECK_SECONDS (or when the period rolls over); with SPEND_CAP_MODE=hard the latter fails
instead (decisions.md, "Spend caps used up to the cap").

State, in Redis for every worker, per cap (`agent_service:spend:<user|agent>:<id>:<day|month>`):
`:spent` the real costs (seeded from PostgreSQL when missing), `:reserved` the sum of the reservations,
`:held` each reservation's amount and `:holds` its deadline: a reservation whose worker died without
settling it is dropped after SPEND_HOLD_SECONDS by the next script that looks at that cap.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from redis import Redis
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from agent_service.admission.base import CallEnded, Candidate, Decision, Override
from agent_service.config import Settings
from agent_service.database import session_scope
from agent_service.llm.prices import PriceBook
from agent_service.models import LimitScope, Task
from agent_service.notifications import NO_NOTIFICATIONS, Event, EventType, Notifier
from agent_service.store.overrides import OverrideCache

logger = logging.getLogger("agent_service.admission")

KEY_PREFIX = "agent_service:spend"
DAILY, MONTHLY = "daily_spend_cap_usd", "monthly_spend_cap_usd"
_AGENT_OR_USER = frozenset({LimitScope.AGENT, LimitScope.USER})
OVERRIDE_NAMES = {
    DAILY: Override("USD the agent or user may spend on LLM calls per UTC day", _AGENT_OR_USER),
    MONTHLY: Override("USD the agent or user may spend on LLM calls per UTC calendar month", _AGENT_OR_USER),
}
# A period's keys outlive it by a day, so that a call that ends after midnight still finds its reservation.
KEY_GRACE_SECONDS = 24 * 60 * 60

# ARGV: now, deadline, then per candidate: id, estimate, cap count, and per cap: key, limit, ttl.
# Returns per candidate: 0 when every cap had room (and reserves the estimate on each), else the 1-based index
# of the cap without room (the first that its spending alone fills, else the first that its reservations fill),
# what it had spent and reserved, and 1 when only reservations fill it (it may fit once they are settled).
_RESERVE = """
local now, deadline = tonumber(ARGV[1]), ARGV[2]
local function purge(base)
  local expired = redis.call('ZRANGEBYSCORE', base .. ':holds', '-inf', now)
  for _, id in ipairs(expired) do
    local amount = redis.call('HGET', base .. ':held', id)
    if amount then
      redis.call('INCRBYFLOAT', base .. ':reserved', -tonumber(amount))
      redis.call('HDEL', base .. ':held', id)
    end
  end
  if #expired > 0 then redis.call('ZREMRANGEBYSCORE', base .. ':holds', '-inf', now) end
end
local out, i = {}, 3
while i <= #ARGV do
  local id, estimate, caps = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  i = i + 3
  local over, used, settling = 0, 0, 0
  for c = 0, caps - 1 do
    local base, limit = ARGV[i + 3 * c], tonumber(ARGV[i + 3 * c + 1])
    purge(base)
    local spent = tonumber(redis.call('GET', base .. ':spent') or '0')
    local total = spent + tonumber(redis.call('GET', base .. ':reserved') or '0')
    if spent + estimate > limit and (over == 0 or settling == 1) then
      over, used, settling = c + 1, total, 0
    elseif over == 0 and total + estimate > limit then
      over, used, settling = c + 1, total, 1
    end
  end
  if over == 0 then
    for c = 0, caps - 1 do
      local base, ttl = ARGV[i + 3 * c], ARGV[i + 3 * c + 2]
      redis.call('HSET', base .. ':held', id, estimate)
      redis.call('ZADD', base .. ':holds', deadline, id)
      redis.call('INCRBYFLOAT', base .. ':reserved', estimate)
      for _, suffix in ipairs({':held', ':holds', ':reserved'}) do redis.call('EXPIRE', base .. suffix, ttl) end
    end
  end
  out[#out + 1] = over
  out[#out + 1] = tostring(used)
  out[#out + 1] = settling
  i = i + 3 * caps
end
return out
"""

# ARGV per ended call: id, cost, key count, keys. Gives back each reservation and books the real cost.
_SETTLE = """
local i = 1
while i <= #ARGV do
  local id, cost, count = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  for k = i + 3, i + 2 + count do
    local base = ARGV[k]
    local amount = redis.call('HGET', base .. ':held', id)
    if amount then
      redis.call('INCRBYFLOAT', base .. ':reserved', -tonumber(amount))
      redis.call('HDEL', base .. ':held', id)
      redis.call('ZREM', base .. ':holds', id)
    end
    if cost > 0 and redis.call('EXISTS', base .. ':spent') == 1 then
      redis.call('INCRBYFLOAT', base .. ':spent', cost)
    end
  end
  i = i + 3 + count
end
return 0
"""


@dataclass(frozen=True)
class Cap:
    """One cap that applies to a call: whose, over which period, how many USD, and its Redis key."""

    scope: LimitScope
    subject: str
    period: str  # "daily" or "monthly"
    limit: float
    key: str
    starts: datetime
    ends: datetime

    @property
    def label(self) -> str:
        return f"{self.scope.value} {self.subject} {self.period} cap"


class SpendCaps:
    """The spend-cap check (see the module docstring)."""

    name = "spend_caps"

    def __init__(
        self,
        settings: Settings,
        *,
        redis: Redis,
        overrides: OverrideCache,
        prices: PriceBook,
        session_factory: sessionmaker[Session],
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        notifier: Notifier = NO_NOTIFICATIONS,
    ) -> None:
        self._settings, self._redis, self._overrides, self._prices = settings, redis, overrides, prices
        self._notifier = notifier
        self._session_factory, self._clock = session_factory, clock
        self._reserve, self._settle = redis.register_script(_RESERVE), redis.register_script(_SETTLE)
        self._lock = threading.Lock()
        self._reserved: dict[tuple[uuid.UUID, int], list[str]] = {}  # the cap keys each admitted call holds

    def admit(self, candidates: Sequence[Candidate]) -> list[Decision]:
        now = self._clock()
        caps = [self._caps(candidate, now) for candidate in candidates]
        estimates = [self._prices.estimate(candidate.request) or 0.0 for candidate in candidates]
        asked = [index for index, found in enumerate(caps) if found]
        if not asked:
            return [Decision.run()] * len(candidates)
        self._seed(list({cap.key: cap for index in asked for cap in caps[index]}.values()))
        answers = self._reserve(args=self._reserve_args(candidates, caps, estimates, asked, now))
        decisions = [Decision.run()] * len(candidates)
        for position, index in enumerate(asked):
            over, used, settling = answers[3 * position : 3 * position + 3]
            if int(over):
                cap = caps[index][int(over) - 1]
                decisions[index] = self._turned_away(cap, float(used), estimates[index], now, settling=bool(settling))
            else:
                with self._lock:
                    self._reserved[_call_id(candidates[index])] = [cap.key for cap in caps[index]]
        return decisions

    def release(self, ended: Sequence[CallEnded]) -> None:
        args: list[str | float | int] = []
        for end in ended:
            with self._lock:
                keys = self._reserved.pop(_call_id(end.candidate), None)
            if keys:
                args += [end.candidate.call_id, self._cost(end), len(keys), *keys]
        if args:
            try:
                self._settle(args=args)
            except Exception:  # release must not raise: the reservations expire after SPEND_HOLD_SECONDS
                logger.exception("spend caps: could not settle %d calls", len(ended))

    def _caps(self, candidate: Candidate, now: datetime) -> list[Cap]:
        settings = self._settings
        subjects = (
            (
                LimitScope.USER,
                candidate.user_id,
                settings.user_daily_spend_cap_usd,
                settings.user_monthly_spend_cap_usd,
            ),
            (
                LimitScope.AGENT,
                str(candidate.agent.id),
                settings.agent_daily_spend_cap_usd,
                settings.agent_monthly_spend_cap_usd,
            ),
        )
        caps = []
        for scope, subject, daily, monthly in subjects:
            for period, name, default in (("daily", DAILY, daily), ("monthly", MONTHLY, monthly)):
                limit = self._overrides.number(scope, subject, name, default)
                if limit is not None:
                    caps.append(_cap(scope, subject, period, limit, now))
        return caps

    def _seed(self, caps: list[Cap]) -> None:
        """Set each cap's `:spent` from PostgreSQL where Redis has none (a new period, a flushed Redis)."""
        present = self._redis.pipeline(transaction=False)
        for cap in caps:
            present.exists(f"{cap.key}:spent")
        missing = [cap for cap, found in zip(caps, present.execute(), strict=True) if not found]
        if not missing:
            return
        with session_scope(self._session_factory) as session:
            spent = [_spent_in_database(session, cap) for cap in missing]
        seed = self._redis.pipeline(transaction=False)
        for cap, amount in zip(missing, spent, strict=True):
            seed.set(f"{cap.key}:spent", repr(amount), nx=True, ex=_ttl(cap, self._clock()))
        seed.execute()

    def _reserve_args(
        self,
        candidates: Sequence[Candidate],
        caps: list[list[Cap]],
        estimates: list[float],
        asked: list[int],
        now: datetime,
    ) -> list[str | float | int]:
        args: list[str | float | int] = [now.timestamp(), now.timestamp() + self._settings.spend_hold_seconds]
        for index in asked:
            args += [candidates[index].call_id, repr(estimates[index]), len(caps[index])]
            for cap in caps[index]:
                args += [cap.key, repr(cap.limit), _ttl(cap, now)]
        return args

    def _turned_away(self, cap: Cap, used: float, estimate: float, now: datetime, *, settling: bool) -> Decision:
        """Held (or refused, with a hard cap); while the calls in flight may leave room as they settle (replies
        seldom use all their max_tokens), checked again soon rather than after the long re-check."""
        reason = f"{cap.label} {_usd(cap.limit)}: ${used:.6f} spent or reserved, this call may cost up to "
        reason += f"${estimate:.6f}"
        if settling:
            retry_in = self._settings.spend_cap_release_recheck_seconds
            return Decision.defer(
                f"{reason} (held while calls in flight settle; checked again in {retry_in:g} s)", retry_in=retry_in
            )
        self._notifier.notify(self._event(cap))
        if self._settings.spend_cap_mode == "hard":
            return Decision.refuse(reason)
        until_rollover = (cap.ends - now).total_seconds() + 1
        retry_in = min(self._settings.spend_cap_recheck_seconds, until_rollover)
        return Decision.defer(f"{reason} (held; checked again in {retry_in:.0f} s)", retry_in=retry_in)

    def _event(self, cap: Cap) -> Event:
        """The notification that `cap` is reached (each task it turns away tells it; repeats are collapsed)."""
        held = "refused" if self._settings.spend_cap_mode == "hard" else "held"
        summary = f"{cap.label} of {_usd(cap.limit)} reached: its tasks are {held}"
        labels = {"scope": cap.scope.value, "subject": cap.subject, "period": cap.period}
        details = {"limit_usd": cap.limit, "mode": self._settings.spend_cap_mode}
        return Event(EventType.SPEND_CAP_REACHED, summary, labels, details)

    def _cost(self, ended: CallEnded) -> float:
        usage = ended.reply.usage if ended.reply is not None else None
        if usage is None:
            return 0.0
        return self._prices.cost(ended.candidate.request.model, usage) or 0.0


def _usd(amount: float) -> str:
    """$5, $0.0002: a cap as its owner wrote it."""
    return "$" + f"{amount:.6f}".rstrip("0").rstrip(".")


def _call_id(candidate: Candidate) -> tuple[uuid.UUID, int]:
    return candidate.task_id, candidate.attempt


def _cap(scope: LimitScope, subject: str, period: str, limit: float, now: datetime) -> Cap:
    if period == "daily":
        starts = now.replace(hour=0, minute=0, second=0, microsecond=0)
        ends, label = starts + timedelta(days=1), starts.strftime("%Y-%m-%d")
    else:
        starts = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        ends, label = (starts + timedelta(days=32)).replace(day=1), starts.strftime("%Y-%m")
    return Cap(scope, subject, period, limit, f"{KEY_PREFIX}:{scope.value}:{subject}:{label}", starts, ends)


def _ttl(cap: Cap, now: datetime) -> int:
    return int((cap.ends - now).total_seconds()) + KEY_GRACE_SECONDS


def _spent_in_database(session: Session, cap: Cap) -> float:
    """What the tasks of this user or agent settled in the period cost. A task counts whole in the period of
    its last update (a task retried across midnight counts in the new day)."""
    whose = Task.user_id == cap.subject if cap.scope is LimitScope.USER else Task.agent_id == uuid.UUID(cap.subject)
    total = session.scalar(
        select(func.coalesce(func.sum(Task.cost_usd), 0.0)).where(whose, Task.updated_at >= cap.starts)
    )
    return float(total or 0.0)


def build(
    settings: Settings,
    *,
    redis: Callable[[], Redis],
    overrides: OverrideCache,
    prices: PriceBook,
    session_factory: sessionmaker[Session],
    notifier: Notifier = NO_NOTIFICATIONS,
) -> SpendCaps | None:
    """The check, when SPEND_CAPS is on or any service-wide cap is set; else None. It tells `notifier` of each
    cap reached."""
    defaults = (
        settings.user_daily_spend_cap_usd,
        settings.user_monthly_spend_cap_usd,
        settings.agent_daily_spend_cap_usd,
        settings.agent_monthly_spend_cap_usd,
    )
    if not settings.spend_caps and all(default is None for default in defaults):
        return None
    return SpendCaps(
        settings,
        redis=redis(),
        overrides=overrides,
        prices=prices,
        session_factory=session_factory,
        notifier=notifier,
    )
