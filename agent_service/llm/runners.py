"""Where a worker runs its LLM requests, hundreds at once: on an event loop in a child process of its own
(`llm.process`, the default), or on an event loop thread inside the worker process.

A loop, not a thread per call; a child process, so the LLM client stack gets a core of its own and the
worker never imports it; hand-written on `run_coroutine_threadsafe` and `multiprocessing.connection`:
see docs/decisions.md, "LLM calls on one loop" and "The LLM process".
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import resource
import subprocess
import sys
import threading
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from itertools import count
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from agent_service.errors import RetryableError
from agent_service.llm.messages import LLMReply, LLMRequest
from agent_service.llm.send_slots import wait_for_slot
from agent_service.tracing import NO_TRACING, Attributes, Tracing

if TYPE_CHECKING:
    from agent_service.config import Settings

logger = logging.getLogger("agent_service")
_PACKAGE_PARENT = Path(__file__).resolve().parents[2]  # `-m agent_service...` resolves from here
# How long a worker process waits at start for its LLM process to be ready.
LLM_PROCESS_START_SECONDS = 30.0
# On close, the LLM process gets this long beyond the LLM timeout to answer its last calls and exit.
_STOP_MARGIN_SECONDS = 5.0
# Files a worker process holds beyond its LLM calls and its Redis client: database pool, broker, pipes, logs.
SPARE_OPEN_FILES = 64
RunRequest = Callable[..., Awaitable[LLMReply]]
# The provider as OpenTelemetry's GenAI conventions name it: every model is reached through the OpenAI API.
GEN_AI_PROVIDER = "openai"


@dataclass(frozen=True)
class CancelCalls:
    """Sent to the LLM process instead of a list of calls: abort these calls (by id), answering nothing."""

    call_ids: tuple[int, ...]


class LLMRunner(Protocol):
    """Runs LLM requests concurrently, off the calling thread."""

    def start(self) -> bool:
        """Get ready ahead of the first request (which otherwise does it); returns whether it is ready."""

    def submit(self, requests: list[LLMRequest]) -> list[Future[LLMReply]]:
        """Start every request; each future ends with its reply or the (classified) exception it raised."""

    def cancel(self, futures: Sequence[Future[LLMReply]]) -> None:
        """Abort these calls: each future ends cancelled at once, and its HTTP request is closed (so the
        provider stops generating, and bills no more than it produced). Calls already ended are left alone."""

    def close(self) -> None:
        """Stop. The LLM process answers the calls under way first; the in-process loop abandons them."""


def make_runner(settings: Settings, *, tracing: Tracing = NO_TRACING) -> LLMRunner:
    """The runner `settings` ask for: the LLM process (which traces its calls itself), or (LLM_PROCESS=false) a
    loop in this process, whose calls `tracing` traces."""
    if settings.llm_process:
        return ChildProcessRunner(settings)
    from agent_service.llm.client import (
        run_request,  # only here: with the LLM process, this process never loads the client
    )

    return BackgroundEventLoop(settings, run_request, tracing=tracing)


async def bounded_call(
    slots: asyncio.Semaphore, run_request: RunRequest, request: LLMRequest, *, settings: Settings, tracing: Tracing
) -> LLMReply:
    """`traced_call` once the request's rate-limit slot has come, among at most `slots` calls at once: a call
    waiting for a slot reserved ahead takes no place among the calls in flight."""
    await wait_for_slot(request.send_slot)
    async with slots:
        return await traced_call(run_request, request, settings=settings, tracing=tracing)


async def traced_call(
    run_request: RunRequest, request: LLMRequest, *, settings: Settings, tracing: Tracing
) -> LLMReply:
    """`run_request(request)` in a span under the request's traceparent, with the GenAI semantic conventions'
    attributes: the model, the tokens the reply used (an error: its type)."""
    if not tracing.enabled:
        return await run_request(request, settings=settings)
    with tracing.span(
        f"chat {request.model}", traceparent=request.traceparent, attributes=_request_attributes(request), client=True
    ) as span:
        reply = await run_request(request, settings=settings)
        span.set(_reply_attributes(reply))
    return reply


def _request_attributes(request: LLMRequest) -> Attributes:
    return {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": GEN_AI_PROVIDER,
        "gen_ai.system": GEN_AI_PROVIDER,  # the name before gen_ai.provider.name, which many backends still read
        "gen_ai.request.model": request.model,
        "gen_ai.request.temperature": request.temperature,
        "gen_ai.request.max_tokens": request.max_tokens,
    }


def _reply_attributes(reply: LLMReply) -> Attributes:
    attributes: dict[str, int | tuple[str, ...]] = {}
    if reply.finish_reason:
        attributes["gen_ai.response.finish_reasons"] = (reply.finish_reason,)
    if reply.usage is not None:
        attributes["gen_ai.usage.input_tokens"] = reply.usage.prompt_tokens
        attributes["gen_ai.usage.output_tokens"] = reply.usage.completion_tokens
    return attributes


class BackgroundEventLoop:
    """Runs requests with `run_request` on an event loop thread of this process."""

    def __init__(
        self, settings: Settings, run_request: RunRequest, *, name: str = "llm-loop", tracing: Tracing = NO_TRACING
    ) -> None:
        self._settings, self._run_request, self._tracing = settings, run_request, tracing
        self._loop = asyncio.new_event_loop()
        self._slots = asyncio.Semaphore(settings.llm_concurrency)
        self._thread = threading.Thread(target=self._loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def start(self) -> bool:
        """Ready from construction."""
        return True

    def submit(self, requests: list[LLMRequest]) -> list[Future[LLMReply]]:
        return [asyncio.run_coroutine_threadsafe(self._bounded(request), self._loop) for request in requests]

    def cancel(self, futures: Sequence[Future[LLMReply]]) -> None:
        for future in futures:
            future.cancel()  # run_coroutine_threadsafe cancels the coroutine's task with it

    def close(self) -> None:
        """Stop the loop and its thread; calls still under way are abandoned."""
        if self._loop.is_closed():
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    async def _bounded(self, request: LLMRequest) -> LLMReply:
        return await bounded_call(
            self._slots, self._run_request, request, settings=self._settings, tracing=self._tracing
        )


class ChildProcessRunner:
    """Runs requests in a child process (`python -m agent_service.llm.process`), started on first use and again after
    it dies; the requests it was running when it died fail as retryable. It exits when this process does,
    or when closed, once the calls under way have ended."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self._child: _Child | None = None

    def start(self) -> bool:
        """Start the child now and wait until it is ready (at most `LLM_PROCESS_START_SECONDS`): its imports
        take a second or more (several on a busy host), better spent before the first batch than inside that
        batch's time limit. Returns whether it is ready (False: it died, or is still not ready)."""
        child = self._running_child()
        return child.wait_ready(timeout=LLM_PROCESS_START_SECONDS) and child.alive()

    def submit(self, requests: list[LLMRequest]) -> list[Future[LLMReply]]:
        return self._running_child().submit(requests)

    def cancel(self, futures: Sequence[Future[LLMReply]]) -> None:
        with self._lock:
            child = self._child
        if child is not None:
            child.cancel(futures)

    def close(self) -> None:
        """Let the calls under way end (their futures get their outcomes), then stop the child. Bounded:
        a child still running LLM_TIMEOUT_SECONDS (plus a margin) later is killed, its calls failing."""
        with self._lock:
            if self._child is not None:
                self._child.stop(timeout=self._settings.llm_timeout_seconds + _STOP_MARGIN_SECONDS)
                self._child = None

    def _running_child(self) -> _Child:
        with self._lock:
            if self._child is None or not self._child.alive():
                self._child = _Child(self._settings)
            return self._child


