"""Helpers shared by the tests: settings for child processes, the bundled servers' control APIs, polling."""

from __future__ import annotations

import ipaddress
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx

from agent_service.config import Settings
from agent_service.database import session_scope
from agent_service.devtools.processes import ROOT
from agent_service.models import FINAL_STATUSES, Agent, Task


class LLMControl:
    """Drives the bundled LLM server's control API: fault and script rules, named scripts and the log of
    requests received."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.http = httpx.Client(base_url=base_url, timeout=10)

    def add_fault(self, **rule) -> int:
        """A rule (`fault=KIND` or `script=NAME or [replies]`, with `match`, `model`, `times`, `rate`); its id."""
        response = self.http.post("/control/faults", json=rule)
        response.raise_for_status()
        return response.json()["id"]

    def remove_fault(self, rule_id: int) -> None:
        self.http.delete(f"/control/faults/{rule_id}").raise_for_status()

    def add_script(self, name: str, replies: list[dict]) -> str:
        """Registers a script, one reply per model turn; returns the `[[script:NAME]]` directive naming it."""
        self.http.post("/control/scripts", json={"name": name, "replies": replies}).raise_for_status()
        return f"[[script:{name}]]"

    def configure(self, **config) -> None:
        """Changes the server's configuration (`latency_ms`, `rate_limits`, ...) until changed back or reset."""
        self.http.post("/control/config", json=config).raise_for_status()

    def requests(self, match: str) -> list[dict]:
        """The chat requests whose messages contain `match` (each with its turn, tools and response_format)."""
        return self.http.get("/control/requests", params={"match": match}).json()["requests"]

    def count(self, match: str) -> int:
        return len(self.requests(match))

    def reset(self) -> None:
        """Rules, scripts, the request log and the configuration back to the server's start."""
        self.http.post("/control/reset").raise_for_status()


class ToolServerControl:
    """Reads the bundled tool server's record of the calls it received, and clears it."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.http = httpx.Client(base_url=base_url, timeout=10)

    def calls(self, *, path: str | None = None, method: str | None = None) -> list[dict]:
        """The calls received, oldest first (header names in lower case), optionally only to `path` / `method`."""
        wanted = {name: value for name, value in (("path", path), ("method", method)) if value is not None}
        return self.http.get("/control/calls", params=wanted).json()["calls"]

    def count(self, *, path: str | None = None, method: str | None = None) -> int:
        return len(self.calls(path=path, method=method))

    def reset(self) -> None:
        """Forgets the calls and the orders."""
        self.http.post("/control/reset").raise_for_status()


def make_settings(**overrides) -> Settings:
    """Settings for tests: nothing from the environment or `.env`, quick retries."""
    values = dict(
        retry_backoff_base_seconds=0.2,
        retry_backoff_max_seconds=2.0,
        task_max_attempts=3,
        llm_timeout_seconds=5,
        log_json=True,
    )
    return Settings(_env_file=None, **{**values, **overrides})


def run_cli(settings: Settings | dict[str, str], *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    """`python cli.py ARGS` in a subprocess configured with `settings` (or with raw environment variables,
    for settings that would not validate), as a user runs it; `stdin` is its standard input."""
    return run_in_repo([sys.executable, "cli.py", *args], settings, stdin=stdin)


def run_in_repo(
    command: list[str], settings: Settings | dict[str, str], *, stdin: str | None = None
) -> subprocess.CompletedProcess:
    """`command` from the repository root with only `settings` in its environment; waits for it to end."""
    env = settings.as_env() if isinstance(settings, Settings) else settings
    return subprocess.run(
        command,
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", **env},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def wait_for_final(session_factory, task_ids: list[str], *, timeout: float = 60) -> dict[str, Task]:
    """Poll until every task is completed, failed or cancelled; returns them by id."""
    ids = [uuid.UUID(task_id) for task_id in task_ids]
    deadline = time.monotonic() + timeout
    while True:
        with session_scope(session_factory) as session:
            tasks = session.query(Task).filter(Task.id.in_(ids)).all()
        if len(tasks) == len(ids) and all(task.status in FINAL_STATUSES for task in tasks):
            return {str(task.id): task for task in tasks}
        if time.monotonic() > deadline:
            pending = [f"{task.id}:{task.status.value}" for task in tasks if task.status not in FINAL_STATUSES]
            raise AssertionError(f"tasks not final after {timeout}s: {pending[:10]}")
        time.sleep(0.2)


def wait_until(condition, *, what: str, timeout: float = 30) -> None:
    """Poll until `condition()` holds; fails the test with "no <what>" after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"no {what} after {timeout}s"
        time.sleep(0.05)


def listening_addresses(port: int) -> list[str]:
    """The local addresses a TCP socket listens on at `port`, read from /proc/net/tcp and tcp6 (psutil's
    `net_connections` walks every process's file descriptors, seconds on a busy machine)."""
    found = []
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, port_hex = local.split(":")
            if state == "0A" and int(port_hex, 16) == port:  # 0A: LISTEN
                packed = b"".join(bytes.fromhex(address[i : i + 8])[::-1] for i in range(0, width, 8))
                found.append(str(ipaddress.ip_address(packed)))
    return found


def free_port() -> int:
    """A TCP port free on loopback just now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def add_agent(session_factory, *, prefix: str = "agent", **fields) -> Agent:
    """Commit an active agent with a unique name (careful, terse settings unless `fields` say otherwise)."""
    values = dict(prompt="You are a careful assistant.", model="gpt-4o-mini", temperature=0.1, max_tokens=200)
    with session_scope(session_factory) as session:
        agent = Agent(name=f"{prefix}-{uuid.uuid4().hex[:8]}", **{**values, **fields})
        session.add(agent)
    return agent
