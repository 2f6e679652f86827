"""The kept-alive connections of tool calls: a call has its client to itself, a client only ever serves one host
name, no more idle ones are kept than asked, and those of the least recently used host go first."""

from __future__ import annotations

import asyncio
import resource
import subprocess
import sys
from pathlib import Path

from agent_service.tools.http import Connections, kept_connections

ROOT = Path(__file__).resolve().parents[2]


def test_a_client_is_reused_by_a_later_call_to_its_host_only() -> None:
    async def scenario() -> None:
        connections = Connections()
        # Given two calls to one host at once, ended
        async with connections.client("api.test") as first, connections.client("api.test") as second:
            assert first is not second  # a call has its client (and its one connection) to itself
        # When later calls go to that host and to another
        async with connections.client("api.test") as later, connections.client("other.test") as other:
            # Then the one to the same host reuses an idle client, the other has its own
            assert later in (first, second) and other not in (first, second)
        await connections.aclose()
        assert first.closed and second.closed and other.closed

    asyncio.run(scenario())


def test_no_more_idle_clients_are_kept_than_asked() -> None:
    async def scenario() -> None:
        # Given room for one idle client, and for one host
        connections = Connections(hosts=1, kept=1)
        async with connections.client("a.test") as kept, connections.client("a.test") as idle_longer:
            pass  # the inner one is given back first
        # Then the client given back last is kept, the one idle longer closed
        assert idle_longer.closed and not kept.closed
        # When a call goes to another host, the first host's idle client is closed
        async with connections.client("b.test"):
            pass
        assert kept.closed
        await connections.aclose()

    asyncio.run(scenario())


def test_a_client_whose_call_failed_is_closed_not_kept() -> None:
    async def scenario() -> None:
        connections = Connections()
        try:
            async with connections.client("a.test") as failed:
                raise TimeoutError
        except TimeoutError:
            pass
        async with connections.client("a.test") as later:
            assert later is not failed and failed.closed
        await connections.aclose()

    asyncio.run(scenario())


def test_past_the_limit_the_least_recently_used_hosts_idle_clients_are_closed_first() -> None:
    async def scenario() -> None:
        # Given room for two idle clients in all, both taken by host a
        connections = Connections(kept=2)
        async with connections.client("a.test") as first, connections.client("a.test") as second:
            pass
        # When a call to host b ends
        async with connections.client("b.test") as b_client:
            pass
        # Then b's client is kept, and one of a's (the one idle longest) closed to make room
        assert not b_client.closed
        assert [first.closed, second.closed].count(True) == 1
        await connections.aclose()

    asyncio.run(scenario())


def test_a_process_keeps_one_idle_connection_per_call_at_once_within_a_quarter_of_its_file_descriptors() -> None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert kept_connections(100) == min(100, soft // 4)
    if soft != resource.RLIM_INFINITY:
        assert kept_connections(10 * soft) == soft // 4


def test_a_worker_whose_agents_call_no_tool_never_loads_the_tool_client() -> None:
    # Every module of the worker imported (the webhook sender's address checks among them), but no tool called
    probe = "import sys, agent_service.worker, agent_service.tasks; print('aiohttp' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
