"""Agents' tool calls run on one event-loop thread of the worker process, each a concurrent Future the
pipeline waits on beside its LLM calls: a call costs a coroutine, not a thread (see `tools.http`). The HTTP
client is loaded with the first call, so a worker whose agents call no tool never loads it (aiohttp: 8 MB)."""

from __future__ import annotations

import asyncio
import atexit
import logging
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from agent_service.config import Settings
from agent_service.tools.addresses import Resolver, system_resolver
from agent_service.tools.definitions import ToolDefinition
from agent_service.tools.outcomes import ToolOutcome

if TYPE_CHECKING:
    from agent_service.tools.http import Connections

logger = logging.getLogger("agent_service.tools")
CLOSE_SECONDS = 5.0


class ToolCaller:
    """Runs tool calls with `tools.http.call_tool` on an event loop thread of this process, started on first
    use (so after any fork), their connections kept alive between calls (`tools.http.Connections`): as many as
    the process makes LLM calls at once, since each of its runs may be calling a tool at the same moment."""

    def __init__(self, settings: Settings, *, resolver: Resolver = system_resolver) -> None:
        self._settings, self._resolver = settings, resolver
        self._lock = threading.Lock()
        self._running: tuple[asyncio.AbstractEventLoop, Connections] | None = None  # the loop, its connections

    def submit(
        self,
        tool: ToolDefinition,
        arguments: Mapping[str, Any],
        *,
        allowed_hosts: Sequence[str],
        idempotency_key: str | None,
    ) -> Future[ToolOutcome]:
        """Start one call; its future ends with the outcome (a tool's own failures are outcomes too)."""
        loop, connections = self._running_loop()
        from agent_service.tools.http import call_tool  # loaded by `_running_loop`: see the module docstring

        call = call_tool(
            tool,
            arguments,
            settings=self._settings,
            allowed_hosts=allowed_hosts,
            resolver=self._resolver,
            idempotency_key=idempotency_key,
            connections=connections,
        )
        return asyncio.run_coroutine_threadsafe(call, loop)

    def close(self, *, timeout: float = CLOSE_SECONDS) -> None:
        """Close the kept-alive connections (waiting up to `timeout` seconds) and stop the loop; calls under way
        are abandoned. Done at the latest when the interpreter exits (a prefork pool process, which exits without
        atexit hooks, closes it when it stops): aiohttp reports a client collected unclosed as an error."""
        with self._lock:
            running, self._running = self._running, None
        if running is None:
            return
        atexit.unregister(self.close)
        loop, connections = running
        closed = asyncio.run_coroutine_threadsafe(connections.aclose(), loop)
        try:
            closed.result(timeout=timeout)
        except Exception:  # closing is best effort: the process is going anyway
            logger.warning("the tool connections were not all closed within %g s", timeout, exc_info=True)
        finally:
            loop.call_soon_threadsafe(loop.stop)

    def _running_loop(self) -> tuple[asyncio.AbstractEventLoop, Connections]:
        with self._lock:
            if self._running is None:
                from agent_service.tools.http import Connections, kept_connections  # the first call: see above

                loop = asyncio.new_event_loop()
                self._running = loop, Connections(kept=kept_connections(self._settings.llm_concurrency))
                threading.Thread(target=loop.run_forever, name="tool-loop", daemon=True).start()
                atexit.register(self.close)
            return self._running
