"""When a task is tried again: exponential backoff with jitter, capped, never sooner than the peer asked."""

from __future__ import annotations

from agent_service.execution.retry import backoff_delay
from tests.support import make_settings

SETTINGS = make_settings(retry_backoff_base_seconds=0.2, retry_backoff_max_seconds=2.0, retry_jitter_ratio=0.25)


def test_backoff_grows_exponentially_within_the_jitter_band():
    ratio = SETTINGS.retry_jitter_ratio
    for attempt in (1, 2, 3):
        expected = SETTINGS.retry_backoff_base_seconds * 2 ** (attempt - 1)
        delays = [backoff_delay(attempt, settings=SETTINGS) for _ in range(200)]
        assert expected * (1 - ratio) - 0.001 <= min(delays) and max(delays) <= expected * (1 + ratio) + 0.001
        assert len(set(delays)) > 20  # jittered, not lockstep


def test_backoff_never_undercuts_retry_after_and_is_capped_otherwise():
    assert all(backoff_delay(1, settings=SETTINGS, requested=7.5) >= 7.5 for _ in range(100))
    assert backoff_delay(30, settings=SETTINGS) <= SETTINGS.retry_backoff_max_seconds * (
        1 + SETTINGS.retry_jitter_ratio
    )
