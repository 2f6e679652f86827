"""Following a task: its events as they are published, from a blocking read of its stream."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from redis import Redis

from agent_service.live.events import EventKind, LiveEvent, TaskId, decode, follower_key, stream_key

# A follower marks its task followed for this long and refreshes the mark well before it lapses; a follower
# that vanishes costs its task streaming for at most this long.
FOLLOWER_TTL_SECONDS = 15
# How long one blocking read waits at most: the mark is refreshed, and `finished` asked, this often when idle.
POLL_SECONDS = 5.0
_READ_COUNT = 500  # events per read


def follow_task(
    task_id: TaskId,
    *,
    redis: Redis,
    last_event_id: str = "0",
    timeout: float | None = None,
    finished: Callable[[], bool] | None = None,
) -> Iterator[LiveEvent]:
    """The task's events, from the one after `last_event_id` (default: from the start of its stream), as
    they come, until its `ended` event (included). Marks the task followed while iterating, so the worker
    streams its next calls' tokens.

    A task that already ended has no `ended` event to wait for once its stream expired, and one that ends
    without having been followed never gets one: pass `finished` (whether the task's row is final) and it is
    asked once right after the task is marked followed, and whenever nothing came for `POLL_SECONDS`; once
    it says yes, what the stream holds is read and the iteration ends. Without it, only `timeout` (seconds,
    None: none) ends the wait for such a task.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    stream, follower = stream_key(task_id), follower_key(task_id)
    after = last_event_id
    redis.set(follower, 1, ex=FOLLOWER_TTL_SECONDS)
    marked = time.monotonic()
    # Asked after the mark: a task that ends later finds the mark and publishes its `ended` event.
    over = finished is not None and finished()
    while True:
        wait = POLL_SECONDS if deadline is None else min(POLL_SECONDS, deadline - time.monotonic())
        block = None if over else max(1, int(wait * 1000))  # None: a read that does not wait
        read: Any = redis.xread({stream: after}, count=_READ_COUNT, block=block) if over or wait > 0 else []
        entries = read[0][1] if read else []
        for entry_id, fields in entries:
            event = decode(entry_id, fields)
            after = event.id
            yield event
            if event.kind is EventKind.ENDED:
                return
        if (over and not entries) or (deadline is not None and time.monotonic() >= deadline):
            return
        if time.monotonic() - marked > FOLLOWER_TTL_SECONDS / 3:
            redis.set(follower, 1, ex=FOLLOWER_TTL_SECONDS)
            marked = time.monotonic()
        if not entries and finished is not None:
            over = finished()
