"""The services one bench shares across its runs, each reset before every run: a dedicated PostgreSQL
database, a dedicated Redis DB as the broker, and the bundled LLM server."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import redis
from sqlalchemy import text

from agent_service.config import Settings
from agent_service.database import create_empty_database, session_scope
from agent_service.devtools.processes import llm_server, tool_server
from agent_service.devtools.tool_server import weather_tool
from agent_service.models import Agent
from agent_service.store.schema import init_db
from agent_service.worker import AgentServiceCelery, create_celery_app
from bench.mixed import ORDER_SCHEMA

PG_ROOT = "postgresql+psycopg2://postgres@127.0.0.1:5432"
# Each overridable, so that two benches can run side by side (each on a Redis and a database of its own).
BENCH_DATABASE = os.environ.get("BENCH_DATABASE", "agent_service_bench")
# Tests use DBs 10, 14 and 15; 0 is anyone's default.
BENCH_REDIS = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/12")
IDLE_REDIS = os.environ.get("BENCH_IDLE_REDIS_URL", "redis://127.0.0.1:6379/13")  # a broker nobody consumes
BENCH_MODEL = "gpt-4o-mini"
SERVER_BURST_SECONDS = 2.0  # the server's buckets when it enforces limits: ours (1 s by default) must fit in
# The tool-using agent's conversation: three model turns, two tool calls (on the bundled tool server), an answer.
TOOLS_SCRIPT = "bench-tools"
TOOLS_SCRIPT_REPLIES = [
    {"tool_calls": [{"name": "weather", "arguments": {"city": "Lisbon"}}]},
    {"tool_calls": [{"name": "echo", "arguments": {"note": "weather checked"}}]},
    {"content": "Lisbon is fine for the trip."},
]


class LLMControl:
    """The bundled LLM server's control API: reset, latency, request count."""

    def __init__(self, base_url: str) -> None:
        self.http = httpx.Client(base_url=base_url, timeout=10)

    def prepare(self, *, latency_ms: float, rate_limits: dict[str, dict[str, float]] | None = None) -> None:
        """Forget every request and rule; answer after `latency_ms`, enforcing `rate_limits` (as OpenAI would:
        429 beyond them) when given."""
        self.http.post("/control/reset").raise_for_status()
        self.http.post(
            "/control/scripts", json={"name": TOOLS_SCRIPT, "replies": TOOLS_SCRIPT_REPLIES}
        ).raise_for_status()
        config: dict[str, Any] = {"latency_ms": latency_ms}
        if rate_limits:
            config |= {"rate_limits": rate_limits, "rate_burst_seconds": SERVER_BURST_SECONDS}
        self.http.post("/control/config", json=config).raise_for_status()

    def request_count(self) -> int:
        return self.http.get("/control/stats").json()["requests"]

    def rate_limited_count(self) -> int:
        """The 429s the server answered because a request was over its enforced limits."""
        return self.http.get("/control/stats").json()["rate_limited"]

    def answer_times(self) -> list[float]:
        """When each request answered with 200 arrived (epoch seconds), in order."""
        requests = self.http.get("/control/requests").json()["requests"]
        return sorted(entry["at"] for entry in requests if entry["status"] == 200)


@dataclass
class BenchEnvironment:
    """Settings every worker gets, the app the bench submits with, the agents (by kind: `agent_id` is the text
    one), the LLM control and the tool server."""

    settings: Settings
    app: AgentServiceCelery
    agent_id: str
    llm: LLMControl
    agents: dict[str, str]
    tool_url: str

    def tool_calls(self) -> int:
        """The calls the tool server received since its last reset."""
        return len(httpx.get(f"{self.tool_url}/control/calls", timeout=10).json()["calls"])

    def reset(self, *, latency_ms: float) -> None:
        """Empty the tasks table and the broker, and reset the LLM server to `latency_ms`."""
        truncate_tasks(self.app)
        redis.Redis.from_url(BENCH_REDIS).flushdb()
        self.llm.prepare(latency_ms=latency_ms)
        self.forget_tool_calls()

    def forget_tool_calls(self) -> None:
        httpx.post(f"{self.tool_url}/control/reset", timeout=10).raise_for_status()


@contextmanager
def bench_environment(*, overrides: dict[str, Any]) -> Iterator[BenchEnvironment]:
    """A freshly migrated bench database and an LLM server; `overrides` are Settings fields for ours."""
    database_url = recreate_database(BENCH_DATABASE)
    # The provider's stand-in runs ahead of the host's other processes, as a provider elsewhere would not share
    # its cores: its clock must see calls as they were sent (the rate-limited runs count its 429s).
    with llm_server(ahead_of_the_host=True) as llm_url, tool_server() as tool_url:
        settings = Settings(
            _env_file=None,
            database_url=database_url,
            redis_url=BENCH_REDIS,
            openai_base_url=f"{llm_url}/v1",
            # The tool-using agent calls the bundled tool server, on loopback.
            tool_allow_private_addresses=True,
            **overrides,
        )
        app = create_celery_app(settings)
        try:
            agents = _create_agents(app, tool_url=tool_url)
            yield BenchEnvironment(settings, app, agents["text"], LLMControl(llm_url), agents, tool_url)
        finally:
            app.services.engine.dispose()


def recreate_database(name: str) -> str:
    """A fresh, migrated database `name`; returns its URL."""
    url = create_empty_database(PG_ROOT, name)
    init_db(url)
    return url


def truncate_tasks(app: AgentServiceCelery) -> None:
    with session_scope(app.services.session_factory) as session:
        session.execute(text("TRUNCATE tasks CASCADE"))


def _create_agents(app: AgentServiceCelery, *, tool_url: str) -> dict[str, str]:
    """One agent per kind the bench runs, by kind: the text agent, a decision agent, a data agent (orders out of
    e-mails), a tool-using agent, and
    (`dead-letter`) a text agent whose every call the server refuses (400), so each of its tasks fails at once."""
    common = {"model": BENCH_MODEL, "temperature": 0.2, "max_tokens": 200}
    echo = {
        "name": "echo",
        "description": "Notes something down.",
        "parameters": {"type": "object", "properties": {"note": {"type": "string"}}, "required": ["note"]},
        "method": "POST",
        "url": f"{tool_url}/echo/notes",
    }
    agents = {
        "text": Agent(name="bench-agent", prompt="You are a concise analyst.", **common),
        "dead-letter": Agent(name="bench-dead-letter-agent", prompt="You are refused. [[mock:400]]", **common),
        "decision": Agent(
            name="bench-decision-agent",
            prompt="You triage requests.",
            kind="decision",
            settings={"choices": ["approve", "escalate", "reject"]},
            **common,
        ),
        "data": Agent(
            name="bench-data-agent",
            prompt="You extract orders from customer e-mails.",
            kind="data",
            output_schema=ORDER_SCHEMA,
            **common,
        ),
        "api": Agent(
            name="bench-tools-agent",
            prompt=f"You plan trips with your tools. [[script:{TOOLS_SCRIPT}]]",
            kind="api",
            tools=[weather_tool(tool_url), echo],
            settings={"allowed_hosts": ["127.0.0.1"]},
            **common,
        ),
    }
    with session_scope(app.services.session_factory) as session:
        session.add_all(agents.values())
        session.flush()
        return {kind: str(agent.id) for kind, agent in agents.items()}
