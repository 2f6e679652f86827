"""The LLM process: `python -m llm.process CALLS_FD OUTCOMES_FD`, started by `llm.runners.ChildProcessRunner`.

It runs every request it is sent, concurrently on one event loop, and sends each outcome back as it ends.
It imports only the LLM stack (no database, no Celery), and exits when its worker closes the pipe.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from multiprocessing.connection import Connection
from typing import Any

from config import Settings
from errors import classify
from llm.client import close_clients, run_request
from llm.messages import LLMRequest
from llm.runners import settle_heap


def serve(*, from_parent: Connection, to_parent: Connection) -> None:
    """Run requests until the parent's pipe reads end-of-file. Outcomes are classified here, since an
    openai error does not survive pickling."""
    settings = Settings()
    settle_heap()
    loop = asyncio.new_event_loop()
    slots = asyncio.Semaphore(settings.llm_concurrency)
    outbox: list[tuple[int, bool, Any]] = []
    running: set[asyncio.Task] = set()  # the loop keeps only weak references to its tasks

    def send_outbox() -> None:
        with contextlib.suppress(
            BrokenPipeError
        ):  # the worker is gone; the EOF on the other pipe shuts this process down
            to_parent.send(outbox[:])
        outbox.clear()

    def finished(call_id: int, ok: bool, value: Any) -> None:
        if not outbox:
            loop.call_soon(send_outbox)  # the calls that end in the same loop pass go back in one message
        outbox.append((call_id, ok, value))

    async def run(call_id: int, request: LLMRequest) -> None:
        async with slots:
            try:
                reply = await run_request(request, settings=settings)
            except Exception as exc:
                finished(call_id, False, classify(exc))
            else:
                finished(call_id, True, reply)

    async def shut_down() -> None:
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        await close_clients()

    def on_requests() -> None:
        try:
            requests = from_parent.recv()
        except EOFError:  # the worker exited or closed the runner
            loop.stop()
            return
        for call_id, request in requests:
            task = loop.create_task(run(call_id, request))
            running.add(task)
            task.add_done_callback(running.discard)

    loop.add_reader(from_parent.fileno(), on_requests)
    loop.run_forever()
    loop.run_until_complete(shut_down())  # nobody is left to take the replies of the calls under way


if __name__ == "__main__":
    serve(
        from_parent=Connection(int(sys.argv[1]), writable=False), to_parent=Connection(int(sys.argv[2]), readable=False)
    )
