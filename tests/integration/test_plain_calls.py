"""Plain LLM calls go straight onto the SDK's aiohttp session (`llm.plain_calls`): the provider receives what
the SDK itself sends, a compressed reply is read, an error reply arrives as the SDK's own typed error, a
redirected call is sent again through the SDK (which follows it), the proxy the environment names is used with
its credentials, and a dropped connection is told from a timeout. Real HTTP on loopback: a recording provider
(and proxy) written here, and the bundled LLM server's faults."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import openai
import pytest

from agent_service.errors import ContextLengthExceededError, RetryableError, classify
from agent_service.llm.client import close_clients, run_request
from agent_service.llm.messages import LLMReply, LLMRequest, Message, ModelOptions
from tests.support import LLMControl, make_settings

API_KEY = "sk-plain-calls-test"
COMPLETION = {
    "id": "chatcmpl-plain",
    "object": "chat.completion",
    "created": 1,
    "model": "gpt-4o-mini",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "recorded"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 11, "completion_tokens": 1, "total_tokens": 12},
}


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    gzipped: bool = False  # sent with Content-Encoding: gzip, as providers compress for a client that accepts it


@dataclass
class RecordingProvider:
    """An OpenAI-compatible provider on loopback that records each request (path, headers in lower case, JSON
    body) and answers each path with the `answers` set for it (else a completion)."""

    answers: dict[str, Answer] = field(default_factory=dict)
    received: list[tuple[str, dict[str, str], dict[str, Any]]] = field(default_factory=list)
    port: int = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def handler(self) -> type[BaseHTTPRequestHandler]:
        provider = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                provider.received.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                answer = provider.answers.get(self.path, Answer(200, COMPLETION))
                content = json.dumps(answer.body).encode()
                headers = {**answer.headers, "Content-Type": "application/json"}
                if answer.gzipped:
                    assert "gzip" in self.headers["Accept-Encoding"]
                    content, headers["Content-Encoding"] = gzip.compress(content), "gzip"
                self.send_response(answer.status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            def log_message(self, *args: object) -> None:
                """Quiet."""

        return Handler


@contextmanager
def recording_provider() -> Iterator[RecordingProvider]:
    """A RecordingProvider listening on a free loopback port for the length of a with-block."""
    provider = RecordingProvider()
    server = ThreadingHTTPServer(("127.0.0.1", 0), provider.handler())
    provider.port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield provider
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def provider() -> Iterator[RecordingProvider]:
    with recording_provider() as provider:
        yield provider


def call(text: str, *, base_url: str, **settings: Any) -> LLMReply:
    """One plain call through the service's client, on a loop of its own (its clients closed after)."""
    request = LLMRequest(
        model="gpt-4o-mini",
        temperature=0.0,
        max_tokens=50,
        options=ModelOptions(),
        messages=(Message("system", "Be brief."), Message("user", text)),
    )
    config = make_settings(openai_base_url=base_url, openai_api_key=API_KEY, **settings)

    async def one_call() -> LLMReply:
        try:
            return await run_request(request, settings=config)
        finally:
            await close_clients()

    return asyncio.run(one_call())


def sent_by_the_sdk(provider: RecordingProvider) -> dict[str, str]:
    """The headers the SDK itself sends for a chat completion (through its own path, as LangChain calls it)."""

    async def sdk_call() -> None:
        async with openai.AsyncOpenAI(
            api_key=API_KEY,
            base_url=provider.base_url,
            max_retries=0,
            timeout=5.0,
            http_client=openai.DefaultAioHttpClient(),
        ) as client:
            await client.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "the SDK's own"}]
            )

    asyncio.run(sdk_call())
    return provider.received.pop()[1]


def test_a_plain_call_carries_what_the_sdk_sends_and_its_reply_is_read(provider: RecordingProvider) -> None:
    reply = call("what is recorded", base_url=provider.base_url)

    assert reply.text == "recorded" and reply.usage is not None and reply.usage.total_tokens == 12
    [(path, headers, body)] = provider.received
    assert path == "/v1/chat/completions"
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "what is recorded"},
    ]
    assert body["model"] == "gpt-4o-mini" and body["max_completion_tokens"] == 50
    assert headers["authorization"] == f"Bearer {API_KEY}"
    provider.received.clear()
    the_sdks = sent_by_the_sdk(provider)
    # Every header the SDK sends, with its value, except the body's length and the attempt's own numbers.
    per_request = {"content-length", "x-stainless-retry-count"}
    assert {k: v for k, v in headers.items() if k not in per_request} == {
        k: v for k, v in the_sdks.items() if k not in per_request
    }


