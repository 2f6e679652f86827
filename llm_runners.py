"""Where a worker runs its LLM calls, hundreds at once: on an event loop in a child process of its own
(the default), or on an event loop thread inside the worker process.

Why a loop and not a thread per call: waiting threads fight for the GIL on every reply; one loop waits
on all their sockets for nothing. Why a child process: the LangChain/openai client stack costs about
3 ms of CPU per call, more than Celery and the database together, and in the worker's own process it
shares one GIL with them; in a child it gets a core of its own. The child imports only the LLM stack,
and the worker never imports it: the pair takes about 250 MB at full load, against 307 MB when each
loaded both.

`settle_heap` tunes the garbage collector of both processes once they have started.

Written here because no library does this: the standard library's `run_coroutine_threadsafe` and
`multiprocessing.connection` are the whole mechanism (anyio's blocking portal, which does the thread
part, adds a cancel scope and a task group to every call).
"""
from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from itertools import count
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any, Protocol

from errors import RetryableError
from schemas import LLMCall, LLMReply

if TYPE_CHECKING:
    from config import Settings

RunLLM = Callable[..., Awaitable[LLMReply]]


class LLMRunner(Protocol):
    def start(self) -> None:
        """Get ready ahead of the first call (which otherwise does it)."""

    def submit(self, calls: list[LLMCall]) -> list[Future[LLMReply]]:
        """Start every call; each future ends with its reply or the exception it raised."""

    def close(self) -> None: ...


class BackgroundEventLoop:
    """Runs `run_llm` calls on an event loop thread of this process."""

    def __init__(self, settings: Settings, run_llm: RunLLM, *, name: str = "llm-loop") -> None:
        self._settings, self._run_llm = settings, run_llm
        self._loop = asyncio.new_event_loop()
        self._slots = asyncio.Semaphore(settings.llm_concurrency)
        self._thread = threading.Thread(target=self._loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def start(self) -> None:
        """Ready from construction."""

    def submit(self, calls: list[LLMCall]) -> list[Future[LLMReply]]:
        return [asyncio.run_coroutine_threadsafe(self._bounded(call), self._loop) for call in calls]

    def close(self) -> None:
        """Stop the loop and its thread; calls still under way are abandoned."""
        if self._loop.is_closed():
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    async def _bounded(self, call: LLMCall) -> LLMReply:
        async with self._slots:
            return await self._run_llm(call.agent, title=call.title, description=call.description,
                                       settings=self._settings)


class ChildProcessRunner:
    """Runs LLM calls in a child process (`python -m llm_runners`), started on first use and again after
    it dies; the calls it was running when it died fail as retryable. It exits when this process does."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self._child: _Child | None = None

    def start(self) -> None:
        """Start the child now: its imports take a second or more, better spent before the first batch."""
        self._running_child()

    def submit(self, calls: list[LLMCall]) -> list[Future[LLMReply]]:
        return self._running_child().submit(calls)

    def close(self) -> None:
        with self._lock:
            if self._child is not None:
                self._child.stop()
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
            [sys.executable, "-m", "llm_runners", str(calls_read), str(outcomes_write)],
            pass_fds=(calls_read, outcomes_write), stdin=subprocess.DEVNULL,
            env={**os.environ, **settings.as_env()}, cwd=os.path.dirname(os.path.abspath(__file__)))
        os.close(calls_read)
        os.close(outcomes_write)
        self._to_child = Connection(calls_write, readable=False)
        self._ids = count()
        self._pending: dict[int, Future[LLMReply]] = {}
        self._lock = threading.Lock()  # guards _ids and _pending
        # Sends are serialised apart from _lock, so that a send waiting on a full pipe never holds up the
        # reader, which is what empties the child's side.
        self._send_lock = threading.Lock()
        threading.Thread(target=self._receive, args=(Connection(outcomes_read, writable=False),),
                         name="llm-process-reader", daemon=True).start()

    def alive(self) -> bool:
        return self._process.poll() is None

    def submit(self, calls: list[LLMCall]) -> list[Future[LLMReply]]:
        futures = [Future() for _ in calls]
        with self._lock:
            numbered = [(next(self._ids), call) for call in calls]
            self._pending.update((call_id, future) for (call_id, _), future in zip(numbered, futures))
        try:
            with self._send_lock:
                self._to_child.send(numbered)
        except OSError:
            self._fail([call_id for call_id, _ in numbered])  # it died; the reader may not have noticed yet
        return futures

    def stop(self) -> None:
        self._to_child.close()  # the child exits when its end reads EOF
        self._process.wait(timeout=10)

    def _receive(self, from_child: Connection) -> None:
        try:
            while True:
                for call_id, ok, value in from_child.recv():
                    with self._lock:
                        future = self._pending.pop(call_id)
                    future.set_result(value) if ok else future.set_exception(value)
        except (EOFError, OSError):
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


def settle_heap() -> None:
    """Tune the garbage collector for a long-running process under load, once its imports are done.

    The heap built by the imports lives as long as the process: frozen, it is left out of every later
    collection. Young collections then come every 20,000 net allocations instead of 700; the garbage
    they find is cycles only, as reference counting frees the rest. Both the worker and its LLM process
    do this. Measured: 3.2 -> 2.5 ms of CPU per call in the LLM process with 768 calls in flight, and
    about 1.25x the worker's throughput at 1000 ms of LLM latency, for the same memory."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 10, 10)


def _serve(*, from_parent: Connection, to_parent: Connection) -> None:
    """The child: run every call it is sent, concurrently, and send each outcome back as it ends.
    Outcomes are classified here, since an openai error does not survive pickling."""
    from config import Settings
    from errors import classify
    from llm import close_clients, run_agent

    settings = Settings()
    settle_heap()
    loop = asyncio.new_event_loop()
    slots = asyncio.Semaphore(settings.llm_concurrency)
    outbox: list[tuple[int, bool, Any]] = []
    running: set[asyncio.Task] = set()  # the loop keeps only weak references to its tasks

    def send_outbox() -> None:
        try:
            to_parent.send(outbox[:])
        except BrokenPipeError:
            pass  # the worker is gone; the EOF on the other pipe shuts this process down
        outbox.clear()

    def finished(call_id: int, ok: bool, value: Any) -> None:
        if not outbox:
            loop.call_soon(send_outbox)  # the calls that end in the same loop pass go back in one message
        outbox.append((call_id, ok, value))

    async def run(call_id: int, call: LLMCall) -> None:
        async with slots:
            try:
                reply = await run_agent(call.agent, title=call.title, description=call.description, settings=settings)
            except Exception as exc:
                finished(call_id, False, classify(exc))
            else:
                finished(call_id, True, reply)

    async def shut_down() -> None:
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        await close_clients()

    def on_calls() -> None:
        try:
            calls = from_parent.recv()
        except EOFError:  # the worker exited or closed the runner
            loop.stop()
            return
        for call_id, call in calls:
            task = loop.create_task(run(call_id, call))
            running.add(task)
            task.add_done_callback(running.discard)

    loop.add_reader(from_parent.fileno(), on_calls)
    loop.run_forever()
    loop.run_until_complete(shut_down())  # nobody is left to take the replies of the calls under way


if __name__ == "__main__":
    _serve(from_parent=Connection(int(sys.argv[1]), writable=False), to_parent=Connection(int(sys.argv[2]), readable=False))
