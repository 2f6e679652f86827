"""What a bench prints and keeps: the results table, ours/baseline ratios, the targets with pass/fail,
`results/bench.json` and `results/bench.png`. Targets are reported, never asserted."""

from __future__ import annotations

import json
import operator
import os
import platform
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench.http_api import HttpSubmitResult
from bench.scenarios import BulkSubmitResult, RunResult
from bench.soak import ALL

LATENCIES_MS = (0, 1000)
DISTURBED_CPU_PERCENT = 25  # of one core, used by processes that are not the bench's
NOT_OURS = ("floor", "baseline")  # the names of the runs of other workers begin so


@dataclass(frozen=True)
class Target:
    name: str
    goal: str
    measured: float | None
    passed: bool | None  # None: not measured in this bench
    note: str = ""


def ratios(runs: dict[str, RunResult]) -> dict[str, float | None]:
    """ours / baseline throughput and CPU per task, at each latency; tracing on / off, at 0 ms; the mixed runs
    against plain text and against each other."""
    figures = {}
    for latency in LATENCIES_MS:
        ours, baseline = runs.get(f"ours-{latency}ms"), runs.get(f"baseline-{latency}ms")
        figures[f"throughput_ours_over_baseline_{latency}ms"] = _ratio(ours, baseline, "tasks_per_second")
        figures[f"cpu_ours_over_baseline_{latency}ms"] = _ratio(ours, baseline, "cpu_ms_per_task")
    traced, untraced = runs.get("tracing-on-0ms"), runs.get("tracing-off-0ms")
    figures["cpu_tracing_on_over_off_0ms"] = _ratio(traced, untraced, "cpu_ms_per_task")
    figures["throughput_tracing_on_over_off_0ms"] = _ratio(traced, untraced, "tasks_per_second")
    text, everything, bare = runs.get("mixed-text"), runs.get("mixed-everything"), runs.get("mixed-bare")
    for name, top, bottom in (("everything_over_text", everything, text), ("bare_over_text", bare, text)):
        figures[f"throughput_mixed_{name}_1000ms"] = _ratio(top, bottom, "tasks_per_second")
    figures["throughput_mixed_everything_over_bare_1000ms"] = _ratio(everything, bare, "tasks_per_second")
    figures["cpu_mixed_everything_over_bare_1000ms"] = _ratio(everything, bare, "cpu_ms_per_task")
    return figures


RATE_LIMITED_BUSY = "ours-rate-limited-3-workers-busy"
RATE_PACED = "ours-rate-paced"  # the rate-limited run's tasks offered at its limit's pace, with no limit


def _rate_targets(label: str, run: RunResult | None, *, at_least: float) -> list[Target]:
    """A rate-limited run keeps its configured pace (within `at_least` and 1.1 of it) and meets no 429."""
    pace, what = _ratio_of(run, "achieved_rpm", "configured_rpm"), f"{label}: achieved / configured requests per minute"
    return [
        _target(what, f">= {at_least}", pace, operator.ge, at_least, run),
        _target(what, "<= 1.1", pace, operator.le, 1.1, run),
        _target(f"{label}: 429s from the server", "= 0", _figure(run, "llm_429s"), operator.eq, 0, run),
    ]


def _held_by_rate_target(limited: RunResult | None, paced: RunResult | None) -> Target:
    """What a task the rate limit holds costs the worker beyond the same task offered at the limit's pace (both
    pay the worker's periodic work, spread over as many tasks a second)."""
    limited_cpu, paced_cpu = _figure(limited, "cpu_ms_per_task"), _figure(paced, "cpu_ms_per_task")
    extra = None if limited_cpu is None or paced_cpu is None else limited_cpu - paced_cpu
    what = "rate-limited: worker CPU per task beyond the same tasks offered at the limit's pace (ms)"
    return _target(what, "<= 5 ms", extra, operator.le, 5, limited, paced)


def _light_targets(ours: RunResult | None, floor: RunResult | None) -> list[Target]:
    """A lone task at light load, created to recorded, in ms; the floor's no-op round trip at the same pace
    is the note."""
    targets = []
    for percentile, limit in (("p50", 10), ("p99", 25)):
        name = f"latency_{percentile}_s"
        measured = _figure(ours, name)
        target = _target(
            f"light load 10/s at 0 ms, {percentile} created-to-recorded (ms)",
            f"<= {limit} ms",
            None if measured is None else measured * 1000,
            operator.le,
            limit,
            ours,
        )
        floor_ms = _figure(floor, name)
        targets.append(_noted(target, f"floor's no-op {floor_ms * 1000:.1f} ms" if floor_ms is not None else ""))
    return targets


