"""Admission controls between claim and call (see `admission.base`), one file each, and the set the
settings switch on."""

from __future__ import annotations

from collections.abc import Callable

from redis import Redis
from sqlalchemy.orm import Session, sessionmaker

from admission import concurrency, rate_limits
from admission.base import Admission, AdmissionCheck
from admission.concurrency import ConcurrencyCaps
from admission.pause import PauseCheck
from admission.rate_limits import RateLimits
from config import Settings
from store.overrides import OverrideCache

# The settings each control lets an agent, a user or a model override (`python cli.py limits set`), by name,
# with what they mean; each control's module adds its own.
OVERRIDE_NAMES: dict[str, str] = {**concurrency.OVERRIDES, **rate_limits.OVERRIDES}


def build_admission(
    settings: Settings, *, redis: Callable[[], Redis], session_factory: sessionmaker[Session]
) -> Admission:
    """The checks `settings` switch on, in the order they are asked: the cheapest and the ones that hold
    nothing first (pause, breaker, spend caps), those that reserve capacity last (concurrency leases, then
    rate-limit reservations), so that a task turned away early reserves nothing. `redis` gives the shared
    Redis client; it is only called when a check that needs it is on."""
    overrides = OverrideCache(session_factory)
    checks: list[AdmissionCheck] = []
    if settings.pause_enabled:
        checks.append(PauseCheck(redis))
    if settings.concurrency_caps_enabled:
        checks.append(ConcurrencyCaps(settings, redis=redis, overrides=overrides))
    if settings.rate_limits_enabled:
        checks.append(RateLimits(settings, redis=redis, overrides=overrides))
    return Admission(checks)
