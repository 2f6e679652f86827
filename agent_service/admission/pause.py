"""Pause: `python cli.py pause` sets one Redis key; every worker reads it once per batch (one GET) and,
while it is set, defers every task with the reason "paused" (its attempt given back) instead of calling
the model. With rate limits on, their script reads the key again as a call that waited for its slot
leaves, in the same round trip, so once `pause` has answered no call leaves. `python cli.py resume` deletes
the key: the deferred tasks come back within `PAUSE_RETRY_SECONDS`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from redis import Redis, RedisError

from agent_service.admission.base import CallEnded, Candidate, Decision, unreachable

PAUSE_KEY = "agent_service:paused"
PAUSED = "paused"
# A pause may last long: each waiting task is claimed again only this often, so a large backlog costs the
# database little while it waits.
PAUSE_RETRY_SECONDS = 3.0


class PauseCheck:
    """Defers everything while the service is paused."""

    name = "pause"

    def __init__(self, redis: Callable[[], Redis]) -> None:
        self._redis = redis

    def admit(self, candidates: Sequence[Candidate]) -> list[Decision]:
        try:
            paused = bool(candidates) and paused_since(self._redis()) is not None
        except RedisError as exc:
            return unreachable(candidates, "pause flag", exc)
        if paused:
            return [Decision.defer(PAUSED, retry_in=PAUSE_RETRY_SECONDS, holdable=False)] * len(candidates)
        return [Decision.run()] * len(candidates)

    def release(self, ended: Sequence[CallEnded]) -> None:
        """Holds nothing."""


def pause(redis: Redis, *, now: datetime | None = None) -> bool:
    """Stop every worker's new LLM calls (within one batch) until `resume`; a second pause keeps the first's time.
    Returns whether the service was running until now."""
    return bool(redis.set(PAUSE_KEY, (now or datetime.now(UTC)).isoformat(timespec="seconds"), nx=True))


def resume(redis: Redis) -> bool:
    """Let the workers call the model again. Returns whether the service was paused."""
    return bool(redis.delete(PAUSE_KEY))


def paused_since(redis: Redis) -> str | None:
    """When the service was paused (ISO 8601, UTC), or None when it runs."""
    value = redis.get(PAUSE_KEY)
    return value.decode() if isinstance(value, bytes) else value
