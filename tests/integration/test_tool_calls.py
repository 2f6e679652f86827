"""Outbound tool calls over real HTTP, to a small server on 127.0.0.1 that records what it receives.

Names resolve through an injected table (api.test and other.test -> 127.0.0.1, internal.test -> 10.0.0.5,
metadata.test -> 169.254.169.254), so the refusals are proved on the addresses themselves: a refused
call makes no connection at all (every socket connect the process attempts is seen through Python's audit
events, and one beyond loopback would be stopped before it left), and the server counts no request."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from agent_service.config import Settings
from agent_service.devtools import processes
from agent_service.tools.addresses import StaticResolver
from agent_service.tools.allowlist import parse_allowed_hosts
from agent_service.tools.definitions import ToolDefinition, parse_tools
from agent_service.tools.http import Connections, call_tool, call_tool_sync
from agent_service.tools.outcomes import ToolOutcome
from tests.network_audit import attempts, connected_to
from tests.support import ToolServerControl, make_settings

ROOT = Path(__file__).resolve().parents[2]
CANARY = "Bearer tool-secret-canary-7f3a"
RESOLVER = StaticResolver(
    {
        "api.test": ["127.0.0.1"],
        "other.test": ["127.0.0.1"],
        "internal.test": ["10.0.0.5"],
        "metadata.test": ["169.254.169.254"],
        "dual.test": ["::1", "127.0.0.1"],  # the server listens on IPv4 only
    }
)
ALLOWED = parse_allowed_hosts(["api.test", "other.test", "internal.test", "metadata.test", "dual.test"])


@dataclass
class Received:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes


@dataclass
class ToolServer:
    """What the server received, and how to make it answer slowly (until released)."""

    port: int
    calls: list[Received] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)


class Handler(BaseHTTPRequestHandler):
    """/redirect?to=URL&status=302, /big?bytes=N (or the same in a JSON body), /slow (until released),
    /echo-headers, /set-cookie; anything else: 200 with a small JSON reply."""

    server: ThreadingHTTPServer
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def _handle(self) -> None:
        parts = urlsplit(self.path)
        query = parse_qs(parts.query)
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        options = {**query, **{name: [value] for name, value in json.loads(body or b"{}").items()}}
        tool_server: ToolServer = self.server.tool_server  # type: ignore[attr-defined]
        tool_server.calls.append(Received(self.command, parts.path, query, dict(self.headers.items()), body))
        if parts.path == "/redirect":
            self._reply(int(options.get("status", ["302"])[0]), b"", location=options["to"][0])
        elif parts.path == "/big":
            self._reply(200, b"x" * int(options["bytes"][0]))
        elif parts.path == "/slow":
            tool_server.release.wait(timeout=30)
            self._reply(200, b"late")
        elif parts.path == "/echo-headers":
            self._reply(200, json.dumps(dict(self.headers.items())).encode())
        elif parts.path == "/set-cookie":
            self._reply(200, b"{}", cookie="session=first-callers; Path=/")
        else:
            self._reply(200, json.dumps({"ok": True, "path": parts.path}).encode())

    def _reply(self, status: int, body: bytes, *, location: str | None = None, cookie: str | None = None) -> None:
        self.send_response(status)
        if location:
            self.send_header("Location", location)
        if cookie:
            self.send_header("Set-Cookie", cookie)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64  # the default 5 drops simultaneous connects (retried a second later)

    def handle_error(self, request: object, client_address: object) -> None:
        """Quiet: a client that gave up (the timeout test) leaves the server writing to a closed socket."""


@contextlib.contextmanager
def serving(handler: type[Handler]) -> Iterator[ToolServer]:
    """The server on 127.0.0.1 with `handler`, for the length of a with-block."""
    httpd = Server(("127.0.0.1", 0), handler)
    state = ToolServer(port=httpd.server_address[1])
    httpd.tool_server = state  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.release.set()
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def server() -> Iterator[ToolServer]:
    with serving(Handler) as state:
        yield state


def settings(**overrides) -> Settings:
    values = dict(tool_secrets={"API_KEY": CANARY}, tool_allow_private_addresses=True)
    return make_settings(**{**values, **overrides})


def a_tool(
    server: ToolServer, *, host: str = "api.test", path: str = "/orders/{order_id}", **changes
) -> ToolDefinition:
    definition = {
        "name": "get_order",
        "description": "Look up an order.",
        "parameters": {
            "type": "object",
            "properties": {"order_id": {"type": "string"}, "verbose": {"type": "boolean"}},
            "required": ["order_id"] if "{order_id}" in path else [],
        },
        "method": "GET",
        "url": f"http://{host}:{server.port}{path}",
        "headers": {"X-Api-Key": {"secret": "API_KEY"}, "Accept": "application/json"},
        **changes,
    }
    [tool] = parse_tools([definition], allowed_hosts=ALLOWED)
    return tool


def call(
    tool: ToolDefinition, arguments: dict, *, config: Settings | None = None, allowed=ALLOWED, **options
) -> ToolOutcome:
    return call_tool_sync(
        tool, arguments, settings=config or settings(), allowed_hosts=allowed, resolver=RESOLVER, **options
    )


def test_an_allowed_loopback_call_reaches_the_server_with_the_name_and_the_secret_header(server):
    # Given a GET tool on api.test (which resolves to 127.0.0.1), private addresses allowed
    tool = a_tool(server)
    # When the model calls it with an id that needs quoting and a query argument
    with attempts() as tried:
        outcome = call(tool, {"order_id": "A/1 b", "verbose": True})
    # Then the server received it: path quoted, the rest in the query, the name in Host, the secret in its header
    [received] = server.calls
    assert (received.method, received.path, received.query) == ("GET", "/orders/A%2F1%20b", {"verbose": ["true"]})
    assert received.headers["Host"] == f"api.test:{server.port}"
    assert received.headers["X-Api-Key"] == CANARY
    # And the connection went to the checked address only
    assert connected_to(tried) == [("127.0.0.1", server.port)]
    assert outcome.ok and outcome.status == 200 and outcome.error is None and not outcome.truncated
    assert outcome.as_model_text() == 'HTTP 200\n{"ok": true, "path": "/orders/A%2F1%20b"}'


def test_a_post_sends_the_other_arguments_as_json_with_the_idempotency_key(server):
    tool = a_tool(server, method="POST", idempotent=False)
    outcome = call(tool, {"order_id": "A-1", "verbose": False}, idempotency_key="task-9:step-3")
    [received] = server.calls
    assert (received.method, received.path, received.query) == ("POST", "/orders/A-1", {})
    assert json.loads(received.body) == {"verbose": False}
    assert received.headers["Content-Type"] == "application/json"
    assert received.headers["Idempotency-Key"] == "task-9:step-3"
    assert outcome.ok


def test_loopback_is_refused_unless_private_addresses_are_allowed(server):
    tool = a_tool(server)
    with attempts() as tried:
        outcome = call(tool, {"order_id": "A-1"}, config=settings(tool_allow_private_addresses=False))
    assert outcome.error == "refused: api.test resolves to 127.0.0.1, a loopback address"
    assert not outcome.ok and outcome.status is None
    assert tried == [] and server.calls == []


@pytest.mark.parametrize(
    ("host", "allow_private", "error"),
    [
        ("internal.test", False, "refused: internal.test resolves to 10.0.0.5, a private address"),
        ("metadata.test", False, "refused: metadata.test resolves to 169.254.169.254, the cloud metadata address"),
        ("metadata.test", True, "refused: metadata.test resolves to 169.254.169.254, the cloud metadata address"),
    ],
)
def test_private_and_metadata_addresses_are_refused_before_any_connection(server, host, allow_private, error):
    tool = a_tool(server, host=host)
    with attempts() as tried:
        outcome = call(tool, {"order_id": "A-1"}, config=settings(tool_allow_private_addresses=allow_private))
    assert outcome.error == error
    assert outcome.as_model_text() == f"error: {error}"
    assert tried == [] and server.calls == []


@pytest.mark.parametrize("segment", ["..", ".", ""])
def test_a_path_argument_cannot_climb_out_of_the_tools_path(server, segment):
    outcome = call(a_tool(server), {"order_id": segment})
    assert outcome.error == f"invalid arguments: order_id must not be {segment!r}"
    assert server.calls == []


def test_a_literal_address_in_the_url_is_checked_too(server):
    allowed = parse_allowed_hosts(["169.254.169.254"])
    metadata = a_tool(server, path="/latest/meta-data/", parameters={"type": "object"})
    [tool] = parse_tools(
        [{**metadata.model_dump(mode="json"), "url": "http://169.254.169.254/latest/meta-data/"}],
        allowed_hosts=allowed,
    )
    with attempts() as tried:
        outcome = call_tool_sync(tool, {}, settings=settings(), allowed_hosts=allowed, resolver=RESOLVER)
    assert outcome.error == "refused: 169.254.169.254 is the cloud metadata address"
    assert tried == []


def test_a_redirect_to_a_refused_address_is_refused(server):
    # Given an allowed tool whose server redirects to a name that resolves to the metadata address
    tool = a_tool(server, path="/redirect", parameters={"type": "object", "properties": {"to": {"type": "string"}}})
    # (its origin allowed, so that the address check is what refuses it)
    allowed = (*ALLOWED, f"metadata.test:{server.port}")
    # When it is called
    with attempts() as tried:
        outcome = call(tool, {"to": f"http://metadata.test:{server.port}/latest/meta-data/"}, allowed=allowed)
    # Then the first hop reached the server, and the redirect was refused before connecting
    assert outcome.error == "refused: metadata.test resolves to 169.254.169.254, the cloud metadata address"
    assert [received.path for received in server.calls] == ["/redirect"]
    assert connected_to(tried) == [("127.0.0.1", server.port)]


@pytest.fixture
def second_tool_server() -> Iterator[ToolServerControl]:
    """Another bundled tool server, on another port of 127.0.0.1: a service a redirect must not reach."""
    with processes.tool_server() as url:
        yield ToolServerControl(url)


def bundled_redirect_tool(tool_url: str) -> ToolDefinition:
    """The bundled tool server's `GET /redirect?to=URL`, named api.test (which resolves to 127.0.0.1)."""
    url = f"http://api.test:{httpx.URL(tool_url).port}/redirect"
    schema = {"type": "object", "properties": {"to": {"type": "string"}}, "required": ["to"]}
    definition = {"name": "redirect", "description": "d", "parameters": schema, "method": "GET", "url": url}
    [tool] = parse_tools([definition], allowed_hosts=ALLOWED)
    return tool


