"""Writing one LLM call's tokens to its task's stream, from the LLM process (asyncio, `redis.asyncio`).

The first tokens are written at once; later ones at most every `LIVE_TOKEN_FLUSH_MS`, the text that came in
between as one `token` event (one XADD and its EXPIRE, pipelined). Redis trouble never fails the call: the
writer stops writing, with a warning.
"""

from __future__ import annotations

import asyncio
import logging
from types import TracebackType
from typing import Any

from redis import RedisError
from redis.asyncio import Redis

from agent_service.config import Settings
from agent_service.live.events import EventKind, encode

logger = logging.getLogger(__name__)


class TokenWriter:
    """Batches a call's token deltas into `token` events on stream `key`. Use as `async with`: leaving the
    block normally writes what is left; leaving it by an exception (the call failed or was cancelled) drops it.
    """

    def __init__(self, redis: Redis, key: str, *, settings: Settings) -> None:
        self._redis, self._key = redis, key
        self._max_events, self._ttl = settings.live_stream_max_events, settings.live_stream_ttl_seconds
        self._interval = settings.live_token_flush_ms / 1000
        self._pending: list[str] = []
        self._flushing: asyncio.Task[None] | None = None
        self._last_write = float("-inf")
        self._writing = False  # the flush task is writing (not waiting for its interval, or not started)
        self._broken = False

    def add(self, text: str) -> None:
        """Take a delta; it is written within `LIVE_TOKEN_FLUSH_MS`."""
        if not text or self._broken:
            return
        self._pending.append(text)
        if self._flushing is None:
            self._flushing = asyncio.get_running_loop().create_task(self._flush_when_due())

    async def __aenter__(self) -> TokenWriter:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if kind is not None:
            if self._flushing is not None:
                self._flushing.cancel()
            return
        if self._flushing is not None:
            if not self._writing:
                self._flushing.cancel()  # the rest is written now, not at the next interval
            await asyncio.wait([self._flushing])  # a write under way ends first, so the events stay in order
        await self._write()

    async def _flush_when_due(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                await asyncio.sleep(max(0.0, self._last_write + self._interval - loop.time()))
                self._last_write = loop.time()
                self._writing = True
                try:
                    await self._write()
                finally:
                    self._writing = False
        finally:
            self._flushing = None

    async def _write(self) -> None:
        if not self._pending or self._broken:
            return
        fields: dict[Any, Any] = encode(EventKind.TOKEN, {"text": "".join(self._pending)})
        self._pending.clear()
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.xadd(self._key, fields, maxlen=self._max_events, approximate=True)
                pipe.expire(self._key, self._ttl)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            self._broken = True
            logger.warning("live output: tokens no longer written to %s: %s", self._key, exc)
