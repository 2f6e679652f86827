"""Runs plain LLM requests through LangChain's ChatOpenAI, with one reused client per model configuration.

Calls are async: a worker runs hundreds of them at once on one event loop (see `llm.runners`). This
module knows no task kind: the kinds build the messages (see `kinds`). A request with a `stream_key` (its
task is followed) is streamed, its tokens written to that Redis stream as they come (`live.tokens`); any
other is one plain call.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import weakref
from collections.abc import Mapping
from typing import Any

import openai
from langchain_core.language_models import LanguageModelInput
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, ToolMessage
from langchain_core.outputs import ChatResult
from langchain_core.runnables import Runnable
from langchain_openai import ChatOpenAI
from openai import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AsyncStream,
    DefaultAioHttpClient,
    NotGiven,
    Omit,
    RequestOptions,
    not_given,
    omit,
)
from openai._constants import RAW_RESPONSE_HEADER
from openai.resources.chat.completions import AsyncCompletions
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from redis.asyncio import Redis as AsyncRedis

from agent_service.config import Settings
from agent_service.errors import ProviderFault, RetryableError
from agent_service.live.tokens import TokenWriter
from agent_service.llm.messages import LLMReply, LLMRequest, Message, ToolCall, Usage
from agent_service.llm.plain_calls import CHAT_COMPLETIONS, PlainRoute, plain_route
from agent_service.llm.send_slots import leave_on_time
from agent_service.monitoring import LLM_REQUESTS

ClientKey = tuple[str, float, int, str, str | None, str, float]


async def run_request(request: LLMRequest, *, settings: Settings) -> LLMReply:
    """Send `request` and report the text and token usage; count how the provider answered
    (`agent_service_llm_requests_total`).

    Raises: what the openai client raises (the caller classifies it), RetryableError for a reply without
    choices.
    """
    try:
        reply = await _run_request(request, settings=settings)
    except Exception as exc:
        LLM_REQUESTS.labels(request.model, _answered(exc)).inc()
        raise
    LLM_REQUESTS.labels(request.model, "200").inc()
    return reply


def _answered(exc: Exception) -> str:
    """The provider's answer to a failed call: its HTTP status code, or what stood in for one."""
    if isinstance(exc, APIStatusError):
        return str(exc.status_code)
    if isinstance(exc, APITimeoutError):  # a subclass of APIConnectionError
        return "timeout"
    if isinstance(exc, APIConnectionError):
        return "connection_error"
    return "malformed"


async def _run_request(request: LLMRequest, *, settings: Settings) -> LLMReply:
    runnable = _runnable(request, settings)
    messages = [_langchain_message(m) for m in request.messages]
    if request.send_slot and settings.redis_url:
        # Last before the request leaves: a call that comes too late for its slot takes a new one.
        await leave_on_time(request.send_slot, _loop_redis(settings))
    try:
        if request.stream_key and settings.redis_url:
            message = await _streamed(runnable, messages, request.stream_key, settings=settings)
        else:
            # Usage is read off the reply, not through a callback handler: see docs/decisions.md, "LLM calls on
            # one loop".
            message = await runnable.ainvoke(messages)
    except (KeyError, TypeError) as exc:
        # ChatOpenAI raises KeyError for a 200 reply without `choices` (or a choice without its message) and
        # TypeError for null `choices`: the provider's fault.
        raise RetryableError(f"LLM returned a malformed reply: {exc}", fault=ProviderFault.UNAVAILABLE) from exc
    return reply_of(message)


def reply_of(message: AIMessage) -> LLMReply:
    """The plain reply of a LangChain answer: text, tool calls (a call whose arguments are not JSON keeps
    the text the model wrote, for the caller to refuse), usage, finish reason and refusal."""
    calls = [ToolCall(call["id"] or "", call["name"], json.dumps(call["args"])) for call in message.tool_calls]
    calls += [ToolCall(call["id"] or "", call["name"] or "", call["args"] or "") for call in message.invalid_tool_calls]
    refusal = message.additional_kwargs.get("refusal")
    return LLMReply(
        text=str(refusal or message.text),
        usage=_usage(message),
        finish_reason=message.response_metadata.get("finish_reason"),
        tool_calls=tuple(calls),
        refused=bool(refusal),
    )


async def _streamed(
    runnable: Runnable[LanguageModelInput, Any], messages: list[Any], stream_key: str, *, settings: Settings
) -> AIMessage:
    """The reply of a streamed call (its chunks added up: text, tool calls, usage, finish reason), its text
    written to `stream_key` on the way. Raises: what `run_request` raises, RetryableError for a stream with
    no chunk."""
    assert settings.redis_url  # the caller's condition
    reply: AIMessageChunk | None = None
    async with TokenWriter(_loop_redis(settings), stream_key, settings=settings) as tokens:
        async for chunk in runnable.astream(messages):
            tokens.add(chunk.text)
            reply = chunk if reply is None else reply + chunk
    if reply is None:
        raise RetryableError("LLM stream ended without a reply", fault=ProviderFault.UNAVAILABLE)
    return reply


