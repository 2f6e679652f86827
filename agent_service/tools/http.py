"""One guarded outbound call of an agent's HTTP tool: `call_tool` (async; `call_tool_sync` for callers
without an event loop).

Async, with aiohttp: the agent loop runs many calls at once on one event loop, each costing a coroutine
rather than a thread (aiohttp costs a third of httpx's CPU per call there; see docs/decisions.md, "Tool
calls on aiohttp"); URLs are built and joined with httpx.URL, as the webhook sender's are.

Every hop (the first request and each redirect, followed by hand) is checked before anything is sent: the
first request's host against the agent's allowlist, a redirect's origin (scheme, host, port) against the
tool's own or one the allowlist names (`tools.allowlist.origin_allowed`), then every address the host resolves
to (`tools.addresses`). The connection goes to a checked address itself: the URL carries the IP, the `Host`
header the name, and for https the TLS server name (SNI) and certificate check use the name (aiohttp's
`server_hostname`). Connections are kept alive between calls (`Connections`), each in a client of one host
name, so no pooled connection opened for one name ever carries a request for another. No cookie is kept: one
call's reply never sets what a later call sends.

A tool's own failures (bad arguments, refusals, timeouts, lost connections, unknown secrets) are outcomes,
never exceptions: the model sees them as the tool's result. Secret header values never appear in an
outcome or a log line: they are replaced by "[redacted]" wherever a reply or an error echoes them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import aiohttp
import httpx
import yarl

from agent_service.config import Settings
from agent_service.errors import AddressRefusedError
from agent_service.tools.addresses import IPAddress, Resolver, checked_addresses, system_resolver
from agent_service.tools.allowlist import host_allowed, origin_allowed
from agent_service.tools.definitions import HttpMethod, SecretHeader, ToolDefinition, validate_arguments
from agent_service.tools.outcomes import ToolOutcome
from agent_service.tools.targets import addressed, host_header, host_of, origin_of, port_of, tls_context

logger = logging.getLogger("agent_service.tools")

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
REDACTED = "[redacted]"
KEPT_HOSTS = 64  # host names whose idle connections are kept, per event loop
KEPT_CONNECTIONS = 256  # idle connections kept in all, per event loop, unless told otherwise


@dataclass(frozen=True)
class _Hop:
    """One request to send: the URL names the host (the connection goes to a checked address of it)."""

    method: str
    url: httpx.URL
    headers: dict[str, str]
    content: bytes | None
    secret_headers: frozenset[str] = field(default_factory=frozenset)


@dataclass(frozen=True)
class _Guard:
    """What every hop of one call is checked and bounded by."""

    settings: Settings
    allowed_hosts: Sequence[str]
    resolver: Resolver
    connections: Connections


class Connections:
    """The kept-alive connections of the tool calls on one event loop. A call takes a client of the host name it
    is sent to that no other call is using (a new one when none is idle) and gives it back after, with its one
    connection open: a connection, and the TLS session on it, only ever carries requests for the name it was
    opened for. A client has a single connection, so that the number of idle ones, and the file descriptors
    they hold, stay bounded (aiohttp's own pool keeps every idle connection until it times out). Up to `kept`
    idle clients are kept in all, for the `hosts` most recently used names; beyond, the least recently used
    name's are closed."""

    def __init__(self, *, hosts: int = KEPT_HOSTS, kept: int = KEPT_CONNECTIONS) -> None:
        self._hosts, self._limit = hosts, kept
        self._idle: OrderedDict[str, list[aiohttp.ClientSession]] = OrderedDict()  # least recently used first

    @asynccontextmanager
    async def client(self, name: str) -> AsyncIterator[aiohttp.ClientSession]:
        """A client for requests to host `name`, this call's alone until the block ends. Each call is bounded
        by `call_tool`'s timeout, so the client sets none of its own."""
        idle = self._idle.pop(name, [])
        self._idle[name] = idle
        client = idle.pop() if idle else _one_connection_client()
        try:
            yield client
        except BaseException:
            await client.close()  # its connection may be left in any state
            raise
        await self._keep(name, client)

    async def aclose(self) -> None:
        """Close every idle connection."""
        idle, self._idle = self._idle, OrderedDict()
        for clients in idle.values():
            for client in clients:
                await client.close()

    async def _keep(self, name: str, client: aiohttp.ClientSession) -> None:
        self._idle.setdefault(name, []).append(client)
        while len(self._idle) > self._hosts:
            _, clients = self._idle.popitem(last=False)
            for evicted in clients:
                await evicted.close()
        while sum(len(clients) for clients in self._idle.values()) > self._limit:
            oldest = next(clients for clients in self._idle.values() if clients)
            await oldest.pop(0).close()


def kept_connections(calls_at_once: int) -> int:
    """How many idle tool connections a process keeps: one per call it makes at once (a burst of calls to one
    host finds them all open the next time), but never more than a quarter of the file descriptors the process
    may open (its soft RLIMIT_NOFILE: 256 under the common 1024)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return calls_at_once if soft == resource.RLIM_INFINITY else min(calls_at_once, soft // 4)


def _one_connection_client() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=1, ssl=tls_context()),
        cookie_jar=aiohttp.DummyCookieJar(),
        timeout=aiohttp.ClientTimeout(),  # none: `call_tool` bounds the whole call
        trust_env=False,
    )


class _CallFailed(Exception):  # noqa: N818  (internal: always turned into an outcome, never raised to a caller)
    """The call cannot go on; the message is the outcome's error."""


async def call_tool(
    tool: ToolDefinition,
    arguments: Mapping[str, Any],
    *,
    settings: Settings,
    allowed_hosts: Sequence[str],
    resolver: Resolver = system_resolver,
    idempotency_key: str | None = None,
    connections: Connections | None = None,
) -> ToolOutcome:
    """Call `tool` with the model's `arguments`, following up to TOOL_MAX_REDIRECTS redirects, within
    `tool.timeout_seconds` (else TOOL_TIMEOUT_SECONDS) for the whole call. `allowed_hosts` are the agent's
    (normalised, `tools.allowlist.parse_allowed_hosts`); `idempotency_key` is sent as `Idempotency-Key`;
    `connections` are this loop's kept-alive ones (None: none kept, each hop's connection closed as it ends).
    Never raises for the tool's own problems: see ToolOutcome."""
    if connections is None:
        connections = Connections(kept=0)  # keeps no idle client: each is closed once its hop ends
    started = time.perf_counter()
    secrets = [secret.get_secret_value() for name in tool.secret_names if (secret := settings.tool_secrets.get(name))]
    timeout = tool.timeout_seconds or settings.tool_timeout_seconds
    guard = _Guard(settings=settings, allowed_hosts=allowed_hosts, resolver=resolver, connections=connections)
    status, body, truncated, error = None, "", False, None
    try:
        hop = _first_hop(tool, arguments, settings=settings, idempotency_key=idempotency_key)
        async with asyncio.timeout(timeout):
            status, body, truncated = await _follow(hop, guard)
    except _CallFailed as exc:
        error = str(exc)
    except TimeoutError:
        error = f"timed out after {timeout:g} s"
    except (aiohttp.ClientError, httpx.InvalidURL) as exc:
        error = f"request failed: {_describe(exc)}"
    outcome = ToolOutcome(
        ok=error is None and status is not None and 200 <= status < 300,
        status=status,
        body=_redact(body, secrets),
        error=None if error is None else _redact(error, secrets),
        truncated=truncated,
        elapsed_ms=round((time.perf_counter() - started) * 1000),
    )
    logger.info(
        "tool %s %s %s: %s in %d ms",
        tool.name,
        tool.method.value,
        tool.host,
        outcome.status if outcome.error is None else outcome.error,
        outcome.elapsed_ms,
    )
    return outcome


def call_tool_sync(
    tool: ToolDefinition,
    arguments: Mapping[str, Any],
    *,
    settings: Settings,
    allowed_hosts: Sequence[str],
    resolver: Resolver = system_resolver,
    idempotency_key: str | None = None,
) -> ToolOutcome:
    """`call_tool` on an event loop of its own, for a caller that has none (a worker thread, the CLI)."""
    return asyncio.run(
        call_tool(
            tool,
            arguments,
            settings=settings,
            allowed_hosts=allowed_hosts,
            resolver=resolver,
            idempotency_key=idempotency_key,
        )
    )


def _first_hop(
    tool: ToolDefinition, arguments: Mapping[str, Any], *, settings: Settings, idempotency_key: str | None
) -> _Hop:
    """The request the arguments make: path placeholders substituted, the rest as query or JSON body."""
    problem = validate_arguments(tool, arguments)
    if problem is not None:
        raise _CallFailed(f"invalid arguments: {problem}")
    url = tool.url
    for name in tool.placeholders:
        value = _as_text(arguments[name])
        if value in ("", ".", ".."):  # a path segment that would leave or collapse the tool's path
            raise _CallFailed(f"invalid arguments: {name} must not be {value!r}")
        url = url.replace(f"{{{name}}}", quote(value, safe=""))
    rest = {name: value for name, value in arguments.items() if name not in tool.placeholders}
    headers, secret_headers = _headers(tool, settings)
    if idempotency_key is not None:
        headers["Idempotency-Key"] = idempotency_key
    if tool.method.sends_body:
        headers["Content-Type"] = "application/json"
        return _Hop(tool.method.value, httpx.URL(url), headers, json.dumps(rest).encode(), secret_headers)
    params = {name: _query_value(value) for name, value in rest.items() if value is not None}
    return _Hop(tool.method.value, httpx.URL(url).copy_merge_params(params), headers, None, secret_headers)


def _headers(tool: ToolDefinition, settings: Settings) -> tuple[dict[str, str], frozenset[str]]:
    """The tool's headers with their secret values filled in, and the names of those that hold a secret."""
    headers = {}
    for name, value in tool.headers.items():
        if isinstance(value, SecretHeader):
            secret = settings.tool_secrets.get(value.secret)
            if secret is None:
                raise _CallFailed(f"header {name}: secret {value.secret} is not configured (TOOL_SECRETS)")
            headers[name] = secret.get_secret_value()
        else:
            headers[name] = value
    return headers, frozenset(name for name, value in tool.headers.items() if isinstance(value, SecretHeader))


async def _follow(hop: _Hop, guard: _Guard) -> tuple[int, str, bool]:
    """Send `hop` and each redirect after it, every one checked; the final status, body and truncation."""
    host = host_of(hop.url)
    if not host_allowed(host, guard.allowed_hosts, port=port_of(hop.url)):
        raise _CallFailed(f"refused: {host or 'a URL without a host'} is not in the agent's allowed hosts")
    origin = origin_of(hop.url)
    for _ in range(guard.settings.tool_max_redirects + 1):
        reply = await _send_checked(hop, guard)
        if not isinstance(reply, _Hop):
            return reply
        hop = reply
        if hop.url.scheme not in ("http", "https"):
            raise _CallFailed(f"refused: {hop.url.scheme}:// is not http or https")
        if origin_of(hop.url) != origin and not origin_allowed(*origin_of(hop.url), guard.allowed_hosts):
            scheme, host, port = origin_of(hop.url)
            raise _CallFailed(
                f"refused: a redirect to {scheme}://{host_header(hop.url, port=port)} leaves the tool's origin,"
                " and the agent's allowed hosts do not name that host and port"
            )
    raise _CallFailed(f"too many redirects (more than {guard.settings.tool_max_redirects})")


async def _send_checked(hop: _Hop, guard: _Guard) -> _Hop | tuple[int, str, bool]:
    """Check `hop`'s addresses (its origin was checked by `_follow`), then send it to the first checked
    address that accepts a connection. Returns the redirect to follow, or the status, body and truncation of
    the final reply."""
    host = host_of(hop.url)
    *others, last = await _checked_addresses(host, port_of(hop.url), guard)
    for address in others:
        try:
            return await _send_to(hop, address, guard)
        except aiohttp.ClientConnectorError:
            continue  # the next checked address, as a browser would
    return await _send_to(hop, last, guard)


async def _checked_addresses(host: str, port: int, guard: _Guard) -> list[IPAddress]:
    """Every address `host` stands for, each one allowed. Raises: _CallFailed naming the first refused one."""
    try:
        return await checked_addresses(
            host, port, resolver=guard.resolver, allow_private=guard.settings.tool_allow_private_addresses
        )
    except AddressRefusedError as exc:
        raise _CallFailed(str(exc)) from None


async def _send_to(hop: _Hop, address: IPAddress, guard: _Guard) -> _Hop | tuple[int, str, bool]:
    """Send `hop` over a connection to `address`, keeping the name for the Host header and TLS."""
    target, host, server_name = addressed(hop.url, address)
    async with guard.connections.client(host_of(hop.url)) as client:
        response = await client.request(
            hop.method,
            yarl.URL(str(target), encoded=True),
            headers={**hop.headers, "Host": host},
            data=hop.content,
            allow_redirects=False,
            server_hostname=server_name,
        )
        async with response:
            location = response.headers.get("Location")
            if response.status in REDIRECT_STATUSES and location is not None:
                return _redirected(hop, response.status, location)
            return response.status, *await _read_capped(response, guard.settings.tool_max_response_bytes)


def _redirected(hop: _Hop, status: int, location: str) -> _Hop:
    """The request a redirect asks for: GET after a 303 (and after a 301/302 of a POST, as browsers do),
    without the secret headers when it leaves the origin."""
    # Credentials in the Location would become a Basic login (httpx sends a URL's userinfo): never the server's choice.
    target = hop.url.join(location).copy_with(userinfo=b"")
    method, content, headers = hop.method, hop.content, dict(hop.headers)
    if status == 303 or (status in (301, 302) and method == HttpMethod.POST.value):
        method, content = HttpMethod.GET.value, None
        headers.pop("Content-Type", None)
    if origin_of(target) != origin_of(hop.url):
        headers = {name: value for name, value in headers.items() if name not in hop.secret_headers}
    return _Hop(method, target, headers, content, hop.secret_headers)


async def _read_capped(response: aiohttp.ClientResponse, limit: int) -> tuple[str, bool]:
    """The body's first `limit` bytes (decompressed) as text, and whether there was more (which is never read)."""
    chunks, size = [], 0
    async for chunk in response.content.iter_any():
        if size + len(chunk) > limit:
            chunks.append(chunk[: limit - size])
            return _decode(b"".join(chunks), response.charset), True
        chunks.append(chunk)
        size += len(chunk)
    return _decode(b"".join(chunks), response.charset), False


def _decode(raw: bytes, encoding: str | None) -> str:
    try:
        return raw.decode(encoding or "utf-8", errors="replace")
    except LookupError:  # a charset Python does not know
        return raw.decode("utf-8", errors="replace")


def _as_text(value: object) -> str:
    """An argument as it goes into a URL: strings as they are, other JSON values as JSON (true, 3, [1])."""
    return value if isinstance(value, str) else json.dumps(value)


def _query_value(value: object) -> str | list[str]:
    """A query argument: a list repeats its name, anything else is one value."""
    return [_as_text(item) for item in value] if isinstance(value, list) else _as_text(value)


def _redact(text: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, REDACTED)
    return text


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
