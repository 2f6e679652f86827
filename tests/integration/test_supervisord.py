"""The shipped `supervisord.conf`, run for real by supervisord without an activated virtual environment:
every program runs, tasks run through it, and a stop in the middle of their LLM calls loses none and
pays for none twice."""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest
import redis

from agent_service.devtools.processes import ROOT
from agent_service.models import TaskStatus
from agent_service.tasks import create_agent_tasks
from tests.integration.conftest import IDLE_REDIS, LOG_DIR
from tests.support import free_port, wait_for_final, wait_until

SUPERVISOR_BIN = ROOT / ".venv" / "bin"
LLM_SECONDS = 2.0  # each call of the test takes this long: long enough to stop supervisord in the middle of it


@pytest.fixture
def config(tmp_path_factory) -> Iterator[Path]:
    """The shipped file, with only its run-time files (pid file, control socket, beat schedule) moved to a
    folder of the test's own: a copy elsewhere changes %(here)s, so the copy names the repository instead."""
    folder = Path(tempfile.mkdtemp(prefix="sv-"))  # short: a Unix socket path has at most 107 bytes
    text = (ROOT / "supervisord.conf").read_text()
    for name in (".supervisord.pid", ".supervisor.sock", ".celerybeat-schedule"):
        assert f"%(here)s/{name}" in text
        text = text.replace(f"%(here)s/{name}", str(folder / name))
    path = folder / "supervisord.conf"
    path.write_text(text.replace("%(here)s", str(ROOT)))
    yield path
    shutil.rmtree(folder)


@pytest.fixture
def environment(settings, llm_url) -> dict[str, str]:
    """What supervisord is started with, and passes on: the test's services and a PATH without the venv."""
    flower_port = free_port()
    service = settings.model_copy(update={"redis_url": IDLE_REDIS, "flower_port": flower_port, "api_port": free_port()})
    redis.Redis.from_url(IDLE_REDIS).flushdb()
    return {"PATH": "/usr/bin:/bin", **service.as_env()}


@contextmanager
def supervisord(config: Path, environment: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    with log.open("ab") as output:
        process = subprocess.Popen(
            [str(SUPERVISOR_BIN / "supervisord"), "-c", str(config)],
            env=environment,
            cwd="/",
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield process
    finally:
        if process.poll() is None:  # the test failed before its own stop: leave nothing behind
            for child in psutil.Process(process.pid).children(recursive=True):
                child.kill()
            process.kill()
            process.wait()


def status(config: Path, environment: dict[str, str]) -> dict[str, str]:
    """`supervisorctl status`: each program's state."""
    answer = subprocess.run(
        [str(SUPERVISOR_BIN / "supervisorctl"), "-c", str(config), "status"],
        env=environment,
        capture_output=True,
        text=True,
        timeout=30,
    )
    return {line.split()[0]: line.split()[1] for line in answer.stdout.splitlines() if len(line.split()) > 1}


def wait_running(config: Path, environment: dict[str, str], log: Path, *, since: int) -> None:
    expected = {"migrate": "EXITED", "worker": "RUNNING", "beat": "RUNNING", "flower": "RUNNING", "api": "RUNNING"}
    wait_until(lambda: status(config, environment) == expected, what=f"programs running ({log})", timeout=60)
    wait_until(lambda: b" ready." in log.read_bytes()[since:], what=f"worker ready ({log})", timeout=60)


def test_supervisord_runs_every_program_and_a_stop_midway_loses_no_task_and_pays_no_call_twice(
    config, environment, idle_app, agent, llm, session_factory
):
    log = LOG_DIR / "supervisord.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    since = log.stat().st_size if log.exists() else 0
    marker = f"supervised {uuid.uuid4().hex[:8]}"
    llm.add_fault(fault="slow", match=marker, delay_ms=LLM_SECONDS * 1000)

    def submit(count: int, label: str) -> list[str]:
        items = [{"title": f"{marker} {label} {i}", "agent_id": str(agent.id), "user_id": "u-sv"} for i in range(count)]
        return create_agent_tasks(items, app=idle_app)

    # Given supervisord started from the shipped file, with no virtual environment on PATH
    with supervisord(config, environment, log) as first:
        wait_running(config, environment, log, since=since)
        # When it is stopped (as `docker stop` does: SIGTERM to supervisord) while tasks wait on their LLM calls
        in_flight = submit(6, "in flight")
        wait_until(lambda: len(llm.requests(marker)) == 6, what="LLM calls under way", timeout=30)
        stopped_at = time.monotonic()
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=120) == 0
        # Then those calls were answered and their tasks completed before it exited
        rows = wait_for_final(session_factory, in_flight, timeout=1)
        assert {row.status for row in rows.values()} == {TaskStatus.COMPLETED}
        assert time.monotonic() - stopped_at < LLM_SECONDS + 20
    # And tasks submitted while it is down complete once it is started again
    queued = submit(3, "while down")
    with supervisord(config, environment, log) as second:
        wait_running(config, environment, log, since=since)
        rows = wait_for_final(session_factory, queued, timeout=60)
        assert {row.status for row in rows.values()} == {TaskStatus.COMPLETED}
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=120) == 0
    # And each task cost one LLM call, and nothing printed a traceback
    titles = [request["text"] for request in llm.requests(marker)]
    assert len(titles) == 9 and all(titles.count(title) == 1 for title in titles)
    output = log.read_bytes()[since:].decode(errors="replace")
    assert "Traceback" not in output
