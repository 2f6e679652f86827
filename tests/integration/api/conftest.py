"""Fixtures of the api kind's worker tests: an app and workers on the idle broker (no other worker reads it,
so these tasks run only where a test means them to), tools on the bundled tool server, scripted agents."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis

from agent_service.config import Settings
from agent_service.database import session_scope
from agent_service.devtools.processes import celery_worker
from agent_service.models import Agent, Task, TaskStep
from agent_service.store import steps
from agent_service.tasks import create_agent_task
from agent_service.worker import create_celery_app
from tests.integration.conftest import IDLE_REDIS, LOG_DIR
from tests.support import add_agent

SECRET = "tool-secret-7f3a"
SLOW_MS = 4000  # a tool call still under way when its worker is killed


@pytest.fixture(scope="module")
def api_settings(settings: Settings) -> Settings:
    """The idle broker; tools may reach loopback (the bundled tool server); the weather tool's secret."""
    return settings.model_copy(
        update={
            "redis_url": IDLE_REDIS,
            "tool_allow_private_addresses": True,
            "tool_secrets": {"WEATHER_TOKEN": SECRET},
            "worker_concurrency": 8,
            "llm_concurrency": 8,
        }
    )


@pytest.fixture(scope="module")
def api_app(api_settings: Settings):
    redis.Redis.from_url(IDLE_REDIS).flushdb()
    app = create_celery_app(api_settings)
    yield app
    app.services.engine.dispose()


@pytest.fixture(scope="module")
def api_worker(api_app, api_settings: Settings) -> Iterator[None]:
    with celery_worker(env=api_settings.as_env(), log_path=LOG_DIR / "api-worker.log", name="api"):
        yield


@pytest.fixture
def tools(tool_url: str, tool_server) -> list[dict]:
    tool_server.reset()
    city = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    item = {"type": "object", "properties": {"item": {"type": "string"}}, "required": ["item"]}
    ms = {"type": "object", "properties": {"ms": {"type": "integer"}}, "required": ["ms"]}
    return [
        {
            "name": "weather",
            "description": "the weather in a city",
            "parameters": city,
            "method": "GET",
            "url": f"{tool_url}/weather",
            "headers": {"Authorization": {"secret": "WEATHER_TOKEN"}},
        },
        {
            "name": "order",
            "description": "place an order",
            "parameters": item,
            "method": "POST",
            "url": f"{tool_url}/orders",
            "idempotent": False,
        },
        {"name": "wait", "description": "takes its time", "parameters": ms, "method": "GET", "url": f"{tool_url}/slow"},
        {
            "name": "pay",
            "description": "pays for an order, once a person agrees",
            "parameters": item,
            "method": "POST",
            "url": f"{tool_url}/orders",
            "idempotent": False,
            "requires_approval": True,
        },
        {
            "name": "hop",
            "description": "follows a redirect",
            "parameters": city,
            "method": "GET",
            "url": f"{tool_url}/redirect?to=http://169.254.169.254/latest/meta-data/",
        },
    ]


@pytest.fixture
def api_agent(session_factory, tools) -> Agent:
    settings = {"allowed_hosts": ["127.0.0.1"], "max_steps": 5}
    return add_agent(session_factory, prefix="api", kind="api", tools=tools, settings=settings)


@pytest.fixture
def submit(api_app, api_agent, llm):
    """Submits an api task whose model follows `replies`, one per turn; returns its id and its unique token."""

    def submit_task(replies: list[dict]) -> tuple[str, str]:
        token = f"api-{uuid.uuid4().hex[:10]}"
        directive = llm.add_script(token, replies)
        item = {"title": f"Trip {token}", "description": directive, "agent_id": str(api_agent.id), "user_id": "u-api"}
        return create_agent_task(item, app=api_app), token

    return submit_task


def calls(*tools: tuple[str, dict]) -> dict:
    return {"tool_calls": [{"name": name, "arguments": arguments} for name, arguments in tools]}


def step_rows(session_factory, task_id: str) -> list[TaskStep]:
    with session_scope(session_factory) as session:
        return steps.step_rows(session, uuid.UUID(task_id))


def task_row(session_factory, task_id: str) -> Task:
    with session_scope(session_factory) as session:
        return session.get(Task, uuid.UUID(task_id))


def turns_asked(llm, token: str) -> list[int]:
    return sorted(request["turn"] for request in llm.requests(token))
