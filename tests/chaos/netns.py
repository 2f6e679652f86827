"""Hosts of the test's own on this machine: network namespaces, each joined to the root namespace by a veth
pair, and a service address in the root namespace where the test's own servers listen. Every address is in
a /24 of 10.200.0.0/16 that no interface of the machine uses; each host has a route to the service address
only (no default route), so every packet stays on this machine. Cutting a host's link (`ip link set ...
down` on its root-side end) is a network partition as the host and the servers see it.

    host a: 10.200.N.2/30 ──veth── 10.200.N.1 ┐
    host b: 10.200.N.6/30 ──veth── 10.200.N.5 ├─ root namespace: servers on 10.200.N.253 (a veth pair of its own)
                                              ┘

Needs CAP_NET_ADMIN (root): `Network.built` raises NetnsUnavailableError, with the reason, where `ip netns add` is
not permitted; any later step that fails is a RuntimeError.
"""

from __future__ import annotations

import random
import secrets
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


class NetnsUnavailableError(RuntimeError):
    """This machine does not let the test build network namespaces (not root, or no `ip`)."""


@dataclass(frozen=True)
class Host:
    """One host: its namespace, its address, and the root-side end of its link (set down to cut it)."""

    label: str
    namespace: str
    address: str
    root_link: str

    def command(self, argv: list[str]) -> list[str]:
        """`argv` run inside this host's namespace."""
        return ["ip", "netns", "exec", self.namespace, *argv]

    def cut(self) -> None:
        """Cut the host off: its link goes down, its packets go nowhere (no reset is sent either way)."""
        _ip("link", "set", self.root_link, "down")

    def restore(self) -> None:
        _ip("link", "set", self.root_link, "up")


@dataclass
class Network:
    """The hosts and the service address; `built` makes them and always takes them down."""

    prefix: str  # "10.200.N"
    tag: str
    hosts: dict[str, Host] = field(default_factory=dict)

    @property
    def service_address(self) -> str:
        return f"{self.prefix}.253"

    @property
    def clients(self) -> str:
        """The hosts' network, as pg_hba.conf spells it."""
        return f"{self.prefix}.0/24"

    @classmethod
    @contextmanager
    def built(cls, labels: tuple[str, ...] = ("a", "b")) -> Iterator[Network]:
        """Build the namespaces, links and service address; remove every one of them after the block, whatever
        happened. Raises: NetnsUnavailableError."""
        network = cls(prefix=_free_prefix(), tag=secrets.token_hex(3))
        try:
            for index, label in enumerate(labels):
                network._add_host(index, label)
            network._add_service_address()
            yield network
        finally:
            network._remove()

    def _add_service_address(self) -> None:
        # No dummy interface on every kernel: a veth pair with both ends here holds the address as well.
        link, peer = f"as{self.tag}s", f"as{self.tag}t"
        _ip("link", "add", link, "type", "veth", "peer", "name", peer)
        _ip("addr", "add", f"{self.service_address}/32", "dev", link)
        _ip("link", "set", link, "up")
        _ip("link", "set", peer, "up")

    def _add_host(self, index: int, label: str) -> None:
        namespace, root_link, host_link = (
            f"agent-svc-{self.tag}-{label}",
            f"as{self.tag}{label}r",
            f"as{self.tag}{label}h",
        )
        root_address, address = f"{self.prefix}.{4 * index + 1}", f"{self.prefix}.{4 * index + 2}"
        try:
            _ip("netns", "add", namespace)
        except RuntimeError as exc:
            raise NetnsUnavailableError(str(exc)) from None
        self.hosts[label] = Host(label, namespace, address, root_link)
        _ip("link", "add", root_link, "type", "veth", "peer", "name", host_link)
        _ip("link", "set", host_link, "netns", namespace)
        _ip("addr", "add", f"{root_address}/30", "dev", root_link)
        _ip("link", "set", root_link, "up")
        inside = ("ip", "netns", "exec", namespace, "ip")
        _run(*inside, "addr", "add", f"{address}/30", "dev", host_link)
        _run(*inside, "link", "set", host_link, "up")
        _run(*inside, "link", "set", "lo", "up")
        _run(*inside, "route", "add", f"{self.service_address}/32", "via", root_address)

    def _remove(self) -> None:
        for host in self.hosts.values():
            _run("ip", "netns", "del", host.namespace, check=False)  # takes its veth pair with it
            _run("ip", "link", "del", host.root_link, check=False)
        _run("ip", "link", "del", f"as{self.tag}s", check=False)


def _free_prefix() -> str:
    """A 10.200.N /24 that no address of this machine is in (another test run may hold one)."""
    used = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True, check=False).stdout
    free = [n for n in range(1, 255) if f" 10.200.{n}." not in used]
    return f"10.200.{random.choice(free)}"


def _ip(*args: str) -> None:
    _run("ip", *args)


def _run(*command: str, check: bool = True) -> None:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    except FileNotFoundError as exc:
        raise NetnsUnavailableError(f"`ip` (iproute2) is not installed: {exc}") from None
    if check and done.returncode != 0:
        raise RuntimeError(f"`{' '.join(command)}` failed: {done.stderr.strip()}")
