"""Start and stop the service's own processes (bundled LLM server, Celery workers) for the demo,
tests and benchmarks, and wait until each is ready."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent
_LISTENING = re.compile(r"listening on (http://\S+)")


@contextmanager
def llm_server(*, latency_ms: float = 0, jitter_ms: float = 0, seed: int | None = None) -> Iterator[str]:
    """Run `llm_server.py` on a free port; yields its base URL (without /v1)."""
    command = [sys.executable, str(ROOT / "llm_server.py"), "--port", "0",
               "--latency-ms", str(latency_ms), "--latency-jitter-ms", str(jitter_ms)]
    if seed is not None:
        command += ["--seed", str(seed)]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        yield _await_url(process)
    finally:
        stop_process(process)


@contextmanager
def celery_worker(
    *, env: dict[str, str], log_path: Path, name: str = "worker", concurrency: int | None = None,
    pool: str | None = None, queues: str = "agent_tasks,system", extra_args: tuple[str, ...] = (),
    ready_timeout: float = 60,
) -> Iterator[subprocess.Popen]:
    """Run `celery -A worker worker` from the repo root with `env` on top of ours; yields the process.
    Pool and concurrency default to the settings (WORKER_POOL, WORKER_CONCURRENCY)."""
    process = start_worker(env=env, log_path=log_path, name=name, concurrency=concurrency, pool=pool,
                           queues=queues, extra_args=extra_args, ready_timeout=ready_timeout)
    try:
        yield process
    finally:
        stop_process(process)


def start_worker(
    *, env: dict[str, str], log_path: Path, name: str, concurrency: int | None = None, pool: str | None = None,
    queues: str = "agent_tasks,system", extra_args: tuple[str, ...] = (), ready_timeout: float = 60,
) -> subprocess.Popen:
    """Start a worker and return once it logged that it is ready. Raises: RuntimeError if it is not."""
    # Pool and concurrency go through the settings: Celery's CLI cannot tell an explicit
    # `--pool=prefork` from its default, so the configured pool would win over the flag.
    if pool:
        env = {**env, "WORKER_POOL": pool}
    if concurrency:
        env = {**env, "WORKER_CONCURRENCY": str(concurrency)}
    command = [sys.executable, "-m", "celery", "-A", "worker", "worker", "--loglevel=INFO",
               "-Q", queues, "-n", f"{name}@%h", *extra_args]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = log_path.open("ab")
    log_start = log.tell()
    process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    _await_log_line(process, log_path, " ready.", after=log_start, timeout=ready_timeout)
    return process


def stop_process(process: subprocess.Popen, *, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
    """Signal the process group and wait; SIGKILL whatever is left after `timeout`."""
    if process.poll() is None:
        _signal_group(process, sig)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _signal_group(process, signal.SIGKILL)
            process.wait(timeout=10)


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except (ProcessLookupError, PermissionError):
        process.send_signal(sig)


def _await_url(process: subprocess.Popen) -> str:
    line = process.stdout.readline()
    match = _LISTENING.search(line)
    if match is None:
        stop_process(process)
        raise RuntimeError(f"llm_server did not start: {line!r}")
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
