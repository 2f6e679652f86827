"""Which addresses a tool call may connect to, and how host names become addresses.

httpx resolves and connects inside its transport with no hook in between, so a check on the URL's name
would not bind the address it connects to (DNS can answer differently the second time). `tools.http`
therefore resolves here, checks every address, and connects to a checked address itself (docs/decisions.md,
"Tool calls: the address check by hand").

Always refused: unspecified, link-local (169.254.0.0/16 and fe80::/10, the cloud metadata address
169.254.169.254 among them), multicast, reserved and other non-public special ranges. Refused unless
`Settings.tool_allow_private_addresses`: loopback, private (10/8, 172.16/12, 192.168/16, fc00::/7) and
shared CGNAT (100.64/10). An IPv6 address that carries an IPv4 one (IPv4-mapped ::ffff:a.b.c.d, NAT64
64:ff9b::/96, 6to4 2002::/16) is judged by the IPv4 address too.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from agent_service.errors import AddressRefusedError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

METADATA_ADDRESSES = frozenset(map(ipaddress.ip_address, ("169.254.169.254", "fd00:ec2::254")))
PRIVATE_NETWORKS = tuple(
    map(ipaddress.ip_network, ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7", "fec0::/10"))
)
SHARED_NETWORK = ipaddress.ip_network("100.64.0.0/10")
# A host whose last label is a number (decimal, or 0x hex) is an IPv4 address to URL parsers (WHATWG, httpx).
_NUMERIC_LABEL = re.compile(r"^([0-9]+|0x[0-9a-f]*)$", re.IGNORECASE)
NAT64_NETWORK = ipaddress.ip_network("64:ff9b::/96")


class Resolver(Protocol):
    """Turns a host name into the addresses a connection to `port` may use (raises OSError when it cannot)."""

    async def __call__(self, host: str, port: int) -> list[IPAddress]: ...


async def system_resolver(host: str, port: int) -> list[IPAddress]:
    """The system's resolver (`getaddrinfo`, run by asyncio on its thread pool), addresses in its order."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(ipaddress.ip_address(str(info[4][0]).partition("%")[0]) for info in infos))


@dataclass(frozen=True)
class StaticResolver:
    """Names from a fixed table (tests, demo, a pinned deployment); a name not in it does not resolve."""

    table: Mapping[str, Sequence[str]]

    async def __call__(self, host: str, port: int) -> list[IPAddress]:
        if host not in self.table:
            raise socket.gaierror(socket.EAI_NONAME, f"{host} is not in the resolver's table")
        return [ipaddress.ip_address(address) for address in self.table[host]]


async def checked_addresses(host: str, port: int, *, resolver: Resolver, allow_private: bool) -> list[IPAddress]:
    """Every address `host` (a name, or an IP address) stands for, each one allowed (`refusal_reason`).
    Raises: AddressRefusedError naming the first refused address, or why the name does not resolve."""
    literal = literal_address(host)
    if literal is not None:
        addresses = [literal]
    else:
        try:
            addresses = await resolver(host, port)
        except OSError as exc:
            raise AddressRefusedError(f"cannot resolve {host}: {exc}") from None
    if not addresses:
        raise AddressRefusedError(f"cannot resolve {host}: no address")
    for address in addresses:
        reason = refusal_reason(address, allow_private=allow_private)
        if reason is not None:
            where = f"{address} is" if literal is not None else f"{host} resolves to {address},"
            raise AddressRefusedError(f"refused: {where} {reason}")
    return addresses


def literal_address(host: str) -> IPAddress | None:
    """`host` as an IP address, or None for a name."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def ipv4_spelling_problem(host: str) -> str | None:
    """None unless `host` is an IPv4 address written other than as four decimal parts (`0177.0.0.1`,
    `2130706433`, `0x7f.1`, `127.1`), or a number that is no address (`1.2.3.08`); then what to write instead.

    The C resolver (`inet_aton`) reads such forms as addresses while `ipaddress` and httpx refuse them, so a
    check and a call would disagree on what the host is: only the dotted-quad form is accepted."""
    try:
        address = ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        address = None
    if address is None and not _NUMERIC_LABEL.match(host.rpartition(".")[2]):
        return None  # a name
    if address is not None and str(address) == host:
        return None
    if address is None:
        return f"{host} ends in a number but is not an IPv4 address (four decimal numbers, 0-255)"
    return f"{host} is the IPv4 address {address} written in another form; write {address}"


def refusal_reason(address: IPAddress, *, allow_private: bool) -> str | None:
    """None when a tool may connect to `address`; otherwise what it is ("a private address")."""
    embedded = _embedded_ipv4(address)
    if embedded is not None:
        reason = refusal_reason(embedded, allow_private=allow_private)
        return f"{reason} (as {embedded})" if reason else None
    reason = _always_refused(address)
    if reason or allow_private:
        return reason
    if address.is_loopback:
        return "a loopback address"
    if any(address in network for network in PRIVATE_NETWORKS):
        return "a private address"
    if address in SHARED_NETWORK:
        return "a shared (CGNAT) address"
    return None


def _always_refused(address: IPAddress) -> str | None:
    """What makes `address` unreachable for tools whatever the settings, or None."""
    if address.is_unspecified:
        return "an unspecified address"
    if address in METADATA_ADDRESSES:
        return "the cloud metadata address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_multicast:
        return "a multicast address"
    if address.is_loopback or address in SHARED_NETWORK or any(address in net for net in PRIVATE_NETWORKS):
        return None  # the caller's to judge, by the setting
    if address.is_reserved:
        return "a reserved address"
    if not address.is_global:
        return "not a public address"
    return None


def _embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for (IPv4-mapped, NAT64, 6to4), if any."""
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in NAT64_NETWORK:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address.sixtofour
