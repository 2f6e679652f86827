"""When to try again: exponential backoff with jitter, never sooner than the peer asked."""

from __future__ import annotations

import random

from agent_service.config import Settings


def backoff_delay(attempt: int, *, settings: Settings, requested: float | None = None) -> float:
    """Seconds before attempt `attempt + 1`: exponential with jitter, or the peer's Retry-After plus a little."""
    exponential = min(settings.retry_backoff_max_seconds, settings.retry_backoff_base_seconds * 2 ** (attempt - 1))
    jittered = exponential * random.uniform(1 - settings.retry_jitter_ratio, 1 + settings.retry_jitter_ratio)
    if requested is None:
        return round(jittered, 3)
    # Retry-After is a floor; a little jitter on top keeps a burst of 429s from retrying in lockstep.
    return round(requested + random.uniform(0, settings.retry_jitter_ratio * max(requested, 1.0)), 3)