def _loop_redis(settings: Settings) -> AsyncRedis:
    """This event loop's Redis client (REDIS_URL, set), for live output and rate-limit slots (an asyncio client
    belongs to the loop it runs on)."""
    clients = _live_clients.setdefault(asyncio.get_running_loop(), {})
    url = settings.redis_url
    assert url  # the callers' condition
    if url not in clients:
        clients[url] = AsyncRedis.from_url(url, max_connections=settings.redis_pool_size)
    return clients[url]


def chat_model(request: LLMRequest, settings: Settings) -> ChatOpenAI:
    """The shared ChatOpenAI client (and its connection pool) for this request's model configuration."""
    key: ClientKey = (
        request.model,
        request.temperature,
        request.max_tokens,
        request.options.model_dump_json(exclude_none=True),
        settings.openai_base_url,
        settings.openai_api_key.get_secret_value(),
        settings.llm_timeout_seconds,
    )
    with _chat_models_lock:
        if key not in _chat_models:
            _chat_models[key] = _new_chat_model(request, settings)
        return _chat_models[key]


def _runnable(request: LLMRequest, settings: Settings) -> Runnable[LanguageModelInput, AIMessage]:
    """The shared client, with the request's tools bound (LangChain's `bind_tools`) or its structured output
    asked for (a bound `json_schema` response format), kept per configuration like the client itself."""
    model = chat_model(request, settings)
    if not request.tools and request.output_schema is None:
        return model
    key = (id(model), request.tools, request.output_schema)
    with _chat_models_lock:
        if key not in _bound:
            _bound[key] = _bind(model, request)
        return _bound[key]


def _bind(model: ChatOpenAI, request: LLMRequest) -> Runnable[LanguageModelInput, AIMessage]:
    tools = [
        {
            "type": "function",
            "function": {"name": t.name, "description": t.description, "parameters": json.loads(t.parameters_json)},
        }
        for t in request.tools
    ]
    if request.output_schema is None:
        return model.bind_tools(tools)
    if tools:  # no kind asks for both
        raise ValueError("a request carries tools or an output schema, not both")
    # The response format `with_structured_output(method="json_schema")` asks for, bound as part of the body
    # rather than through it: its parser chain and the SDK's `parse` would each parse a reply that the kind
    # parses and validates itself (docs/decisions.md, "Requests sent as built").
    schema = {"name": request.output_schema.name, "schema": json.loads(request.output_schema.schema_json)}
    return model.bind(extra_body={"response_format": {"type": "json_schema", "json_schema": schema}})


def _langchain_message(message: Message) -> BaseMessage | tuple[str, str]:
    if message.tool_calls:
        calls = [{"id": c.id, "name": c.name, "args": _arguments(c.arguments)} for c in message.tool_calls]
        return AIMessage(content=message.content, tool_calls=calls)
    if message.role == "tool":
        return ToolMessage(content=message.content, tool_call_id=message.tool_call_id or "")
    # A plain message as a (role, text) pair: LangChain converts it, as cheaply as building the object here.
    return (message.role, message.content)


def _arguments(text: str) -> dict[str, Any]:
    """A recorded call's arguments as the model wrote them; text that is not a JSON object is sent as {}."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


async def close_clients() -> None:
    """Close the shared clients' connections; for the end of a process."""
    with _chat_models_lock:
        models = list(_chat_models.values())
        _chat_models.clear()
        _bound.clear()
    for model in models:
        if model.http_async_client is not None:  # always set by _new_chat_model
            await model.http_async_client.aclose()
    for client in _live_clients.pop(asyncio.get_running_loop(), {}).values():
        await client.aclose()


_chat_models: dict[ClientKey, ChatOpenAI] = {}
_bound: dict[tuple[int, Any, Any], Runnable[LanguageModelInput, Any]] = {}
_chat_models_lock = threading.Lock()
# Only the loop's own thread reads or adds its entry.
_live_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, AsyncRedis]] = weakref.WeakKeyDictionary()


def _new_chat_model(request: LLMRequest, settings: Settings) -> ChatOpenAI:
    options = request.options.model_dump(exclude_none=True)
    json_mode = options.pop("response_format") == "json_object"
    # max_retries=0: retries are the task's job (backoff, Retry-After, attempts in the row), not the client's.
    # timeout is explicit because langchain-openai otherwise waits forever on a silent server.
    # The aiohttp transport: see docs/decisions.md, "LLM calls on one loop".
    # stream_usage: a streamed call (a followed task's) reports its usage too; a plain call is not affected.
    # JSON mode goes in the body as structured output does (`_bind`), off the SDK's `parse`.
    model = ChatOpenAIPlainReplies(
        model=request.model,
        temperature=request.temperature,
        max_tokens=request.max_tokens,
        base_url=settings.openai_base_url,
        api_key=settings.openai_api_key,
        timeout=settings.llm_timeout_seconds,
        max_retries=0,
        http_async_client=DefaultAioHttpClient(),
        extra_body={"response_format": {"type": "json_object"}} if json_mode else None,
        stream_usage=True,
        **options,
    )
    model.async_client = AsBuiltCompletions(model.root_async_client)
    return model


