"""Following a task: what already happened (its recorded steps, read back from the database by the caller),
then its events as they are published, from a blocking read of its stream."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from redis import Redis

from agent_service.live.events import EventKind, LiveEvent, TaskId, decode, follower_key, stream_key
from agent_service.live.steps import StepEvent, covered

# A follower marks its task followed for this long and refreshes the mark well before it lapses; a follower
# that vanishes costs its task streaming for at most this long.
FOLLOWER_TTL_SECONDS = 15
# How long one blocking read waits at most (shorter when the client's socket timeout is: `_longest_wait`): the
# mark is refreshed, and the task's end asked, this often when idle.
POLL_SECONDS = 5.0
REDIS_PY_SOCKET_TIMEOUT = 5.0  # redis-py's own default, for a client whose pool names none (one made from a URL)
_READ_COUNT = 500  # events per read
_NOTHING_YET = "0-0"  # the id of the snapshot's events when the stream held none of them


@dataclass(frozen=True)
class Recorded:
    """What the database holds of a task: its steps as live events (`live.steps.recorded`), and the data of
    its `ended` event once it has ended."""

    steps: list[StepEvent] = field(default_factory=list)
    ended: dict[str, Any] | None = None


class TaskRecord(Protocol):
    """The task as its row and steps say (the caller reads the database: `live` never does)."""

    def recorded(self) -> Recorded:
        """Its steps so far and, once it has ended, its end."""

    def ended(self) -> dict[str, Any] | None:
        """The data of its `ended` event once it has ended, else None (asked whenever the stream is idle)."""


def follow_task(
    task_id: TaskId,
    *,
    redis: Redis,
    last_event_id: str = "0",
    timeout: float | None = None,
    record: TaskRecord | None = None,
) -> Iterator[LiveEvent]:
    """The task's events until its `ended` event (included). Marks the task followed while iterating, so the
    worker streams the tokens of every model call it sends from then on.

    From the start (`last_event_id` "0") with a `record`, what already happened comes first: the recorded steps
    as the events a follower would have seen, then, for a task that has ended, its end; else the stream. In
    this order, nothing is lost or seen twice:
      1. the task is marked followed; every step committed after this is published on its stream;
      2. the database is read (`record.recorded()`): each step committed before it is in this snapshot;
      3. the stream is read from its first event. A step event the snapshot holds (same kind and position,
         `live.steps.covered`) is dropped, now or when read later (it may be published after step 2 for a
         step committed before it), and so is every event before the last one it covers: a turn's tokens come
         before its `step`, so those are the tokens of turns the snapshot shows. What follows is new.
    The snapshot's events carry the id of the last stream event they cover ("0-0" if none): resuming with it
    as `last_event_id` reads the stream after it. Tokens of a call sent before step 1 are never streamed.

    With another `last_event_id` (a reconnecting client), the stream after it. A task whose stream expired, or
    that ended unfollowed, gets no `ended` event from the stream: `record.ended()` is asked whenever nothing
    came for `POLL_SECONDS`, and once it says the task ended, what the stream holds is read and the `ended`
    event made from the row if the stream had none. Without a `record`, only `timeout` (seconds, None: none)
    ends the wait for such a task.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    stream, follower = stream_key(task_id), follower_key(task_id)
    redis.set(follower, 1, ex=FOLLOWER_TTL_SECONDS)
    marked = time.monotonic()
    after, seen = last_event_id, set[Any]()
    if record is not None and last_event_id == "0":
        caught_up = _catch_up(redis, stream, record.recorded())
        yield from caught_up.events
        if caught_up.ended:
            return
        after, seen = caught_up.after, caught_up.seen
    over = record is not None and last_event_id != "0" and record.ended() is not None
    while True:
        entries = _read(redis, stream, after, wait=not over, deadline=deadline)
        for event in entries:
            after = event.id
            if covered(event.kind, event.data) in seen:
                continue
            yield event
            if event.kind is EventKind.ENDED:
                return
        if over and not entries:
            if ended := record.ended() if record is not None else None:
                yield LiveEvent(after, EventKind.ENDED, ended)
            return
        if deadline is not None and time.monotonic() >= deadline:
            return
        if time.monotonic() - marked > FOLLOWER_TTL_SECONDS / 3:
            redis.set(follower, 1, ex=FOLLOWER_TTL_SECONDS)
            marked = time.monotonic()
        if not entries and record is not None:
            over = record.ended() is not None


def _read(redis: Redis, stream: str, after: str, *, wait: bool, deadline: float | None) -> list[LiveEvent]:
    """The stream's next events after `after`, waiting up to `_longest_wait` (not past `deadline`) if `wait`."""
    longest = _longest_wait(redis)
    left = longest if deadline is None else min(longest, deadline - time.monotonic())
    if wait and left <= 0:
        return []
    block = max(1, int(left * 1000)) if wait else None  # None: a read that does not wait
    read: Any = redis.xread({stream: after}, count=_READ_COUNT, block=block)
    return [decode(entry_id, fields) for entry_id, fields in (read[0][1] if read else [])]


def _longest_wait(redis: Redis) -> float:
    """`POLL_SECONDS`, or half the client's socket timeout when that is shorter: the client gives up on a reply
    after its socket timeout, so a read blocked as long raised TimeoutError."""
    timeout = redis.connection_pool.connection_kwargs.get("socket_timeout", REDIS_PY_SOCKET_TIMEOUT)
    return POLL_SECONDS if timeout is None else min(POLL_SECONDS, timeout / 2)


@dataclass
class _CaughtUp:
    events: list[LiveEvent]  # what to yield first
    after: str  # the last stream entry looked at
    seen: set[Any]  # the step events yielded, to drop if they come again
    ended: bool  # the events end with `ended`


def _catch_up(redis: Redis, stream: str, known: Recorded) -> _CaughtUp:
    """The snapshot's events, then what the stream holds that they do not cover (see `follow_task`)."""
    seen = {covered(kind, data) for kind, data in known.steps}
    stored: Any = redis.xrange(stream) if known.ended is None else []
    entries = [decode(entry_id, fields) for entry_id, fields in stored]
    last = max((at for at, event in enumerate(entries) if covered(event.kind, event.data) in seen), default=-1)
    snapshot_id = entries[last].id if last >= 0 else _NOTHING_YET
    events = [LiveEvent(snapshot_id, kind, data) for kind, data in known.steps]
    if known.ended is not None:
        return _CaughtUp([*events, LiveEvent(snapshot_id, EventKind.ENDED, known.ended)], snapshot_id, seen, True)
    new = [event for event in entries[last + 1 :] if covered(event.kind, event.data) not in seen]
    ends = [at for at, event in enumerate(new) if event.kind is EventKind.ENDED]
    new = new[: ends[0] + 1] if ends else new
    after = entries[-1].id if entries else _NOTHING_YET
    return _CaughtUp(events + new, after, seen, bool(ends))
