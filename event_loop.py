"""One asyncio event loop on a background thread, where a worker process runs all its LLM calls.

Why a loop and not a thread per call: hundreds of calls wait on the LLM at once, and waiting threads
fight for the GIL on every reply; one loop waits on all their sockets for nothing. Why written here:
the standard library's `run_coroutine_threadsafe` is the whole mechanism, and anyio's blocking
portal, which does the same, adds a cancel scope and task group to every call.
"""
from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable
from concurrent.futures import Future
from typing import TypeVar

T = TypeVar("T")


class BackgroundEventLoop:
    """Runs coroutines submitted from any thread, at most `max_concurrency` at once."""

    def __init__(self, max_concurrency: int, *, name: str = "llm-loop") -> None:
        self._loop = asyncio.new_event_loop()
        self._slots = asyncio.Semaphore(max_concurrency)
        self._thread = threading.Thread(target=self._loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def submit(self, work: Awaitable[T]) -> Future[T]:
        """Schedule `work` on the loop; the returned future holds its result or exception."""
        return asyncio.run_coroutine_threadsafe(self._bounded(work), self._loop)

    def close(self) -> None:
        """Stop the loop and its thread; calls still under way are abandoned."""
        if self._loop.is_closed():
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    async def _bounded(self, work: Awaitable[T]) -> T:
        async with self._slots:
            return await work
