"""Running one of the bundled aiohttp servers (the LLM server, the tool server) until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import signal

from aiohttp import web


async def wait_for_stop_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for stop_signal in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(stop_signal, stop.set)
    await stop.wait()


async def serve(app: web.Application, *, name: str, host: str, port: int) -> None:
    """Serve `app` and print "NAME listening on URL" once it accepts connections (the launchers wait for it)."""
    # handler_cancellation ends hanging handlers when their client goes away; a short
    # shutdown_timeout keeps SIGTERM from waiting on them.
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, backlog=4096).start()
        print(f"{name} listening on http://{host}:{runner.addresses[0][1]}", flush=True)
        await wait_for_stop_signal()
    finally:
        await runner.cleanup()
