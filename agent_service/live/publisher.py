"""Publishing a task's progress from the worker (the LLM process writes a call's tokens: `live.tokens`).

Every write is conditional: an event is added only when its task is followed or already has a stream (a
follower that left may come back with its last event id), in one Lua script per batch of events, so a task
nobody follows costs one cheap script call per batch and leaves nothing in Redis. Each write trims the stream
to about `LIVE_STREAM_MAX_EVENTS` and sets it to expire `LIVE_STREAM_TTL_SECONDS` after its last event.
Redis trouble never fails a task: the event is dropped, with a warning.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from redis import Redis, RedisError

from agent_service.config import Settings
from agent_service.live.events import EventKind, TaskId, encode, follower_key, stream_key

logger = logging.getLogger(__name__)

# KEYS: per event, its stream then its follower key. ARGV: max events, TTL, then per event its kind and data.
_PUBLISH_IF_FOLLOWED = """
local written = 0
for i = 1, #KEYS, 2 do
  if redis.call('EXISTS', KEYS[i], KEYS[i + 1]) > 0 then
    redis.call('XADD', KEYS[i], 'MAXLEN', '~', ARGV[1], '*', 'kind', ARGV[i + 2], 'data', ARGV[i + 3])
    redis.call('EXPIRE', KEYS[i], ARGV[2])
    written = written + 1
  end
end
return written
"""


@dataclass(frozen=True)
class Update:
    """An event to publish on a task's stream."""

    task_id: TaskId
    kind: EventKind
    data: dict[str, Any] = field(default_factory=dict)


class LivePublisher:
    """Publishes task events for followers; see the module docstring. Thread-safe (redis-py's pool)."""

    def __init__(self, redis: Redis, *, settings: Settings) -> None:
        self._redis = redis
        self._max_events, self._ttl = settings.live_stream_max_events, settings.live_stream_ttl_seconds
        self._script = redis.register_script(_PUBLISH_IF_FOLLOWED)

    def followed(self, task_ids: Sequence[TaskId]) -> set[str]:
        """Which of these tasks (as strings) someone follows or has followed (their stream exists): one round
        trip for them all. Empty when Redis cannot say."""
        if not task_ids:
            return set()
        pipe = self._redis.pipeline(transaction=False)
        for task_id in task_ids:
            pipe.exists(follower_key(task_id), stream_key(task_id))
        try:
            counts = pipe.execute()
        except RedisError as exc:
            logger.warning("live output: cannot tell which tasks are followed: %s", exc)
            return set()
        return {str(task_id) for task_id, count in zip(task_ids, counts, strict=True) if count}

    def publish(self, task_id: TaskId, kind: EventKind, data: dict[str, Any] | None = None) -> None:
        """Add one event to the task's stream, if it is followed."""
        self.publish_many([Update(task_id, kind, data or {})])

    def publish_many(self, updates: Iterable[Update]) -> int:
        """Add each event to its task's stream, those of followed tasks only, in order, in one round trip.
        Returns how many were written."""
        keys: list[str] = []
        args: list[Any] = [self._max_events, self._ttl]
        for update in updates:
            keys += [stream_key(update.task_id), follower_key(update.task_id)]
            fields = encode(update.kind, update.data)
            args += [fields["kind"], fields["data"]]
        if not keys:
            return 0
        try:
            return int(self._script(keys=keys, args=args))
        except RedisError as exc:
            logger.warning("live output: %d event(s) not published: %s", len(keys) // 2, exc)
            return 0

    def ended(self, task_id: TaskId, status: str, *, result: str | None = None, error: str | None = None) -> None:
        """Publish the task's last event (its final `status`, with its result or error); its stream then
        expires after `LIVE_STREAM_TTL_SECONDS`."""
        self.publish_many([ended_update(task_id, status, result=result, error=error)])


def ended_update(task_id: TaskId, status: str, *, result: str | None = None, error: str | None = None) -> Update:
    """The `ended` event of a task that finished with `status`."""
    data: dict[str, Any] = {"status": status.value if isinstance(status, enum.Enum) else status}
    if result is not None:
        data["result"] = result
    if error is not None:
        data["error"] = error
    return Update(task_id, EventKind.ENDED, data)