def test_a_redirect_to_another_port_of_an_allowed_host_is_refused_before_connecting(tool_server, second_tool_server):
    # Given an allowed tool (api.test, a bare entry) on one bundled tool server, which redirects to another
    # service on the same host: a second bundled tool server on another port
    tool_server.reset()
    tool = bundled_redirect_tool(tool_server.base_url)
    other_port = httpx.URL(second_tool_server.base_url).port
    # When the tool is called
    with attempts() as tried:
        outcome = call(tool, {"to": f"http://api.test:{other_port}/weather?city=Oslo"})
    # Then the redirect is refused: the other port is another origin, and the allowlist does not name it
    assert outcome.error == (
        f"refused: a redirect to http://api.test:{other_port} leaves the tool's origin, and the agent's"
        " allowed hosts do not name that host and port"
    )
    # And only the first server was called: no connection to the other port was even attempted
    assert [call["path"] for call in tool_server.calls()] == ["/redirect"]
    assert second_tool_server.count() == 0
    assert connected_to(tried) == [("127.0.0.1", httpx.URL(tool_server.base_url).port)]


def test_a_redirect_to_another_port_is_followed_when_the_allowlist_names_that_port(tool_server, second_tool_server):
    # Given the same redirect, and an allowlist that names the other service's host and port
    tool_server.reset()
    tool = bundled_redirect_tool(tool_server.base_url)
    other_port = httpx.URL(second_tool_server.base_url).port
    allowed = (*ALLOWED, f"api.test:{other_port}")
    # When the tool is called
    outcome = call(tool, {"to": f"http://api.test:{other_port}/weather?city=Oslo"}, allowed=allowed)
    # Then the redirect reached the other service and its reply is the outcome
    assert outcome.ok and json.loads(outcome.body)["city"] == "Oslo"
    assert [call["path"] for call in second_tool_server.calls()] == ["/weather"]


