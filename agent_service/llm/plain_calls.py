"""Plain (not streamed) chat completions sent straight on the openai SDK's own aiohttp session, as the SDK
would send them: `plain_route(client)` once per client, then `route.send(body)` per call.

The SDK's request path (its options model, httpx2's URL, header and response objects, the raw-response
wrapper LangChain asks for) costs 0.38 ms of CPU per call over the 0.13 ms aiohttp itself takes. That CPU is
spent on the LLM process's one loop, where hundreds of calls start and end at once: it sets how late the
last of them leaves (docs/decisions.md, "Plain calls on the SDK's session"). What the SDK decides stays the
SDK's: the URL, every header (the key, organization, project and its own), the timeouts and the session
(its TLS and proxy settings) come from a request the SDK built for the client, and an error reply becomes the
SDK's own typed error, as its path raises it. A streamed call, one with options of its own (query, timeout)
and a redirect (which the SDK follows) go through the SDK.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import aiohttp
import httpx2
from openai import APIConnectionError, APITimeoutError, AsyncOpenAI
from openai._models import FinalRequestOptions
from openai._vendor.httpx_aiohttp.transport import AiohttpTransport

CHAT_COMPLETIONS = "/chat/completions"


class PlainReply:
    """A plain reply as LangChain reads the SDK's raw response: its `headers`, and `parse()`."""

    __slots__ = ("_body", "headers")

    def __init__(self, headers: Mapping[str, str], body: bytes | str) -> None:
        self.headers, self._body = headers, body

    def parse(self) -> Any:
        """A JSON body (bytes) as JSON; a body that came under another content type (as some proxies send
        JSON) as its text, which is how the SDK hands it back. Raises: json.JSONDecodeError, as the SDK does."""
        return json.loads(self._body) if isinstance(self._body, bytes) else self._body


class PlainRoute:
    """Where and how one client's plain chat completions go: the SDK's URL, headers and timeouts, on the
    session of its aiohttp transport."""

    def __init__(
        self, client: AsyncOpenAI, request: httpx2.Request, session: aiohttp.ClientSession, proxy: httpx2.Proxy | None
    ) -> None:
        timeouts = request.extensions.get("timeout", {})
        self._client, self._session = client, session
        self._url = str(request.url)
        # aiohttp counts the body itself; each call's body differs.
        self._headers = {name: value for name, value in request.headers.items() if name.lower() != "content-length"}
        # The proxy the SDK's client chose for the URL (HTTPS_PROXY and the like), with its credentials: on the
        # CONNECT of an https target, and on the request itself for an http one (where aiohttp sends no
        # proxy_headers; its own proxy_auth, which did, is deprecated).
        self._proxy: str | None = None
        self._proxy_headers: dict[str, str] | None = None
        if proxy:
            self._proxy, self._proxy_headers = str(proxy.url), dict(proxy.headers)
            if proxy.auth:
                self._proxy_headers["Proxy-Authorization"] = aiohttp.encode_basic_auth(*proxy.auth)
                if request.url.scheme == "http":
                    self._headers["Proxy-Authorization"] = self._proxy_headers["Proxy-Authorization"]
        # As the SDK's aiohttp transport maps httpx's timeouts.
        self._timeout = aiohttp.ClientTimeout(
            sock_connect=timeouts.get("connect"), sock_read=timeouts.get("read"), connect=timeouts.get("pool")
        )

    async def send(self, body: Mapping[str, Any], extra_headers: Mapping[str, str]) -> PlainReply | None:
        """POST `body` with `extra_headers`; None for a redirect (nothing was done: the SDK follows it).

        Raises: the SDK's APIStatusError subclass for a 4xx or 5xx reply (its Retry-After header kept),
        APITimeoutError, APIConnectionError.
        """
        headers = {**self._headers, **extra_headers}
        try:
            async with self._session.post(
                self._url,
                data=json.dumps(body).encode(),
                headers=headers,
                timeout=self._timeout,
                proxy=self._proxy,
                proxy_headers=self._proxy_headers,
                allow_redirects=False,
                auto_decompress=False,
            ) as response:
                content = await response.read()
        except TimeoutError as exc:  # aiohttp's read and connect timeouts included
            raise APITimeoutError(request=self._request()) from exc
        except aiohttp.ClientError as exc:
            raise APIConnectionError(message=f"Connection error: {exc}", request=self._request()) from exc
        if 300 <= response.status < 400:
            return None
        is_json = response.headers.get("content-type", "").partition(";")[0].strip().endswith("json")
        if response.status < 400 and is_json and "content-encoding" not in response.headers:
            return PlainReply(response.headers, content)  # most replies: JSON, as sent
        # Anything else is read as the SDK reads it, by httpx2 (its Content-Encoding decoded, its text by its
        # charset); an error reply is made the SDK's typed error.
        read = httpx2.Response(response.status, headers=response.raw_headers, content=content, request=self._request())
        if response.status >= 400:
            raise self._client._make_status_error_from_response(read)
        return PlainReply(response.headers, read.content if is_json else read.text)

    def _request(self) -> httpx2.Request:
        """The request as the SDK's errors carry it (without its headers: the key stays out of them)."""
        return httpx2.Request("POST", self._url)


async def plain_route(client: AsyncOpenAI) -> PlainRoute | None:
    """The route of `client`'s plain chat completions, built from the request the SDK builds for one; None
    when they must take the SDK's path: its HTTP client is not on the aiohttp transport, or it signs each
    request itself (`custom_auth`) rather than sending the fixed key this service configures."""
    if client.custom_auth is not None:
        return None
    options = FinalRequestOptions.construct(
        method="post", url=CHAT_COMPLETIONS, json_data={}, security={"bearer_auth": True}
    )
    request = client._build_request(await client._prepare_options(options))
    transport = client._client._transport_for_url(request.url)
    if not isinstance(transport, AiohttpTransport):
        return None
    if not isinstance(transport.client, aiohttp.ClientSession):
        transport.client = transport.get_client()  # as the transport opens its session on its first request
    return PlainRoute(client, request, transport.client, transport.proxy)
