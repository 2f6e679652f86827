"""The kept-alive connections of tool calls: a call has its client to itself, a client only ever serves one host
name, and no more idle ones are kept than asked."""

from __future__ import annotations

import asyncio

from agent_service.tools.http import Connections


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
        assert first.is_closed and second.is_closed and other.is_closed

    asyncio.run(scenario())


def test_no_more_idle_clients_are_kept_than_asked() -> None:
    async def scenario() -> None:
        # Given room for one idle client per host, and for one host
        connections = Connections(hosts=1, per_host=1)
        async with connections.client("a.test") as extra, connections.client("a.test") as kept:
            pass
        # Then the first client given back is kept, the second closed
        assert extra.is_closed and not kept.is_closed
        # When a call goes to another host, the first host's idle client is closed
        async with connections.client("b.test"):
            pass
        assert kept.is_closed
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
            assert later is not failed and failed.is_closed
        await connections.aclose()

    asyncio.run(scenario())