def test_a_redirect_within_the_tools_origin_is_followed(tool_server):
    tool_server.reset()
    tool = bundled_redirect_tool(tool_server.base_url)
    outcome = call(tool, {"to": "/weather?city=Oslo"})
    assert outcome.ok and json.loads(outcome.body)["city"] == "Oslo"
    assert [call["path"] for call in tool_server.calls()] == ["/redirect", "/weather"]


def test_a_redirect_to_a_host_outside_the_allowlist_is_refused(server):
    tool = a_tool(server, path="/redirect", parameters={"type": "object", "properties": {"to": {"type": "string"}}})
    outcome = call(tool, {"to": f"http://127.0.0.2:{server.port}/"})
    assert outcome.error == (
        f"refused: a redirect to http://127.0.0.2:{server.port} leaves the tool's origin, and the agent's"
        " allowed hosts do not name that host and port"
    )
    assert len(server.calls) == 1


def test_an_allowed_redirect_is_followed_without_the_secret_header_when_it_leaves_the_origin(server):
    tool = a_tool(server, path="/redirect", parameters={"type": "object", "properties": {"to": {"type": "string"}}})
    allowed = (*ALLOWED, f"other.test:{server.port}")
    outcome = call(tool, {"to": f"http://user:pw@other.test:{server.port}/landing"}, allowed=allowed)
    first, second = server.calls
    assert first.headers["X-Api-Key"] == CANARY
    assert second.path == "/landing" and second.headers["Host"] == f"other.test:{server.port}"
    assert "X-Api-Key" not in second.headers and second.headers["Accept"] == "application/json"
    assert "Authorization" not in second.headers  # the Location's credentials are not sent
    assert outcome.ok and '"path": "/landing"' in outcome.body


