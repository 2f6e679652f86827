"""Kombu's Redis transport, with one redis-py client per channel for the commands it sends outside its event loop.

Kombu 5.7's Redis channel builds a new `redis.Redis` for each such command (`Channel.conn_or_acquire`): each
delivered message's entry in the unacknowledged index, each acknowledgement, each publish. A client shares the
channel's connection pool, so no connection is opened, but building one costs about 0.1 ms of CPU (redis-py copies
its response callbacks each time), twice per task, in the worker's busiest thread. A redis-py client is safe to
share between threads (each command or pipeline takes its own connection from the pool), so one per channel
serves every caller (docs/decisions.md, "One Redis client per broker channel").
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kombu.transport import TRANSPORT_ALIASES
from kombu.transport import redis as kombu_redis

TRANSPORT = "agent_service.messaging.redis_transport:Transport"


class Channel(kombu_redis.Channel):
    _shared_client: Any = None

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        if client:
            yield client
            return
        shared = self._shared_client
        # A channel drops its pool when its connection fails (`_disconnect_pools`); a client of the old pool would
        # hand out connections of a pool already disconnected.
        if shared is None or shared.connection_pool is not self.pool:
            shared = self._shared_client = self._create_client()
        yield shared


class Transport(kombu_redis.Transport):
    Channel = Channel


def use_for_redis_urls() -> None:
    """From now on in this process, `redis://` and `rediss://` broker URLs are served by this module's transport.
    It is registered under kombu's own names for them, so a URL keeps its scheme: kombu still encrypts a bare
    `rediss://` by that name, and `Connection.as_uri` (what Flower reads to pick its broker client, and what the
    worker logs) still says `redis://`. Call it before the process's first Redis broker connection: kombu
    remembers the class it resolved for a name."""
    TRANSPORT_ALIASES.update(redis=TRANSPORT, rediss=TRANSPORT)