class _Child:
    """One child process, with the futures of the calls it was sent."""

    def __init__(self, settings: Settings) -> None:
        calls_read, calls_write = os.pipe()
        outcomes_read, outcomes_write = os.pipe()
        # Pipes of their own rather than stdin/stdout, which a library printing something would corrupt.
        self._process = subprocess.Popen(
            [sys.executable, "-m", "agent_service.llm.process", str(calls_read), str(outcomes_write)],
            pass_fds=(calls_read, outcomes_write),
            stdin=subprocess.DEVNULL,
            env={**os.environ, **settings.as_env()},
            cwd=_PACKAGE_PARENT,
        )
        os.close(calls_read)
        os.close(outcomes_write)
        self._to_child = Connection(calls_write, readable=False)
        self._ids = count()
        self._pending: dict[int, Future[LLMReply]] = {}
        self._lock = threading.Lock()  # guards _ids and _pending
        # Sends are serialised apart from _lock, so that a send waiting on a full pipe never holds up the
        # reader, which is what empties the child's side.
        self._send_lock = threading.Lock()
        self._ready = threading.Event()  # set by the child's first message, once its imports are done
        threading.Thread(
            target=self._receive,
            args=(Connection(outcomes_read, writable=False),),
            name="llm-process-reader",
            daemon=True,
        ).start()

    def alive(self) -> bool:
        return self._process.poll() is None

    def wait_ready(self, *, timeout: float) -> bool:
        """Wait until the child has said it is ready (or died, or `timeout` passed); returns whether it is."""
        return self._ready.wait(timeout)

    def submit(self, requests: list[LLMRequest]) -> list[Future[LLMReply]]:
        futures: list[Future[LLMReply]] = [Future() for _ in requests]
        with self._lock:
            numbered = [(next(self._ids), request) for request in requests]
            self._pending.update((call_id, future) for (call_id, _), future in zip(numbered, futures))
        if not self._send(numbered):
            self._fail([call_id for call_id, _ in numbered])  # it died; the reader may not have noticed yet
        return futures

    def _send(self, message: list[tuple[int, LLMRequest]] | CancelCalls) -> bool:
        """Whether the child could be sent `message` (False: it died)."""
        try:
            with self._send_lock:
                self._to_child.send(message)
        except OSError:
            return False
        return True

    def cancel(self, futures: Sequence[Future[LLMReply]]) -> None:
        wanted = set(futures)
        with self._lock:
            call_ids = tuple(call_id for call_id, future in self._pending.items() if future in wanted)
            cancelled = [self._pending.pop(call_id) for call_id in call_ids]
        for future in cancelled:
            future.cancel()
            future.set_running_or_notify_cancel()  # wakes `concurrent.futures.wait`, which cancel() alone does not
        if call_ids:
            self._send(CancelCalls(call_ids))

    def stop(self, *, timeout: float) -> None:
        self._to_child.close()  # the child ends its calls under way and exits when its end reads EOF
        try:
            self._process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._process.kill()  # the reader fails the calls it had not answered
            self._process.wait()

    def _receive(self, from_child: Connection) -> None:
        try:
            while True:
                outcomes = from_child.recv()
                self._ready.set()
                for call_id, ok, value in outcomes:
                    with self._lock:
                        future = self._pending.pop(call_id, None)
                    if future is None:
                        continue  # cancelled here while its outcome was on its way
                    future.set_result(value) if ok else future.set_exception(value)
        except (EOFError, OSError):
            self._ready.set()  # no one waits for a child that is gone
            self._process.wait()
            with self._lock:
                lost = list(self._pending)
            self._fail(lost)

    def _fail(self, call_ids: list[int]) -> None:
        error = RetryableError(f"the LLM process exited (code {self._process.poll()}) while running this call")
        with self._lock:
            futures = [self._pending.pop(call_id) for call_id in call_ids if call_id in self._pending]
        for future in futures:
            future.set_exception(error)