def test_a_post_redirected_by_303_becomes_a_get(server):
    tool = a_tool(
        server,
        path="/redirect",
        method="POST",
        parameters={"type": "object", "properties": {"to": {"type": "string"}, "status": {"type": "string"}}},
    )
    outcome = call(tool, {"to": "/done", "status": "303"})
    assert [(received.method, received.path) for received in server.calls] == [("POST", "/redirect"), ("GET", "/done")]
    assert outcome.ok


def test_redirects_beyond_the_limit_are_an_error(server):
    tool = a_tool(server, path="/redirect", parameters={"type": "object", "properties": {"to": {"type": "string"}}})
    loop = "/redirect?to=/redirect%3Fto%3D/redirect"
    outcome = call(tool, {"to": loop}, config=settings(tool_max_redirects=1))
    assert outcome.error == "too many redirects (more than 1)"
    assert len(server.calls) == 2


def test_a_big_reply_is_cut_at_the_limit(server):
    tool = a_tool(server, path="/big", parameters={"type": "object", "properties": {"bytes": {"type": "integer"}}})
    outcome = call(tool, {"bytes": 200_000}, config=settings(tool_max_response_bytes=1024))
    assert outcome.ok and outcome.truncated and outcome.body == "x" * 1024
    assert outcome.as_model_text().endswith("x\n[response truncated]")
    exact = call(tool, {"bytes": 1024}, config=settings(tool_max_response_bytes=1024))
    assert not exact.truncated and exact.body == "x" * 1024


def test_a_server_that_does_not_answer_in_time_is_a_timeout_outcome(server):
    tool = a_tool(server, path="/slow", parameters={"type": "object"}, timeout_seconds=0.3)
    outcome = call(tool, {})
    assert outcome.error == "timed out after 0.3 s" and not outcome.ok
    assert [received.path for received in server.calls] == ["/slow"]


def test_a_secret_the_server_echoes_never_reaches_the_outcome_or_the_logs(server, caplog):
    tool = a_tool(server, path="/echo-headers", parameters={"type": "object"})
    with caplog.at_level(logging.DEBUG):
        outcome = call(tool, {})
    assert server.calls[0].headers["X-Api-Key"] == CANARY
    assert CANARY not in outcome.as_model_text() and '"X-Api-Key": "[redacted]"' in outcome.body
    assert "tool get_order GET api.test: 200" in caplog.text and "canary" not in caplog.text


def test_an_unknown_secret_is_an_error_outcome_and_nothing_is_sent(server):
    tool = a_tool(server, headers={"X-Api-Key": {"secret": "MISSING"}})
    with attempts() as tried:
        outcome = call(tool, {"order_id": "A-1"})
    assert outcome.error == "header X-Api-Key: secret MISSING is not configured (TOOL_SECRETS)"
    assert tried == [] and server.calls == []


