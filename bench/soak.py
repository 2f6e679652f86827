"""Memory through a soak (issue 20, target 5): each worker process's RSS, sampled over the run, read against the
tasks done by then. Its start and end are taken under full load on both sides, past the first tasks (pools,
buffers and caches fill up: growth, not a leak) and before the last (the load tails off)."""

from __future__ import annotations

import bisect
import statistics
from dataclasses import dataclass

SETTLED = 0.05  # the share of tasks done before a soak is steady, and the share left when it stops being so
WINDOW = 0.10  # start and end: the medians over the first and last tenth of the tasks of the steady part
ALL = "all"  # the trend of the sum over the worker's processes


@dataclass(frozen=True)
class MemoryTrend:
    """RSS in MB at the steady part's start, at its peak over the whole run, at the steady part's end; the
    least-squares slope through the steady part (MB per 1000 tasks done), and the growth end / start - 1."""

    start_mb: float
    peak_mb: float
    end_mb: float
    slope_mb_per_1000_tasks: float
    growth: float


def memory_trends(
    timeline: list[tuple[float, dict[str, float]]], progress: list[tuple[float, int]], *, tasks: int
) -> dict[str, MemoryTrend]:
    """The trend of each process (by name) and of their sum (`ALL`), from the sampler's `timeline` (time, RSS MB
    by process) and the run's `progress` (time, tasks done, in time order), of `tasks` in all; a process with
    too few samples in the steady part's start or end has none."""
    series: dict[str, list[tuple[float, float]]] = {}
    for at, by_process in timeline:
        done = _done_at(at, progress)
        for name, rss in (*by_process.items(), (ALL, sum(by_process.values()))):
            series.setdefault(name, []).append((done, rss))
    trends = {name: _trend(points, tasks=tasks) for name, points in series.items()}
    return {name: trend for name, trend in trends.items() if trend is not None}


def _done_at(at: float, progress: list[tuple[float, int]]) -> float:
    """Tasks done at time `at`, interpolated between the progress polls around it."""
    times = [when for when, _ in progress]
    after = bisect.bisect_left(times, at)
    if after == 0:
        return 0.0
    if after == len(progress):
        return float(progress[-1][1])
    (t0, d0), (t1, d1) = progress[after - 1], progress[after]
    return d0 + (d1 - d0) * (at - t0) / (t1 - t0) if t1 > t0 else float(d1)


def _trend(points: list[tuple[float, float]], *, tasks: int) -> MemoryTrend | None:
    """From (tasks done, RSS MB) points."""
    first, last = SETTLED * tasks, (1 - SETTLED) * tasks
    steady = [(done, rss) for done, rss in points if first <= done <= last]
    start = [rss for done, rss in steady if done <= first + WINDOW * tasks]
    end = [rss for done, rss in steady if done >= last - WINDOW * tasks]
    if not start or not end or len({done for done, _ in steady}) < 2:
        return None
    slope, _ = statistics.linear_regression([done for done, _ in steady], [rss for _, rss in steady])
    begun, ended = statistics.median(start), statistics.median(end)
    peak = max(rss for _, rss in points)
    return MemoryTrend(begun, peak, ended, slope * 1000, ended / begun - 1)
