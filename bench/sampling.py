"""CPU and memory of a worker's whole process tree while a run goes on.

CPU is exact rather than sampled: the root's own user+sys, plus `children_user/children_system` (the
kernel adds every reaped child there, so pool children recycled by max-tasks-per-child still count),
plus the live descendants' user+sys, read before and after the run. Memory has no such total, so the
tree is sampled every 0.5 s and the largest sums are kept: RSS (counts pages forked children share
once per process) and PSS (divides shared pages among their sharers), and the largest process' RSS; each
process's own RSS is kept too, by name (the worker, its LLM process, ...), peak and over time.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import psutil
import redis

MB = 1024 * 1024


def tree_cpu_seconds(root: psutil.Process) -> float:
    """User+sys CPU seconds of `root`, its reaped children and its live descendants."""
    descendants = _cpu_of(root.children(recursive=True))
    own = root.cpu_times()
    return own.user + own.system + own.children_user + own.children_system + descendants


class WorkerSampler:
    """Context manager: CPU seconds used and peak RSS of the process tree rooted at `pid`; the CPU of the trees
    rooted at `others` (more workers sharing the run) is added to `cpu_seconds`."""

    def __init__(self, pid: int, *, others: tuple[int, ...] = (), interval: float = 0.5) -> None:
        self.root = psutil.Process(pid)
        self.others = [psutil.Process(other) for other in others]
        self.interval = interval
        self.peak_rss_mb = 0.0
        self.peak_pss_mb = 0.0
        self.peak_process_rss_mb = 0.0
        self.peak_processes = 0
        self.peak_rss_by_process_mb: dict[str, float] = {}
        # (time.monotonic(), each process's RSS in MB by name) per sample
        self.timeline: list[tuple[float, dict[str, float]]] = []
        self.cpu_seconds = 0.0
        self.root_cpu_seconds = 0.0  # the root process's own share of `cpu_seconds` (the rest: its children's)
        self.box_cpu_percent = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample_until_stopped, daemon=True)

    def __enter__(self) -> WorkerSampler:
        self._cpu_at_start, self._root_cpu_at_start = self._all_cpu_seconds(), _own_cpu_seconds(self.root)
        psutil.cpu_percent()  # starts the machine-wide busy counter
        self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample_memory()
        self.cpu_seconds = self._all_cpu_seconds() - self._cpu_at_start
        self.root_cpu_seconds = _own_cpu_seconds(self.root) - self._root_cpu_at_start
        self.box_cpu_percent = psutil.cpu_percent()

    def _all_cpu_seconds(self) -> float:
        return sum(tree_cpu_seconds(root) for root in (self.root, *self.others))

    def _sample_until_stopped(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample_memory()

    def _sample_memory(self) -> None:
        named = _memory_of([self.root, *self.root.children(recursive=True)], root=self.root)
        sizes = list(named.values())
        by_process = {name: size.rss / MB for name, size in named.items()}
        self.timeline.append((time.monotonic(), by_process))
        for name, rss in by_process.items():
            self.peak_rss_by_process_mb[name] = max(self.peak_rss_by_process_mb.get(name, 0.0), rss)
        self.peak_rss_mb = max(self.peak_rss_mb, sum(size.rss for size in sizes) / MB)
        self.peak_pss_mb = max(self.peak_pss_mb, sum(size.pss for size in sizes) / MB)
        self.peak_process_rss_mb = max(self.peak_process_rss_mb, max((size.rss for size in sizes), default=0) / MB)
        self.peak_processes = max(self.peak_processes, len(sizes))


def _own_cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def _cpu_of(processes: list[psutil.Process]) -> float:
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue  # exited since the listing: its time is in the parent's children_* once reaped
        total += times.user + times.system
    return total


def _memory_of(processes: list[psutil.Process], *, root: psutil.Process) -> dict[str, Any]:
    """Each live process's memory by its name: "worker" for `root`, else the module it runs (`-m NAME`) or its
    executable's name, with its pid when another process has that name already (prefork's children)."""
    sizes = {}
    for process in processes:
        try:
            name = "worker" if process.pid == root.pid else _process_name(process.cmdline()) or process.name()
            sizes[name if name not in sizes else f"{name} {process.pid}"] = process.memory_full_info()
        except psutil.NoSuchProcess:
            continue
    return sizes


def _process_name(cmdline: list[str]) -> str | None:
    return cmdline[cmdline.index("-m") + 1] if "-m" in cmdline[:-1] else None


SHARED_SERVICES = ("postgres", "redis-server")


class ForeignLoad:
    """Context manager: CPU % (of one core) used during a run by processes outside this bench
    (neither its descendants nor the shared PostgreSQL and Redis), a sign that figures are disturbed.
    A process that starts and ends inside the window is missed, so it is a lower bound."""

    def __init__(self) -> None:
        self.cpu_percent = 0.0

    def __enter__(self) -> ForeignLoad:
        self._begun, self._before = time.monotonic(), _foreign_cpu()
        return self

    def __exit__(self, *_exc) -> None:
        after = _foreign_cpu()
        used = sum(seconds - self._before.get(pid, 0.0) for pid, seconds in after.items())
        self.cpu_percent = 100 * used / max(time.monotonic() - self._begun, 1e-9)


def _foreign_cpu() -> dict[int, float]:
    ours = {os.getpid(), *(child.pid for child in psutil.Process().children(recursive=True))}
    seconds = {}
    for process in psutil.process_iter(["name", "cpu_times"]):
        times = process.info["cpu_times"]
        if process.pid in ours or times is None or process.info["name"] in SHARED_SERVICES:
            continue
        seconds[process.pid] = times.user + times.system
    return seconds


class QueuePeak:
    """Context manager: the longest the broker's agent-task queue (a Redis list) grew, sampled every 50 ms."""

    def __init__(self, redis_url: str, queue: str, *, interval: float = 0.05) -> None:
        self.client = redis.Redis.from_url(redis_url)
        self.queue = queue
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample_until_stopped, daemon=True)

    def __enter__(self) -> QueuePeak:
        self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._stop.set()
        self._thread.join()

    def _sample_until_stopped(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self.client.llen(self.queue))
