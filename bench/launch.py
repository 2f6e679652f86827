"""Start any command from the repository root and wait for its ready line (the bench's workers are not
all `celery -A worker`). Belongs in processes.py, next to `start_worker`, which is a special case of it."""
from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from processes import ROOT, stop_process

CELERY_READY = " ready."


@contextmanager
def started(
    command: Sequence[str], *, env: dict[str, str], log_path: Path, ready_marker: str = CELERY_READY,
    timeout: float = 90,
) -> Iterator[subprocess.Popen]:
    """Run `command` with `env` on top of ours, output to a fresh `log_path`; yields it once ready.

    Raises: RuntimeError when it exits or is not ready within `timeout` seconds.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        process = subprocess.Popen(list(command), cwd=ROOT, env={**os.environ, **env}, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _await_marker(process, log_path, ready_marker, timeout=timeout)
        yield process
    finally:
        stop_process(process)


def _await_marker(process: subprocess.Popen, log_path: Path, marker: str, *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while marker.encode() not in log_path.read_bytes():
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[:4]} exited with {process.returncode}; see {log_path}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{process.args[:4]} not ready after {timeout}s; see {log_path}")
        time.sleep(0.2)
