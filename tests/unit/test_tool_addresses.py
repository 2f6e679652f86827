"""The addresses a tool call may connect to: the refusal table, with and without
TOOL_ALLOW_PRIVATE_ADDRESSES, IPv4 addresses hidden in IPv6 forms included."""

from __future__ import annotations

import asyncio
import ipaddress
import socket

import pytest

from agent_service.tools.addresses import StaticResolver, refusal_reason

# address, its refusal with the setting off, and with it on (None: allowed)
TABLE = [
    ("93.184.216.34", None, None),
    ("2606:4700::1111", None, None),
    ("127.0.0.1", "a loopback address", None),
    ("127.8.9.10", "a loopback address", None),
    ("::1", "a loopback address", None),
    ("10.0.0.5", "a private address", None),
    ("172.16.0.1", "a private address", None),
    ("172.31.255.255", "a private address", None),
    ("192.168.1.1", "a private address", None),
    ("fd12:3456::1", "a private address", None),
    ("100.64.0.1", "a shared (CGNAT) address", None),
    ("169.254.169.254", "the cloud metadata address", "the cloud metadata address"),
    ("fd00:ec2::254", "the cloud metadata address", "the cloud metadata address"),
    ("169.254.10.1", "a link-local address", "a link-local address"),
    ("fe80::1", "a link-local address", "a link-local address"),
    ("0.0.0.0", "an unspecified address", "an unspecified address"),
    ("::", "an unspecified address", "an unspecified address"),
    ("224.0.0.1", "a multicast address", "a multicast address"),
    ("ff02::1", "a multicast address", "a multicast address"),
    ("240.0.0.1", "a reserved address", "a reserved address"),
    ("255.255.255.255", "a reserved address", "a reserved address"),
    ("192.0.2.10", "not a public address", "not a public address"),
    ("::ffff:10.0.0.5", "a private address (as 10.0.0.5)", None),
    ("::ffff:127.0.0.1", "a loopback address (as 127.0.0.1)", None),
    (
        "::ffff:169.254.169.254",
        "the cloud metadata address (as 169.254.169.254)",
        "the cloud metadata address (as 169.254.169.254)",
    ),
    (
        "64:ff9b::a9fe:a9fe",
        "the cloud metadata address (as 169.254.169.254)",
        "the cloud metadata address (as 169.254.169.254)",
    ),
    ("2002:a00:5::1", "a private address (as 10.0.0.5)", None),
    ("::ffff:93.184.216.34", None, None),
]


@pytest.mark.parametrize(("address", "refused", "refused_when_private_allowed"), TABLE)
def test_address_classification(address, refused, refused_when_private_allowed):
    ip = ipaddress.ip_address(address)
    assert refusal_reason(ip, allow_private=False) == refused
    assert refusal_reason(ip, allow_private=True) == refused_when_private_allowed


def test_a_static_resolver_answers_from_its_table_and_knows_no_other_name():
    resolver = StaticResolver({"api.test": ["127.0.0.1", "::1"]})
    assert asyncio.run(resolver("api.test", 80)) == [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]
    with pytest.raises(socket.gaierror):
        asyncio.run(resolver("other.test", 80))
