"""What a test's code tries on the network, seen through Python's audit events (`socket.connect`,
`urllib.Request`): no client is patched, every socket the process opens is seen. Inside the block a
connection to an address beyond loopback is also stopped before it is made, so a test that goes wrong
sends nothing off this machine."""

from __future__ import annotations

import ipaddress
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_recorders: list[list[tuple[str, Any]]] = []


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if not _recorders or event not in ("socket.connect", "urllib.Request"):
        return
    target = args[1] if event == "socket.connect" else args[0]
    for recorder in _recorders:
        recorder.append((event, target))
    if event == "socket.connect" and isinstance(target, tuple) and not _is_loopback(str(target[0])):
        raise PermissionError(f"test stopped a connection to {target[0]} (beyond loopback)")


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.partition("%")[0]).is_loopback
    except ValueError:
        return False


sys.addaudithook(_audit)  # audit hooks cannot be removed: it records only inside `attempts()`


@contextmanager
def attempts() -> Iterator[list[tuple[str, Any]]]:
    """The network attempts made inside the block, as ("socket.connect", (host, port, ...)) or
    ("urllib.Request", url), from any thread."""
    recorded: list[tuple[str, Any]] = []
    _recorders.append(recorded)
    try:
        yield recorded
    finally:
        _recorders.remove(recorded)


def connected_to(recorded: list[tuple[str, Any]]) -> list[tuple[str, int]]:
    """The (address, port) of each TCP connection attempted."""
    return [(str(target[0]), int(target[1])) for event, target in recorded if event == "socket.connect"]