def test_bad_arguments_are_an_error_outcome_for_the_model_and_nothing_is_sent(server):
    tool = a_tool(server)
    with attempts() as tried:
        outcome = call(tool, {"order_id": 7})
    assert outcome.as_model_text() == "error: invalid arguments: order_id: 7 is not of type 'string'"
    assert tried == [] and server.calls == []


def test_a_refused_connection_falls_back_to_the_next_checked_address(server):
    tool = a_tool(server, host="dual.test")
    with attempts() as tried:
        outcome = call(tool, {"order_id": "A-1"})
    assert outcome.ok and server.calls[0].headers["Host"] == f"dual.test:{server.port}"
    assert connected_to(tried)[-1] == ("127.0.0.1", server.port)


def test_a_server_that_is_not_there_is_an_error_outcome(server):
    tool = a_tool(server)
    gone = ToolDefinition.model_validate({**tool.model_dump(mode="json"), "url": "http://api.test:9/orders/{order_id}"})
    outcome = call(gone, {"order_id": "A-1"})
    assert outcome.error is not None and outcome.error.startswith("request failed: ClientConnectorError")


def test_many_calls_run_at_once_on_one_event_loop(server):
    tool = a_tool(server)

    async def many() -> list[ToolOutcome]:
        calls = [
            call_tool(tool, {"order_id": f"A-{n}"}, settings=settings(), allowed_hosts=ALLOWED, resolver=RESOLVER)
            for n in range(20)
        ]
        return await asyncio.gather(*calls)

    outcomes = asyncio.run(many())
    assert all(outcome.ok for outcome in outcomes)
    assert sorted(received.path for received in server.calls) == sorted(f"/orders/A-{n}" for n in range(20))


def test_a_cookie_one_reply_sets_is_never_sent_by_a_later_call_on_the_kept_connection(server):
    # Given a tool whose server sets a cookie, called on connections that are kept alive between calls
    sets_cookie = a_tool(server, path="/set-cookie", parameters={"type": "object"})
    echoes = a_tool(server, path="/echo-headers", parameters={"type": "object"})

    async def one_after_the_other() -> list[ToolOutcome]:
        connections = Connections()
        options = dict(settings=settings(), allowed_hosts=ALLOWED, resolver=RESOLVER, connections=connections)
        try:
            return [await call_tool(sets_cookie, {}, **options), await call_tool(echoes, {}, **options)]
        finally:
            await connections.aclose()

    # When another call (perhaps another agent's) goes to that host after it
    outcomes = asyncio.run(one_after_the_other())
    # Then it went on the same kept connection, without the cookie
    assert all(outcome.ok for outcome in outcomes)
    assert [received.path for received in server.calls] == ["/set-cookie", "/echo-headers"]
    assert "Cookie" not in server.calls[1].headers and "first-callers" not in outcomes[1].body


CALLS_THEN_EXIT = """
import sys
from tests.support import make_settings
from agent_service.execution.tool_calls import ToolCaller
from agent_service.tools.addresses import StaticResolver
from agent_service.tools.definitions import parse_tools

definition = {"name": "t", "description": "d", "parameters": {"type": "object"}, "method": "GET",
              "url": f"http://api.test:{sys.argv[1]}/orders"}
[tool] = parse_tools([definition])
caller = ToolCaller(make_settings(tool_allow_private_addresses=True),
                    resolver=StaticResolver({"api.test": ["127.0.0.1"]}))
calls = [caller.submit(tool, {}, allowed_hosts=("api.test",), idempotency_key=None) for _ in range(3)]
print(all(call.result(timeout=10).ok for call in calls))
"""


def test_a_process_that_made_tool_calls_exits_without_leaving_a_connection_unclosed(server):
    # Given a process whose tool caller made three calls at once, their connections kept alive
    script = [sys.executable, "-c", CALLS_THEN_EXIT, str(server.port)]
    # When it exits without closing the caller
    done = subprocess.run(script, cwd=ROOT, capture_output=True, text=True, check=True, timeout=60)
    # Then the calls succeeded, and no client was left for the collector to report unclosed
    assert done.stdout.strip() == "True" and len(server.calls) == 3
    assert "Unclosed" not in done.stderr, done.stderr


