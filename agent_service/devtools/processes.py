"""Start and stop the service's own processes (the bundled LLM and tool servers, Celery workers) for the demo,
tests and benchmarks, and wait until each is ready; and make RabbitMQ virtual hosts of their own for them."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# The folder that holds the package: a checkout's root, or site-packages when installed.
ROOT = Path(__file__).resolve().parents[2]
_LISTENING = re.compile(r"listening on (http://\S+)")


@contextmanager
def llm_server(
    *,
    latency_ms: float = 0,
    jitter_ms: float = 0,
    seed: int | None = None,
    extra_args: tuple[str, ...] = (),
    ahead_of_the_host: bool = False,
) -> Iterator[str]:
    """Run the bundled LLM server (`devtools.llm_server`) on a free port; yields its base URL (without /v1).
    `extra_args` go to its command line (its enforced rate limits, say). `ahead_of_the_host` runs it at a
    higher priority than everything else here (as root; else as is): a real provider does not share the host's
    cores, and one that measures rates must not see arrivals bunched by its own late scheduling."""
    options = ["--latency-ms", str(latency_ms), "--latency-jitter-ms", str(jitter_ms)]
    if seed is not None:
        options += ["--seed", str(seed)]
    prefix = ("nice", "-n", "-10") if ahead_of_the_host and os.geteuid() == 0 else ()
    with bundled_server("agent_service.devtools.llm_server", *options, *extra_args, prefix=prefix) as url:
        yield url


@contextmanager
def tool_server() -> Iterator[str]:
    """Run the bundled tool server (`devtools.tool_server`) on a free port; yields its base URL."""
    with bundled_server("agent_service.devtools.tool_server") as url:
        yield url


@contextmanager
def bundled_server(module: str, *args: str, prefix: tuple[str, ...] = ()) -> Iterator[str]:
    """`python -m MODULE --port 0 ARGS` (after `prefix`, a command such as `nice`) for the length of a
    with-block; yields the URL it prints once it listens."""
    command = [*prefix, sys.executable, "-m", module, "--port", "0", *args]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        yield _await_url(process, module)
    finally:
        stop_process(process)


@contextmanager
def rabbitmq_vhost(name: str) -> Iterator[str]:
    """A new virtual host `name` on the machine's RabbitMQ (127.0.0.1:5672, as guest/guest, which RabbitMQ allows
    on loopback) for the length of a with-block, deleted after it; yields its amqp:// URL.
    Raises: CalledProcessError from `rabbitmqctl`."""
    rabbitmqctl("add_vhost", name)
    try:
        rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
        yield f"amqp://guest:guest@127.0.0.1:5672/{name}"
    finally:
        rabbitmqctl("delete_vhost", name)


def rabbitmqctl(*args: str) -> str:
    """Run `rabbitmqctl -q ARGS`; returns its output. Raises: CalledProcessError."""
    return subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, text=True, timeout=120).stdout


CELERY_READY = " ready."


def start_process(
    command: list[str],
    *,
    env: dict[str, str],
    log_path: Path,
    ready_marker: str = CELERY_READY,
    timeout: float = 60,
    cwd: Path = ROOT,
) -> subprocess.Popen:
    """Run `command` from `cwd` (the repo root) with `env` on top of ours, output appended to `log_path`, and
    return once it printed `ready_marker`. Raises: RuntimeError when it exits or is not ready in time."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        log_start = log.tell()
        process = subprocess.Popen(
            command, cwd=cwd, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    _await_log_line(process, log_path, ready_marker, after=log_start, timeout=timeout)
    return process


@contextmanager
def busy_core() -> Iterator[subprocess.Popen]:
    """A process spinning on one core for the length of a with-block: the machine made busy on purpose, so
    that a test or a benchmark sees the late wake-ups a loaded host gives."""
    process = subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=True)
    try:
        yield process
    finally:
        stop_process(process)


@contextmanager
def started(command: list[str], **options) -> Iterator[subprocess.Popen]:
    """`start_process` for the length of a with-block."""
    process = start_process(command, **options)
    try:
        yield process
    finally:
        stop_process(process)


def worker_command(*, name: str, queues: str = "agent_tasks,system", extra_args: tuple[str, ...] = ()) -> list[str]:
    """`celery -A worker worker` for the service's own app."""
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "agent_service.worker",
        "worker",
        "--loglevel=INFO",
        "-Q",
        queues,
        "-n",
        f"{name}@%h",
        *extra_args,
    ]


def worker_env(env: dict[str, str], *, pool: str | None = None, concurrency: int | None = None) -> dict[str, str]:
    """`env` with the pool settings: Celery's CLI cannot tell an explicit `--pool=prefork` from its default,
    so the configured pool would win over the flag."""
    overrides = {"WORKER_POOL": pool, "WORKER_CONCURRENCY": str(concurrency) if concurrency else None}
    return {**env, **{name: value for name, value in overrides.items() if value}}


def start_worker(
    *,
    env: dict[str, str],
    log_path: Path,
    name: str,
    concurrency: int | None = None,
    pool: str | None = None,
    queues: str = "agent_tasks,system",
    extra_args: tuple[str, ...] = (),
    ready_timeout: float = 60,
    through: tuple[str, ...] = (),
) -> subprocess.Popen:
    """Start a worker (pool and concurrency default to the settings) and return once it is ready; `through` is
    a command that runs it (`ip netns exec NS`: on another host of the test's own), which must exec it."""
    return start_process(
        [*through, *worker_command(name=name, queues=queues, extra_args=extra_args)],
        env=worker_env(env, pool=pool, concurrency=concurrency),
        log_path=log_path,
        timeout=ready_timeout,
    )


@contextmanager
def celery_worker(**options) -> Iterator[subprocess.Popen]:
    """`start_worker` for the length of a with-block."""
    process = start_worker(**options)
    try:
        yield process
    finally:
        stop_process(process)


def stop_process(process: subprocess.Popen, *, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
    """Signal the process group and wait; then SIGKILL whatever is left of the group, including members
    that outlived its leader (a worker's embedded beat outlives a main process stopped on its own)."""
    if process.poll() is None:
        _signal_group(process, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=timeout)
    _signal_group(process, signal.SIGKILL)
    process.wait(timeout=10)


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except (ProcessLookupError, PermissionError):
        process.send_signal(sig)


def _await_url(process: subprocess.Popen, module: str) -> str:
    line = process.stdout.readline()
    match = _LISTENING.search(line)
    if match is None:
        stop_process(process)
        raise RuntimeError(f"{module} did not start: {line!r}")
    return match.group(1)


def _await_log_line(process: subprocess.Popen, log_path: Path, marker: str, *, after: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"worker exited with {process.returncode}; see {log_path}")
        with log_path.open("rb") as log:
            log.seek(after)
            if marker.encode() in log.read():
                return
        time.sleep(0.2)
    stop_process(process)
    raise RuntimeError(f"worker not ready after {timeout}s; see {log_path}")


@contextmanager
def api_server(env: dict[str, str], *, log_path: Path) -> Iterator[str]:
    """`python cli.py api` with `env` on a free loopback port for the length of a with-block; yields its base
    URL once it listens."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "cli.py", "api"]
    env = {**env, "API_ADDRESS": "127.0.0.1", "API_PORT": str(port)}
    with started(command, env=env, log_path=log_path, ready_marker="Uvicorn running on"):
        yield f"http://127.0.0.1:{port}"
