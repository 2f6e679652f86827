"""Runs plain LLM requests through LangChain's ChatOpenAI, with one reused client per model configuration.

Calls are async: a worker runs hundreds of them at once on one event loop (see `llm.runners`). This
module knows no task kind: the kinds build the messages (see `kinds`).
"""

from __future__ import annotations

import threading

from langchain_core.messages import AIMessage
from langchain_openai import ChatOpenAI
from openai import DefaultAioHttpClient

from config import Settings
from errors import ProviderFault, RetryableError
from llm.messages import LLMReply, LLMRequest, Usage

ClientKey = tuple[str, float, int, str, str | None, str, float]


async def run_request(request: LLMRequest, *, settings: Settings) -> LLMReply:
    """Send `request` and report the text and token usage.

    Raises: what the openai client raises (the caller classifies it), RetryableError for a reply without
    choices.
    """
    try:
        # Usage is read off the reply, not through a callback handler: see docs/decisions.md, "LLM calls on one loop".
        message: AIMessage = await chat_model(request, settings).ainvoke(list(request.messages))
    except TypeError as exc:
        # ChatOpenAI raises TypeError for a 200 reply without `choices`; it is the provider's fault.
        raise RetryableError(f"LLM returned a malformed reply: {exc}", fault=ProviderFault.UNAVAILABLE) from exc
    finish_reason = message.response_metadata.get("finish_reason")
    return LLMReply(text=str(message.text), usage=_usage(message), finish_reason=finish_reason)


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


async def close_clients() -> None:
    """Close the shared clients' connections; for the end of a process."""
    with _chat_models_lock:
        models = list(_chat_models.values())
        _chat_models.clear()
    for model in models:
        if model.http_async_client is not None:  # always set by _new_chat_model
            await model.http_async_client.aclose()


_chat_models: dict[ClientKey, ChatOpenAI] = {}
_chat_models_lock = threading.Lock()


def _new_chat_model(request: LLMRequest, settings: Settings) -> ChatOpenAI:
    options = request.options.model_dump(exclude_none=True)
    json_mode = options.pop("response_format") == "json_object"
    model_kwargs = {"response_format": {"type": "json_object"}} if json_mode else {}
    # max_retries=0: retries are the task's job (backoff, Retry-After, attempts in the row), not the client's.
    # timeout is explicit because langchain-openai otherwise waits forever on a silent server.
    # The aiohttp transport: see docs/decisions.md, "LLM calls on one loop".
    return ChatOpenAI(
        model=request.model,
        temperature=request.temperature,
        max_tokens=request.max_tokens,
        base_url=settings.openai_base_url,
        api_key=settings.openai_api_key,
        timeout=settings.llm_timeout_seconds,
        max_retries=0,
        http_async_client=DefaultAioHttpClient(),
        model_kwargs=model_kwargs,
        **options,
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