def raise_open_file_limit(settings: Settings) -> int:
    """Raise this process's soft open-file limit (RLIMIT_NOFILE) to its hard limit, before it starts its LLM
    process (which inherits it), and log a warning when even that is below what `settings` may open at full
    load: a connection per LLM call at once (to the provider in the LLM process, a kept tool connection in the
    worker) and a Redis pool (`Settings.redis_pool_size`) in each. Under the common soft limit of 1024 the
    defaults would otherwise meet "Too many open files" at full load. Returns the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = settings.llm_concurrency + settings.redis_pool_size + SPARE_OPEN_FILES
    wanted = max(soft, needed) if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError) as exc:
            logger.warning("could not raise the open-file limit from %d to %d: %s", soft, wanted, exc)
    if soft != resource.RLIM_INFINITY and soft < needed:
        logger.warning(
            "the open-file limit (%d) is below the %d files LLM_CONCURRENCY=%d may need at full load:"
            " raise the hard limit (ulimit -Hn; Docker's --ulimit nofile, systemd's LimitNOFILE) or lower"
            " LLM_CONCURRENCY",
            soft,
            needed,
            settings.llm_concurrency,
        )
    return int(soft)


def settle_heap() -> None:
    """Tune the garbage collector for a long-running process under load, once its imports are done: freeze
    the import heap out of later collections, and collect the young generation every 20,000 net allocations
    instead of 700. See docs/decisions.md, "A settled heap"."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 10, 10)