def test_error_replies_arrive_as_the_sdks_typed_errors_with_their_retry_after(provider: RecordingProvider) -> None:
    provider.answers["/v1/chat/completions"] = Answer(
        429,
        {"error": {"message": "slow down", "type": "requests", "code": "rate_limit_exceeded"}},
        {"Retry-After": "7"},
    )
    with pytest.raises(openai.RateLimitError) as limited:
        call("limited", base_url=provider.base_url)
    classified = classify(limited.value)
    assert isinstance(classified, RetryableError) and classified.delay == 7.0
    assert "slow down" in str(classified)

    provider.answers["/v1/chat/completions"] = Answer(
        400, {"error": {"message": "too long", "type": "invalid_request_error", "code": "context_length_exceeded"}}
    )
    with pytest.raises(openai.BadRequestError) as refused:
        call("too long", base_url=provider.base_url)
    assert isinstance(classify(refused.value), ContextLengthExceededError)


def test_compressed_replies_are_read_as_the_sdk_reads_them(provider: RecordingProvider) -> None:
    provider.answers["/v1/chat/completions"] = Answer(200, COMPLETION, gzipped=True)
    assert call("compressed", base_url=provider.base_url).text == "recorded"

    error = {"error": {"message": "overloaded", "type": "server_error", "code": None}}
    provider.answers["/v1/chat/completions"] = Answer(503, error, {"Retry-After": "3"}, gzipped=True)
    with pytest.raises(openai.InternalServerError) as failed:
        call("compressed error", base_url=provider.base_url)
    classified = classify(failed.value)
    assert isinstance(classified, RetryableError) and classified.delay == 3.0 and "overloaded" in str(classified)


def test_a_redirected_call_is_sent_again_through_the_sdk_which_follows_it(provider: RecordingProvider) -> None:
    provider.answers["/v1/chat/completions"] = Answer(307, {}, {"Location": "/v2/chat/completions"})

    reply = call("moved", base_url=provider.base_url)

    assert reply.text == "recorded"
    # The redirect did nothing; the SDK then sends the call as it always did, and follows the redirect.
    paths = [path for path, _, _ in provider.received]
    assert paths == ["/v1/chat/completions", "/v1/chat/completions", "/v2/chat/completions"]
    assert provider.received[2][1]["authorization"] == f"Bearer {API_KEY}"


def test_a_plain_call_goes_through_the_proxy_the_environment_names_with_its_credentials(
    provider: RecordingProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    with recording_provider() as proxy:  # a forward proxy that answers itself, as a caching one may
        for name in ("HTTP_PROXY", "http_proxy"):
            monkeypatch.setenv(name, f"http://agent:s3cret@127.0.0.1:{proxy.port}")
        for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.delenv(name, raising=False)

        reply = call("proxied", base_url=provider.base_url)

    assert reply.text == "recorded" and provider.received == []
    [(target, headers, body)] = proxy.received
    assert target == f"{provider.base_url}/chat/completions"  # a forward proxy's absolute request target
    assert headers["proxy-authorization"] == "Basic " + base64.b64encode(b"agent:s3cret").decode()
    assert headers["authorization"] == f"Bearer {API_KEY}" and body["messages"][1]["content"] == "proxied"


def test_a_dropped_connection_is_a_connection_failure_and_a_silent_server_a_timeout(
    llm: LLMControl, llm_url: str
) -> None:
    dropped, silent = f"dropped-{uuid.uuid4().hex[:8]}", f"silent-{uuid.uuid4().hex[:8]}"
    llm.add_fault(fault="drop", match=dropped, times=1)
    llm.add_fault(fault="hang", match=silent, times=1)

    with pytest.raises(openai.APIConnectionError) as lost:
        call(dropped, base_url=f"{llm_url}/v1")
    with pytest.raises(openai.APITimeoutError) as waited:
        call(silent, base_url=f"{llm_url}/v1", llm_timeout_seconds=0.5)

    assert not isinstance(lost.value, openai.APITimeoutError)
    assert str(classify(lost.value)).startswith("LLM connection failed")
    assert str(classify(waited.value)) == "LLM request timed out"
