"""The LLM process: `python -m agent_service.llm.process CALLS_FD OUTCOMES_FD`, started by
`llm.runners.ChildProcessRunner`.

It runs every request it is sent, concurrently on one event loop, and sends each outcome back as it ends.
It imports only the LLM stack (no database, no Celery). It stops only when its worker closes the pipe, and
then only once the calls under way have ended: signals to the worker's process group (Ctrl-C in a terminal,
a supervisor stopping the group) are the worker's to act on, and an LLM call cut short is paid for twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from multiprocessing.connection import Connection
from typing import Any

from agent_service.config import Settings
from agent_service.errors import classify
from agent_service.llm.client import close_clients, run_request
from agent_service.llm.messages import LLMRequest
from agent_service.llm.runners import CancelCalls, bounded_call, settle_heap
from agent_service.monitoring import use_metric_files
from agent_service.tracing import tracing_for


def serve(*, from_parent: Connection, to_parent: Connection) -> None:
    """Run requests until the parent's pipe reads end-of-file. Outcomes are classified here, since an
    openai error does not survive pickling."""
    for stop_signal in (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT):
        signal.signal(stop_signal, signal.SIG_IGN)
    settings = Settings()
    tracing = tracing_for(settings)  # the worker's settings: traced when the worker is
    use_metric_files(settings.metrics_files)  # its worker's folder, which the worker's exporter serves
    settle_heap()
    to_parent.send([])  # ready: its imports are done (an empty batch of outcomes)
    loop = asyncio.new_event_loop()
    slots = asyncio.Semaphore(settings.llm_concurrency)
    outbox: list[tuple[int, bool, Any]] = []
    running: dict[int, asyncio.Task] = {}  # by call id; the loop keeps only weak references to its tasks

    def send_outbox() -> None:
        # A broken pipe means the worker is gone; the EOF on the other pipe then shuts this process down.
        with contextlib.suppress(BrokenPipeError):
            to_parent.send(outbox[:])
        outbox.clear()

    def finished(call_id: int, ok: bool, value: Any) -> None:
        if not outbox:
            loop.call_soon(send_outbox)  # the calls that end in the same loop pass go back in one message
        outbox.append((call_id, ok, value))

    async def run(call_id: int, request: LLMRequest) -> None:
        try:
            reply = await bounded_call(slots, run_request, request, settings=settings, tracing=tracing)
        except asyncio.CancelledError:
            return  # aborted by the worker (CancelCalls), which has settled the call itself
        except Exception as exc:
            finished(call_id, False, classify(exc))
        else:
            finished(call_id, True, reply)
        finally:
            running.pop(call_id, None)

    async def finish() -> None:
        # Each call ends within LLM_TIMEOUT_SECONDS, and `run` raises nothing.
        await asyncio.gather(*running.values())
        if outbox:
            send_outbox()
        await close_clients()

    def on_requests() -> None:
        try:
            message = from_parent.recv()
        except EOFError:  # the worker closed the runner, or exited
            loop.remove_reader(from_parent.fileno())  # else the EOF is read again, and stops `finish` midway
            loop.stop()
            return
        if isinstance(message, CancelCalls):
            # Cancelling the task closes its HTTP request: the provider sees the client go away.
            for call_id in message.call_ids:
                if call_id in running:
                    running[call_id].cancel()
            return
        for call_id, request in message:
            running[call_id] = loop.create_task(run(call_id, request))

    loop.add_reader(from_parent.fileno(), on_requests)
    loop.run_forever()
    loop.run_until_complete(finish())
    tracing.shutdown()


if __name__ == "__main__":
    serve(
        from_parent=Connection(int(sys.argv[1]), writable=False), to_parent=Connection(int(sys.argv[2]), readable=False)
    )