def _memory_targets(runs: dict[str, RunResult]) -> list[Target]:
    """Every process of ours' worker under 300 MB in every run (the floor's and the baseline's are not ours), and
    the soak's memory flat: the sum over its processes grows by less than 5% from its steady start to its end."""
    ours = [run for run in runs.values() if not run.name.startswith(NOT_OURS) and run.peak_process_rss_mb]
    largest = max(ours, key=lambda run: run.peak_process_rss_mb or 0, default=None)
    soak = runs.get("soak")
    trend = (soak.memory_trends or {}).get(ALL) if soak else None
    return [
        _noted(
            _target(
                "every process of ours' worker, any run: peak RSS",
                "< 300 MB",
                _figure(largest, "peak_process_rss_mb"),
                operator.lt,
                300,
                *ours,
            ),
            f"{largest.name}: {_by_process(largest)}" if largest else "",
        ),
        _noted(
            _target(
                "soak: RSS of the worker's processes, growth over the steady part",
                "< 5 %",
                trend and trend.growth * 100,
                operator.lt,
                5,
                soak,
            ),
            soak_line(soak) if soak else "",
        ),
    ]


def evaluate_targets(runs: dict[str, RunResult], bulk: BulkSubmitResult | None, ratio: dict) -> list[Target]:
    ours_1000, ours_0, offered = runs.get("ours-1000ms"), runs.get("ours-0ms"), runs.get("ours-offered")
    ours_runs = [run for run in runs.values() if run.config == "ours" and run.peak_rss_mb is not None]
    peak_rss = max((run.peak_rss_mb for run in ours_runs), default=None)
    return [
        _target(
            "ours throughput at 1000 ms",
            ">= 200 tasks/s",
            _figure(ours_1000, "tasks_per_second"),
            operator.ge,
            200,
            ours_1000,
        ),
        _target(
            "ours / baseline throughput at 1000 ms",
            ">= 50x",
            ratio["throughput_ours_over_baseline_1000ms"],
            operator.ge,
            50,
            ours_1000,
            runs.get("baseline-1000ms"),
        ),
        *_light_targets(runs.get("ours-light"), runs.get("floor-light")),
        _target("ours CPU per task at 0 ms", "<= 5 ms", _figure(ours_0, "cpu_ms_per_task"), operator.le, 5, ours_0),
        _target(
            "offered 100/s at 1000 ms, p99 enqueue-to-done",
            "< 2.5 s",
            _figure(offered, "latency_p99_s"),
            operator.lt,
            2.5,
            offered,
        ),
        _target(
            "every control on at generous limits / off, throughput at 1000 ms",
            ">= 0.9",
            _ratio(runs.get("ours-1000ms-controls"), ours_1000, "tasks_per_second"),
            operator.ge,
            0.9,
            runs.get("ours-1000ms-controls"),
            ours_1000,
        ),
        _target(
            "fair share: B's p99 enqueue-to-done behind A's backlog, 1000 ms",
            "< 2.5 s",
            _figure(runs.get("fair-share-fair"), "latency_p99_s"),
            operator.lt,
            2.5,
            runs.get("fair-share-fair"),
        ),
        _target("ours RSS, all worker processes together (peak)", "< 300 MB", peak_rss, operator.lt, 300, *ours_runs),
        *_memory_targets(runs),
        _target(
            "mixed load, everything on / plain text, throughput at 1000 ms",
            ">= 0.9",
            ratio["throughput_mixed_everything_over_text_1000ms"],
            operator.ge,
            0.9,
            runs.get("mixed-everything"),
            runs.get("mixed-text"),
        ),
        *_rate_targets("rate-limited", runs.get("ours-rate-limited"), at_least=0.9),
        _held_by_rate_target(runs.get("ours-rate-limited"), runs.get(RATE_PACED)),
        *_rate_targets("rate-limited, 3 workers, busy host", runs.get(RATE_LIMITED_BUSY), at_least=0.95),
        *_kind_targets(runs),
        _target(
            "bulk submit (create_agent_tasks, 500 per call)",
            ">= 1000 tasks/s",
            bulk and bulk.tasks_per_second,
            operator.ge,
            1000,
        ),
    ]