class ChatOpenAIPlainReplies(ChatOpenAI):
    """LangChain's ChatOpenAI over `AsBuiltCompletions`, whose plain replies are the JSON they came as. LangChain
    reads a dict reply as it reads a typed one, except that it copies a refusal only off a typed one: it is copied
    here, for `reply_of`. A reply whose body is JSON under another content type (as some proxies send it) comes
    from the SDK as text, and is read as the SDK reads it for a typed reply: as JSON if it is JSON."""

    def _create_chat_result(
        self, response: dict[str, Any] | openai.BaseModel | str, generation_info: dict[str, Any] | None = None
    ) -> ChatResult:
        if isinstance(response, str):
            with contextlib.suppress(ValueError):  # not JSON: LangChain refuses the text, naming its type
                response = json.loads(response)
        result = super()._create_chat_result(response, generation_info)  # type: ignore[arg-type]
        if isinstance(response, dict):
            for generation, choice in zip(result.generations, response["choices"], strict=False):
                refusal = choice["message"].get("refusal")
                if refusal is not None:
                    generation.message.additional_kwargs["refusal"] = refusal
        return result


class AsBuiltCompletions(AsyncCompletions):
    """The SDK's chat completions, sending the body LangChain built as it is and handing a plain reply back as
    the JSON it came as. The SDK's typed transform of a request's parameters changes nothing in a chat request
    (no chat parameter type carries an alias or a format) but walks every parameter and message against its
    type: 0.4 ms of CPU for a two-message request, 2.1 ms for the api kind's third turn. Its typed reply
    (`ChatCompletion`, built field by field) is dumped back to a dict by LangChain, which reads a dict reply
    the same way. So a plain call goes out as built, on the SDK's own session with the URL, headers and timeouts
    the SDK builds (`llm.plain_calls`, docs/decisions.md, "Plain calls on the SDK's session"), and its reply
    comes back as JSON; anything else (a stream, whose chunks stay typed; per-call query or timeout; a redirect)
    goes through the client's own `post` (the SDK's documented way to send any body), with the client's auth,
    timeout and error mapping (docs/decisions.md, "Requests sent as built")."""

    _routing: asyncio.Future[PlainRoute | None] | None = None

    async def _plain_route(self) -> PlainRoute | None:
        """This client's route for plain calls, built by the first call that needs it (again by the next one,
        if building it failed)."""
        if self._routing is None:
            self._routing = asyncio.ensure_future(plain_route(self._client))
        try:
            return await self._routing
        except Exception:
            self._routing = None
            raise

    async def create(  # type: ignore[override]  # LangChain calls it with keywords only, as below
        self,
        *,
        model: str,
        messages: list[Any],
        stream: bool | Omit = omit,
        extra_headers: Mapping[str, str] | None = None,
        extra_query: Mapping[str, object] | None = None,
        extra_body: Mapping[str, Any] | None = None,
        timeout: float | NotGiven | None = not_given,
        **parameters: Any,
    ) -> Any:
        given = {name: value for name, value in parameters.items() if not isinstance(value, (Omit, NotGiven))}
        body = {"model": model, "messages": messages, **given, **(extra_body or {})}
        streamed = stream is True
        if not isinstance(stream, Omit):
            body["stream"] = stream
        options: RequestOptions = {"security": {"bearer_auth": True}}
        if extra_headers is not None:
            options["headers"] = extra_headers
        if extra_query is not None:
            options["params"] = extra_query
        if not isinstance(timeout, NotGiven):
            options["timeout"] = timeout
        if not streamed and extra_query is None and isinstance(timeout, NotGiven):
            route = await self._plain_route()
            headers = extra_headers or {}
            reply = None if route is None else await route.send(body, headers)
            if reply is not None:
                # LangChain asks for the raw response (and parses it); anyone else gets the reply itself.
                return reply if headers.get(RAW_RESPONSE_HEADER) == "true" else reply.parse()
        return await self._client.post(
            CHAT_COMPLETIONS,
            body=body,
            options=options,
            cast_to=ChatCompletion if streamed else object,
            stream=streamed,
            stream_cls=AsyncStream[ChatCompletionChunk],
        )


def _usage(message: AIMessage) -> Usage | None:
    usage = message.usage_metadata
    if not usage:
        return None
    return Usage(
        prompt_tokens=usage.get("input_tokens", 0),
        completion_tokens=usage.get("output_tokens", 0),
        total_tokens=usage.get("total_tokens", 0),
        cached_tokens=usage.get("input_token_details", {}).get("cache_read", 0) or 0,
    )
