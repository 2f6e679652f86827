"""`make demo`: the whole job end to end on the embedded defaults, with a progress bar and a results table.

Starts the bundled LLM and tool servers and a real Celery worker process, submits text tasks (one of them
meets a rate limit and is retried) and one task of each other kind (a decision, a tool-using api task, a
data task), follows them to the end and prints what each one produced.
"""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from sqlalchemy import func, select
from sqlalchemy.orm import selectinload

from agent_service import worker
from agent_service.config import LOCAL_DATA_DIR
from agent_service.database import session_scope
from agent_service.devtools.processes import celery_worker, llm_server, tool_server
from agent_service.devtools.tool_server import weather_tool
from agent_service.ids import parse_task_id
from agent_service.models import FINAL_STATUSES, Agent, Task, TaskStatus
from agent_service.store.schema import init_db
from agent_service.submission.agents import create_agent
from agent_service.tasks import create_agent_tasks
from agent_service.terminal.tables import task_table

DEMO_AGENT = {
    "name": "demo-analyst",
    "model": "gpt-4o-mini",
    "temperature": 0.2,
    "max_tokens": 300,
    "prompt": "You are a concise analyst. Answer the task in two sentences.",
}
ORDER_SCHEMA = {
    "type": "object",
    "properties": {"customer": {"type": "string"}, "total": {"type": "number"}, "urgent": {"type": "boolean"}},
    "required": ["customer", "total", "urgent"],
}


def kind_agents(tool_url: str) -> list[dict]:
    """The demo's agent of each kind beyond text, as `create-agent` takes them."""
    common = {"model": "gpt-4o-mini", "temperature": 0, "max_tokens": 300}
    return [
        {"name": "demo-triage", "kind": "decision", "prompt": "You triage support requests.", **common},
        {
            "name": "demo-trip-planner",
            "kind": "api",
            "prompt": "You plan trips; check the weather with your tool first.",
            "tools": [weather_tool(tool_url)],
            "settings": {"allowed_hosts": ["127.0.0.1"]},
            **common,
        },
        {
            "name": "demo-order-reader",
            "kind": "data",
            "prompt": "You read orders into structured data.",
            "output_schema": ORDER_SCHEMA,
            **common,
        },
    ]


KIND_TASKS = {
    "demo-triage": {
        "title": "The checkout page times out for every customer",
        "payload": {"options": ["page on-call", "open a ticket", "ignore"]},
    },
    "demo-trip-planner": {"title": "Should I pack an umbrella for Lisbon tomorrow?"},
    "demo-order-reader": {
        "title": "Read this order",
        "payload": {"email": "Hi, ACME here: 3 crates at $40 each, we need them by Friday please!"},
    },
}
TOPICS = (
    "Summarise last week's support tickets",
    "Draft a release note",
    "Classify this lead",
    "Extract action items from the meeting",
    "Suggest three blog titles",
    "Review the on-call handover",
)


def run_demo(*, task_count: int, console: Console, timeout: float = 120) -> int:
    """Run the demo, printing to `console`; returns 0 when every task completed."""
    session_factory = worker.app.services.session_factory
    init_db()
    with (
        llm_server(latency_ms=300, jitter_ms=400) as llm_url,
        tool_server() as tool_url,
        celery_worker(
            env={
                "OPENAI_BASE_URL": f"{llm_url}/v1",
                "RETRY_BACKOFF_BASE_SECONDS": "1",
                # The trip planner's tool is the bundled tool server, on loopback.
                "TOOL_ALLOW_PRIVATE_ADDRESSES": "true",
            },
            log_path=LOCAL_DATA_DIR / "demo-worker.log",
            name="demo",
        ),
    ):
        agent_id = _demo_agent_id(session_factory, DEMO_AGENT)
        items = [_demo_task(i, agent_id) for i in range(task_count)]
        for definition in kind_agents(tool_url):
            task = KIND_TASKS[definition["name"]]
            items.append({**task, "agent_id": _demo_agent_id(session_factory, definition), "user_id": "demo-user"})
        console.print(f"worker is up; LLM server at {llm_url}; submitting {len(items)} tasks")
        _rate_limit_once(llm_url, match=items[0]["title"])
        task_ids = create_agent_tasks(items, app=worker.app)
        tasks = _follow(task_ids, session_factory=session_factory, console=console, timeout=timeout)
    console.print(task_table(tasks, console=console, title="Demo results", full_ids=False))
    completed = sum(task.status == TaskStatus.COMPLETED for task in tasks)
    console.print(f"{completed}/{len(tasks)} completed; worker log: {Path(LOCAL_DATA_DIR / 'demo-worker.log')}")
    return 0 if completed == len(tasks) else 1


def _demo_agent_id(session_factory, definition: dict) -> str:
    """The demo agent of that name, created from `definition` the first time."""
    with session_scope(session_factory) as session:
        agent = session.scalar(select(Agent).where(Agent.name == definition["name"]))
        if agent is None:
            agent = create_agent(session, definition)
        return str(agent.id)


def _demo_task(index: int, agent_id: str) -> dict:
    topic = TOPICS[index % len(TOPICS)]
    return {
        "title": f"{topic} #{index + 1} ({time.strftime('%H:%M:%S')})",
        "agent_id": agent_id,
        "description": f"Demo task {index + 1}: {topic.lower()}.",
        "user_id": "demo-user",
    }


def _rate_limit_once(llm_url: str, *, match: str) -> None:
    # Shows a transient failure: the first call for this task gets a 429 and the task retries.
    rule = {"fault": "429", "match": match, "times": 1, "retry_after": 1}
    request = urllib.request.Request(
        f"{llm_url}/control/faults",
        data=json.dumps(rule).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    urllib.request.urlopen(request, timeout=5).close()


def _follow(task_ids: list[str], *, session_factory, console: Console, timeout: float) -> list[Task]:
    ids = [parse_task_id(task_id) for task_id in task_ids]
    columns = (TextColumn("[bold]tasks"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    deadline = time.monotonic() + timeout
    with Progress(*columns, console=console) as progress:
        bar = progress.add_task("tasks", total=len(ids))
        while time.monotonic() < deadline:
            done = _count_final(session_factory, ids)
            progress.update(bar, completed=done)
            if done == len(ids):
                break
            time.sleep(0.3)
    with session_scope(session_factory) as session:
        query = select(Task).where(Task.id.in_(ids)).options(selectinload(Task.agent))
        return list(session.scalars(query.order_by(Task.created_at, Task.title)))


def _count_final(session_factory, ids) -> int:
    with session_scope(session_factory) as session:
        return session.scalar(select(func.count()).where(Task.id.in_(ids), Task.status.in_(FINAL_STATUSES)))