def _kind_targets(runs: dict[str, RunResult]) -> list[Target]:
    """Issue 20's kinds at text speed: a structured kind at 0.9 of text's throughput, the tool-using one at 150
    tasks/s, that is 10 ms of worker CPU per task."""
    text, api = runs.get("kind-text"), runs.get("kind-api")
    targets = [
        _target(
            f"{kind} kind / text kind, throughput at 1000 ms",
            ">= 0.9",
            _ratio(runs.get(f"kind-{kind}"), text, "tasks_per_second"),
            operator.ge,
            0.9,
            runs.get(f"kind-{kind}"),
            text,
        )
        for kind in ("decision", "data")
    ]
    return [
        *targets,
        _target(
            "api kind throughput at 1000 ms", ">= 150 tasks/s", _figure(api, "tasks_per_second"), operator.ge, 150, api
        ),
        _target("api kind worker CPU per task", "<= 10 ms", _figure(api, "cpu_ms_per_task"), operator.le, 10, api),
    ]


def print_report(
    console: Console, runs: list[RunResult], bulk: BulkSubmitResult | None, ratio: dict, targets: list[Target]
) -> None:
    console.print(results_table(runs))
    if bulk:
        console.print(
            f"bulk submit: {bulk.tasks} tasks in chunks of {bulk.chunk}: {bulk.seconds:.2f} s = "
            f"[bold]{bulk.tasks_per_second:,.0f} tasks/s[/] ({bulk.published} messages published)"
        )
    fair_share = [run for run in runs if run.config == "fair"]
    if fair_share:
        console.print(fair_share_line(fair_share))
    brokers = [run for run in runs if run.config == "brokers"]
    if brokers:
        console.print(brokers_line(brokers))
    mixed = [run for run in runs if run.config == "mixed"]
    if mixed:
        console.print(mixed_line(mixed))
    for run in runs:
        if run.memory_trends:
            console.print(f"{run.name}: {soak_line(run)}")
    console.print("ratios: " + ", ".join(f"{name} = {_fmt(value, '.2f')}" for name, value in ratio.items()))
    for run in runs:
        if run.configured_rpm is not None:
            console.print(
                f"{run.name}: {_fmt(run.achieved_rpm, ',.1f')} requests/min achieved for "
                f"{run.configured_rpm:,.0f} configured; {run.llm_429s} answered 429 by the server"
            )
        for line in ([run.error] if run.error else []) + _disturbance(run):
            console.print(f"[yellow]{run.name}[/]: {line}", highlight=False)
    console.print(targets_table(targets))


def fair_share_line(runs: list[RunResult]) -> str:
    """The fair-share runs side by side: the trickling user's latencies and the broker queue's peak."""
    parts = [
        f"{run.name}: p50/p95/p99 {_latencies(run)} s, broker queue peak {_fmt(run.peak_queue_length, 'd')}"
        for run in runs
    ]
    first = runs[0]
    trickle = f"user B's {first.tasks} tasks at {_fmt(first.offered_rate, '.0f')}/s"
    return f"fair share ({trickle} behind user A's {first.backlog_tasks}): " + "; ".join(parts)


def brokers_line(runs: list[RunResult]) -> str:
    """Each broker's runs side by side: throughput at 1000 ms, and latencies under the light load."""
    parts = [
        f"{run.name}: {_fmt(run.tasks_per_second, ',.1f')} tasks/s"
        if not run.offered_rate
        else f"{run.name} ({run.offered_rate:.0f}/s, LLM {run.latency_ms} ms): p50/p95/p99 {_latencies(run)} s"
        for run in runs
    ]
    return "brokers: " + "; ".join(parts)


def mixed_line(runs: list[RunResult]) -> str:
    """The mixed runs side by side: throughput, CPU per task (the worker's main process's share), followers."""
    parts = []
    for run in runs:
        part = (
            f"{run.name}: {_fmt(run.tasks_per_second, ',.1f')} tasks/s, {_fmt(run.cpu_ms_per_task, '.2f')} ms CPU "
            f"per task ({_fmt(run.root_cpu_ms_per_task, '.2f')} in the worker's main process)"
        )
        if run.followed_tasks:
            part += (
                f", {run.followed_tasks} followed live ({run.followers_streamed} streamed tokens, "
                f"{run.followers_ended} saw the end)"
            )
        parts.append(part)
    return "mixed: " + "; ".join(parts)


def soak_line(run: RunResult) -> str:
    """A soak's RSS (MB) at its steady start, peak, end, growth and slope per 1000 tasks: all its processes
    together, then each."""
    return "; ".join(
        f"{name} {trend.start_mb:.0f} -> peak {trend.peak_mb:.0f} -> {trend.end_mb:.0f} MB "
        f"({trend.growth * 100:+.1f} %, {trend.slope_mb_per_1000_tasks:+.2f} MB/1000 tasks)"
        for name, trend in (run.memory_trends or {}).items()
    )


def _by_process(run: RunResult) -> str:
    return ", ".join(f"{name} {mb:.0f}" for name, mb in run.peak_rss_by_process_mb.items()) + " MB"


