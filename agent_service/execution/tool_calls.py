"""Agents' tool calls run on one event-loop thread of the worker process, each a concurrent Future the
pipeline waits on beside its LLM calls: a call costs a coroutine, not a thread (see `tools.http`)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from typing import Any

from agent_service.config import Settings
from agent_service.tools.addresses import Resolver, system_resolver
from agent_service.tools.definitions import ToolDefinition
from agent_service.tools.http import ToolOutcome, call_tool


class ToolCaller:
    """Runs tool calls with `tools.http.call_tool` on an event loop thread of this process, started on first
    use (so after any fork)."""

    def __init__(self, settings: Settings, *, resolver: Resolver = system_resolver) -> None:
        self._settings, self._resolver = settings, resolver
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None

    def submit(
        self,
        tool: ToolDefinition,
        arguments: Mapping[str, Any],
        *,
        allowed_hosts: Sequence[str],
        idempotency_key: str | None,
    ) -> Future[ToolOutcome]:
        """Start one call; its future ends with the outcome (a tool's own failures are outcomes too)."""
        call = call_tool(
            tool,
            arguments,
            settings=self._settings,
            allowed_hosts=allowed_hosts,
            resolver=self._resolver,
            idempotency_key=idempotency_key,
        )
        return asyncio.run_coroutine_threadsafe(call, self._running_loop())

    def close(self) -> None:
        """Stop the loop; calls under way are abandoned."""
        with self._lock:
            loop, self._loop = self._loop, None
        if loop is not None:
            loop.call_soon_threadsafe(loop.stop)

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                threading.Thread(target=self._loop.run_forever, name="tool-loop", daemon=True).start()
            return self._loop
