"""Where a checked request goes: the host, port and origin a URL names as they go on the wire, and the way a
connection reaches a checked address of that host while the name stays in the `Host` header and, for https, in
the TLS server name (SNI) and the certificate check. Shared by the tool calls (`tools.http`) and the webhook
sender, which sends with httpx (`request_to_address`)."""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from functools import lru_cache

import httpx

from agent_service.tools.addresses import IPAddress, literal_address
from agent_service.tools.allowlist import DEFAULT_PORTS


def request_to_address(
    client: httpx.AsyncClient,
    method: str,
    url: httpx.URL,
    address: IPAddress,
    *,
    headers: Mapping[str, str],
    content: bytes | None,
) -> httpx.Request:
    """A request for `url` whose connection goes to `address` (checked by the caller), as `addressed` says."""
    target, host, server_name = addressed(url, address)
    return client.build_request(
        method,
        target,
        headers={**headers, "Host": host},
        content=content,
        extensions={} if server_name is None else {"sni_hostname": server_name},
    )


def addressed(url: httpx.URL, address: IPAddress) -> tuple[httpx.URL, str, str | None]:
    """How a request for `url` reaches `address` (checked by the caller): the URL to send, which carries the IP;
    the `Host` header, which carries the name; and for https to a name, the name the TLS server name (SNI) and
    the certificate check use (None otherwise)."""
    return url.copy_with(host=str(address)), host_header(url), host_of(url) if _named_tls(url) else None


def _named_tls(url: httpx.URL) -> bool:
    """Whether the connection for `url` is TLS to a name (whose certificate must name it), not to an address."""
    return url.scheme == "https" and literal_address(host_of(url)) is None


def host_of(url: httpx.URL) -> str:
    """The URL's host as it goes on the wire: ASCII (an IDN as punycode), an IPv6 address without brackets."""
    return url.raw_host.decode("ascii").lower()


def host_header(url: httpx.URL, *, port: int | None = None) -> str:
    """`host[:port]` as the Host header writes it (the URL's own port, else `port` when given)."""
    host = f"[{host_of(url)}]" if ":" in host_of(url) else host_of(url)
    port = url.port or port
    return host if port is None else f"{host}:{port}"


def port_of(url: httpx.URL) -> int:
    """The port the URL's connection goes to: its own, else its scheme's."""
    return url.port or DEFAULT_PORTS.get(url.scheme, 80)


def origin_of(url: httpx.URL) -> tuple[str, str, int]:
    """Scheme, host and port: what a redirect must keep, unless the allowlist names where it goes."""
    return url.scheme, host_of(url), port_of(url)


@lru_cache(maxsize=1)
def tls_context() -> ssl.SSLContext:
    """One verifying TLS context for every call (loading the CA store takes milliseconds)."""
    return httpx.create_ssl_context()
