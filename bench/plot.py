"""`results/bench.png`: throughput per configuration and LLM latency, and CPU per task, both log scale."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import FuncFormatter

from bench.scenarios import RunResult

CONFIG_COLOURS = {"baseline": "#c0504d", "ours": "#4f81bd", "floor": "#9bbb59", "kinds": "#4bacc6"}


def plot_results(runs: list[RunResult], path: Path) -> None:
    measured = [run for run in runs if run.tasks_per_second]
    # Horizontal bars, a row per run: thirty runs' names stay readable.
    figure, (throughput, cpu) = plt.subplots(1, 2, figsize=(14, 1.5 + 0.32 * len(measured)), sharey=True)
    _bars(throughput, measured, "tasks_per_second", "tasks/s (first enqueue to last completion)", "{:,.1f}")
    _bars(
        cpu,
        [run for run in measured if run.cpu_ms_per_task],
        "cpu_ms_per_task",
        "worker CPU ms per task (all processes)",
        "{:.2f}",
    )
    throughput.invert_yaxis()  # the runs top to bottom, in the order they ran (the axis is shared)
    figure.suptitle("Agent Service bench: baseline design vs ours vs bare Celery")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _bars(axis, runs: list[RunResult], field: str, title: str, label: str) -> None:
    values = [getattr(run, field) for run in runs]
    colours = [CONFIG_COLOURS.get(run.config, "#8064a2") for run in runs]
    bars = axis.barh([_label(run) for run in runs], values, color=colours)
    axis.bar_label(bars, labels=[label.format(value) for value in values], fontsize=8, padding=2)
    axis.set_xscale("log")
    axis.xaxis.set_major_formatter(FuncFormatter(lambda value, _position: f"{value:g}"))
    # Label the 2s and 5s between decades: a short range (CPU ms) would otherwise show no numbers at all.
    axis.xaxis.set_minor_formatter(
        FuncFormatter(lambda value, _position: f"{value:g}" if f"{value:g}"[0] in "25" else "")
    )
    axis.set_title(title)
    axis.tick_params(axis="y", labelsize=8)
    axis.tick_params(axis="x", which="both", labelsize=7)


def _label(run: RunResult) -> str:
    load = f"{run.offered_rate:.0f}/s offered" if run.offered_rate else f"N={run.tasks}"
    return f"{run.name} ({run.pool}x{run.concurrency}, {load})"
