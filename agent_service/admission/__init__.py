"""Admission controls between claim and call (see `admission.base`), one file each, and the set the
settings switch on."""

from __future__ import annotations

from collections.abc import Callable

from redis import Redis
from sqlalchemy.orm import Session, sessionmaker

from agent_service.admission import breaker, concurrency, rate_limits, spend_caps
from agent_service.admission.base import Admission, AdmissionCheck, Override
from agent_service.admission.concurrency import ConcurrencyCaps
from agent_service.admission.pause import PauseCheck
from agent_service.admission.rate_limits import RateLimits
from agent_service.config import Settings
from agent_service.llm.prices import PriceBook
from agent_service.notifications import NO_NOTIFICATIONS, Notifier
from agent_service.store.overrides import OverrideCache

# The settings each control lets an agent, a user or a model override (`python cli.py limits set`), by name,
# with what they mean; each control's module adds its own.
OVERRIDE_NAMES: dict[str, Override] = {
    **breaker.OVERRIDE_NAMES,
    **spend_caps.OVERRIDE_NAMES,
    **concurrency.OVERRIDE_NAMES,
    **rate_limits.OVERRIDE_NAMES,
}


def build_admission(
    settings: Settings,
    *,
    redis: Callable[[], Redis],
    session_factory: sessionmaker[Session],
    prices: PriceBook | None = None,
    notifier: Notifier = NO_NOTIFICATIONS,
) -> Admission:
    """The checks `settings` switch on, in the order they are asked: the cheapest and the ones that hold
        nothing first (pause, breaker, spend caps), those that reserve capacity last (concurrency leases, then
        rate-limit reservations), so that a task turned away early reserves nothing. `redis` gives the shared
        Redis client; it is only called when a check that needs it is on. The breaker and the spend caps tell
    `notifier` when they open or close, or hold tasks back."""
    prices = prices or PriceBook(settings)
    overrides = OverrideCache(session_factory)
    checks: list[AdmissionCheck] = []
    if settings.pause_enabled:
        checks.append(PauseCheck(redis))
    if settings.breaker_enabled:
        checks.append(breaker.build_breaker(settings, redis=redis(), overrides=overrides, notifier=notifier))
    caps = spend_caps.build(
        settings,
        redis=redis,
        overrides=overrides,
        prices=prices,
        session_factory=session_factory,
        notifier=notifier,
    )
    if caps is not None:
        checks.append(caps)
    if settings.concurrency_caps_enabled:
        checks.append(ConcurrencyCaps(settings, redis=redis, overrides=overrides))
    if settings.rate_limits_enabled:
        checks.append(RateLimits(settings, redis=redis, overrides=overrides))
    return Admission(checks)