def _latencies(run: RunResult) -> str:
    return "/".join(_fmt(value, ".3f") for value in (run.latency_p50_s, run.latency_p95_s, run.latency_p99_s))


def results_table(runs: list[RunResult]) -> Table:
    table = Table(title="Agent Service bench (worker CPU and memory: all its processes together)")
    headers = (
        "run",
        "pool x conc",
        "LLM ms",
        "N",
        "done",
        "tasks/s",
        "p50/p95/p99 s",
        "CPU ms/task",
        "RSS MB sum/max",
        "PSS MB",
        "foreign CPU %",
        "LLM req/task",
        "tool calls/task",
        "queue peak",
        "not once",
        "status",
    )
    for header in headers:
        table.add_column(header, justify="left" if header in ("run", "pool x conc", "status") else "right")
    for run in runs:
        table.add_row(*_row(run))
    return table


def _row(run: RunResult) -> tuple[str, ...]:
    offered = f" @{run.offered_rate:.0f}/s" if run.offered_rate else ""
    offered += f" behind {run.backlog_tasks}" if run.backlog_tasks else ""
    latencies = _latencies(run)
    rss = f"{_fmt(run.peak_rss_mb, '.0f')}/{_fmt(run.peak_process_rss_mb, '.0f')}"
    return (
        run.name + offered,
        f"{run.pool} x {run.concurrency}",
        str(run.latency_ms),
        str(run.tasks),
        str(run.completed),
        _fmt(run.tasks_per_second, ",.1f"),
        latencies,
        _fmt(run.cpu_ms_per_task, ".2f"),
        rss,
        _fmt(run.peak_pss_mb, ".0f"),
        _fmt(run.foreign_cpu_percent, ".0f"),
        _fmt(run.llm_requests_per_task, ".3f"),
        _fmt(run.tool_calls_per_task, ".2f"),
        _fmt(run.peak_queue_length, "d"),
        str(run.not_exactly_once),
        _status(run.status),
    )


def targets_table(targets: list[Target]) -> Table:
    table = Table(title="Targets (reported, not asserted)")
    for header in ("target", "goal", "measured", "result", "note"):
        table.add_column(header)
    for target in targets:
        verdict = {True: "[green]PASS[/]", False: "[red]FAIL[/]", None: "[dim]n/a[/]"}[target.passed]
        table.add_row(target.name, target.goal, _fmt(target.measured, ",.2f"), verdict, target.note)
    return table


def write_json(
    path: Path,
    *,
    runs: list[RunResult],
    bulk: BulkSubmitResult | None,
    ratio: dict,
    targets: list[Target],
    bench: dict,
    http: HttpSubmitResult | None = None,
) -> None:
    document = {
        "machine": machine_info(),
        "bench": bench,
        "runs": [asdict(run) for run in runs],
        "bulk_submit": asdict(bulk) if bulk else None,
        "http_submit": asdict(http) if http else None,
        "ratios": ratio,
        "targets": [asdict(target) for target in targets],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")


def machine_info() -> dict:
    return {
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _disturbance(run: RunResult) -> list[str]:
    if (run.foreign_cpu_percent or 0) < DISTURBED_CPU_PERCENT:
        return []
    return [
        f"other processes on this machine used {run.foreign_cpu_percent:.0f}% CPU during the run: figures are disturbed"
    ]


def _target(
    name: str, goal: str, measured: float | None, compare: Callable, limit: float, *sources: RunResult | None
) -> Target:
    if measured is None:
        return Target(name, goal, None, None, "not measured")
    unfinished = [run.name for run in sources if run is not None and run.status != "ok"]
    if unfinished:
        return Target(name, goal, measured, False, f"run did not finish: {', '.join(unfinished)}")
    return Target(name, goal, measured, bool(compare(measured, limit)))


def _noted(target: Target, note: str) -> Target:
    """`target` with `note` after its own."""
    return replace(target, note="; ".join(text for text in (target.note, note) if text))


def _figure(run: RunResult | None, name: str) -> float | None:
    return getattr(run, name) if run is not None else None


def _ratio_of(run: RunResult | None, top: str, bottom: str) -> float | None:
    numerator, denominator = _figure(run, top), _figure(run, bottom)
    return numerator / denominator if numerator is not None and denominator else None


def _ratio(top: RunResult | None, bottom: RunResult | None, name: str) -> float | None:
    numerator, denominator = _figure(top, name), _figure(bottom, name)
    return numerator / denominator if numerator is not None and denominator else None


def _fmt(value: float | int | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _status(status: str) -> str:
    return {"ok": "[green]ok[/]", "partial": "[yellow]partial[/]"}.get(status, f"[red]{status}[/]")