class ClosingIdleHandler(Handler):
    """The same replies, but an idle kept-alive connection is closed after 0.2 s (as servers with a short
    keep-alive timeout do)."""

    timeout = 0.2

    def handle(self) -> None:
        with contextlib.suppress(TimeoutError):  # the idle connection timed out: the server closes it
            super().handle()


def test_a_kept_connection_the_server_closed_is_not_reused_and_the_next_post_goes_through():
    # Given a server that closes connections idle for 0.2 s, and a call that left its connection kept alive

    async def two_calls_apart(tool: ToolDefinition) -> list[ToolOutcome]:
        connections = Connections()
        options = dict(settings=settings(), allowed_hosts=ALLOWED, resolver=RESOLVER, connections=connections)
        try:
            first = await call_tool(tool, {"order_id": "A-1"}, **options)
            await asyncio.sleep(0.5)  # the server closes the idle connection meanwhile
            return [first, await call_tool(tool, {"order_id": "A-2"}, **options)]
        finally:
            await connections.aclose()

    # When a second POST (which must not be sent twice) follows after the server closed the connection
    with serving(ClosingIdleHandler) as state, attempts() as tried:
        tool = a_tool(state, method="POST", idempotent=False)
        outcomes = asyncio.run(two_calls_apart(tool))
    # Then it goes out on a new connection and succeeds, and the server received each call once
    assert [outcome.ok for outcome in outcomes] == [True, True], outcomes
    assert connected_to(tried) == [("127.0.0.1", state.port)] * 2
    assert [received.path for received in state.calls] == ["/orders/A-1", "/orders/A-2"]


HTTPS_CALL = """
import json, sys
from tests.support import make_settings
from agent_service.tools.addresses import StaticResolver
from agent_service.tools.definitions import parse_tools
from agent_service.tools.http import call_tool_sync

port, host = int(sys.argv[1]), sys.argv[2]
definition = {"name": "t", "description": "d", "parameters": {"type": "object"}, "method": "GET",
              "url": f"https://{host}:{port}/secure"}
[tool] = parse_tools([definition])
resolver = StaticResolver({"api.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]})
outcome = call_tool_sync(tool, {}, settings=make_settings(tool_allow_private_addresses=True),
                         allowed_hosts=("api.test", "other.test"), resolver=resolver)
print(json.dumps({"ok": outcome.ok, "body": outcome.body, "error": outcome.error}))
"""


@pytest.fixture
def https_server(tmp_path) -> Iterator[tuple[ToolServer, list[str], Path]]:
    """The server over TLS with a certificate for api.test only (made here with openssl), the TLS server
    names (SNI) it was sent, and the certificate, for a client to trust."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    request = "req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=api.test -addext subjectAltName=DNS:api.test"
    subprocess.run(["openssl", *request.split(), "-keyout", key, "-out", cert], check=True, capture_output=True)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    names: list[str] = []
    context.sni_callback = lambda _socket, name, _context: names.append(name)  # type: ignore[assignment,func-returns-value]
    httpd = Server(("127.0.0.1", 0), Handler)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    state = ToolServer(port=httpd.server_address[1])
    httpd.tool_server = state  # type: ignore[attr-defined]
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield state, names, cert
    httpd.shutdown()
    httpd.server_close()


def test_https_goes_to_the_checked_address_with_the_name_for_sni_and_the_certificate(https_server):
    # Given a TLS server on 127.0.0.1 whose certificate names api.test, trusted by the client (SSL_CERT_FILE)
    server, names, cert = https_server

    def call_over_https(host: str) -> dict:
        env = {**os.environ, "SSL_CERT_FILE": str(cert)}
        script = [sys.executable, "-c", HTTPS_CALL, str(server.port), host]
        done = subprocess.run(script, cwd=ROOT, env=env, capture_output=True, text=True, check=True)
        return json.loads(done.stdout.splitlines()[-1])

    # When api.test is called, Then the connection to 127.0.0.1 presents api.test (SNI) and verifies it
    assert call_over_https("api.test") == {"ok": True, "body": '{"ok": true, "path": "/secure"}', "error": None}
    assert server.calls[0].headers["Host"] == f"api.test:{server.port}"
    # And a name the certificate does not cover fails verification although it resolves to the same address
    refused = call_over_https("other.test")
    assert not refused["ok"] and "certificate is not valid for 'other.test'" in refused["error"]
    assert names == ["api.test", "other.test"] and len(server.calls) == 1
