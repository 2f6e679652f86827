"""What the admission controls hold in Redis, read for the metrics exporter on each scrape: the pause flag
and each circuit breaker's state (`monitoring.SharedState`)."""

from __future__ import annotations

from collections.abc import Callable

from redis import Redis

from agent_service.admission.breaker import KEY_PREFIX as BREAKER_PREFIX
from agent_service.admission.pause import paused_since
from agent_service.monitoring import SharedState

_PROBE_SUFFIX = "|probe"


def read_shared_state(redis: Callable[[], Redis]) -> SharedState:
    """Whether the service is paused, and for each breaker that has state in Redis whether it is open
    (or half-open: its cool-down over, a probe call deciding). A breaker with no state is closed and not
    listed. Raises: RedisError."""
    client = redis()
    keys = [
        key.decode()
        for key in client.scan_iter(match=f"{BREAKER_PREFIX}*", count=500)
        if not key.endswith(_PROBE_SUFFIX.encode())
    ]
    pipeline = client.pipeline(transaction=False)
    for key in keys:
        pipeline.hexists(key, "open_until")
    breakers = {}
    for key, is_open in zip(keys, pipeline.execute(), strict=True):
        provider, _, model = key.removeprefix(BREAKER_PREFIX).partition("|")
        breakers[(provider, model)] = bool(is_open)
    return SharedState(paused=paused_since(client) is not None, breakers=breakers)
