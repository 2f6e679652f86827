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
from urllib.parse import parse_qs, urlsplit

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


def broker_transport(broker_url: str) -> str | None:
    """The transport Celery should use for `broker_url` (its `broker_transport` setting): this module's for a
    Redis URL, None (kombu's choice by scheme) for any other. A `rediss://` URL without `ssl_*` options keeps
    kombu's own transport too, since kombu decides to encrypt such a URL by the scheme's name, which a transport
    given by path does not carry."""
    parts = urlsplit(broker_url)
    if parts.scheme == "redis":
        return TRANSPORT
    if parts.scheme == "rediss" and any(key.startswith("ssl_") for key in parse_qs(parts.query)):
        return TRANSPORT
    return None
