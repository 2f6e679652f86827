"""Prompt and chain construction for agents, with one reused client per model configuration.

Calls are async: a worker runs hundreds of them at once on one event loop (see `llm_runners`).
"""
from __future__ import annotations

import json
import threading

from langchain_core.messages import AIMessage
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import Runnable
from langchain_openai import ChatOpenAI
from openai import DefaultAioHttpClient
from pydantic import SecretStr

from config import Settings
from errors import RetryableError
from schemas import AgentSpec, LLMReply, Usage

PROMPT = ChatPromptTemplate.from_messages(
    [
        ("system", "{agent_prompt}"),
        ("human", "Task: {task_title}\n\nDescription: {task_description}"),
    ]
)


def build_chain(agent: AgentSpec, settings: Settings) -> Runnable:
    """ChatPromptTemplate | ChatOpenAI for this agent; the model client is shared."""
    configuration = dict(
        model=agent.model,
        temperature=agent.temperature,
        max_tokens=agent.max_tokens,
        options_json=agent.options.model_dump_json(exclude_none=True),
        base_url=settings.openai_base_url,
        api_key=settings.openai_api_key,
        timeout=settings.llm_timeout_seconds,
    )
    key = tuple(configuration.values())
    with _chat_models_lock:
        if key not in _chat_models:
            _chat_models[key] = _chat_model(**configuration)
        return PROMPT | _chat_models[key]


async def run_agent(agent: AgentSpec, *, title: str, description: str, settings: Settings) -> LLMReply:
    """Run the agent's chain on one task and report the text and token usage."""
    inputs = {"agent_prompt": agent.prompt, "task_title": title, "task_description": description}
    try:
        # The usage is read off the reply rather than through a callback handler: LangChain runs a sync
        # handler of an async chain on a thread pool, which cost a third more CPU per call.
        message: AIMessage = await build_chain(agent, settings).ainvoke(inputs)
    except TypeError as exc:
        # ChatOpenAI raises TypeError for a 200 reply without `choices`; it is the provider's fault.
        raise RetryableError(f"LLM returned a malformed reply: {exc}") from exc
    return LLMReply(text=str(message.text), usage=_usage(message))


async def close_clients() -> None:
    """Close the shared clients' connections; for the end of a process."""
    with _chat_models_lock:
        models = list(_chat_models.values())
        _chat_models.clear()
    for model in models:
        await model.http_async_client.aclose()


# One client per configuration, made once and shared by every call (its connection pool too).
_chat_models: dict[tuple, ChatOpenAI] = {}
_chat_models_lock = threading.Lock()


def _chat_model(
    *, model: str, temperature: float, max_tokens: int, options_json: str, base_url: str | None, api_key: SecretStr, timeout: float
) -> ChatOpenAI:
    options = json.loads(options_json)
    model_kwargs = {"response_format": {"type": "json_object"}} if options.pop("response_format") == "json_object" else {}
    # max_retries=0: retries are the task's job (backoff, Retry-After, attempts in the row), not the client's.
    # timeout is explicit because langchain-openai otherwise waits forever on a silent server.
    # The aiohttp transport (the openai SDK's own option) costs half the CPU per call of its default httpx one.
    return ChatOpenAI(
        model=model,
        temperature=temperature,
        max_tokens=max_tokens,
        base_url=base_url,
        api_key=api_key,
        timeout=timeout,
        max_retries=0,
        http_async_client=DefaultAioHttpClient(),
        model_kwargs=model_kwargs,
        **options,
    )


def _usage(message: AIMessage) -> Usage | None:
    usage = message.usage_metadata
    if not usage:
        return None
    return Usage(prompt_tokens=usage.get("input_tokens", 0), completion_tokens=usage.get("output_tokens", 0),
                 total_tokens=usage.get("total_tokens", 0))
