"""Tasks as rich tables for the terminal. Stored text (titles, results, errors) is user data: it goes
in as `rich.text.Text`, never as markup."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from agent_service.models import Task, TaskStatus
from agent_service.store.stats import TaskStats


def task_table(tasks: Sequence[Task], *, console: Console, title: str = "Tasks", full_ids: bool = True) -> Table:
    """A table of tasks, fitted to `console`'s width: status, attempts, tokens, timings and the start of
    the result or error."""
    table = Table(title=title)
    # Fixed widths, and the result gets only what is left: rich otherwise squeezes the short columns
    # to nothing on a narrow terminal.
    widths = {"id": 36 if full_ids else 8, "kind": 8, "status": 9, "tries": 5, "tokens": 6, "ms": 7}
    room = console.width - sum(widths.values()) - 3 * (len(widths) + 2) - 1
    for optional in ("tokens", "tries", "kind"):  # a narrow terminal: drop what matters least, not squeeze all
        if room >= 24:
            break
        room += widths.pop(optional) + 3
    widths.update({"title": max(8, room // 3), "result / error": max(16, room - room // 3)})
    for column, width in widths.items():
        table.add_column(column, width=width, no_wrap=True, overflow="ellipsis")
    for task in tasks:
        outcome = task.result if task.status == TaskStatus.COMPLETED else task.error
        duration = str(task.duration_ms) if task.duration_ms is not None else ""
        task_id = str(task.id) if full_ids else str(task.id)[:8]
        cells = {
            "id": task_id,
            "kind": task.kind or task.agent.kind,
            "status": task.status.value,
            "tries": str(task.attempts),
            "tokens": str(task.total_tokens or ""),
            "ms": duration,
            "title": task.title,
            "result / error": " ".join((outcome or "").split()),
        }
        table.add_row(*(Text(cells[column]) for column in widths))
    return table


def stats_table(figures: Sequence[TaskStats], *, by: str, since: timedelta) -> Table:
    """`python cli.py stats`: one row per group, the most costly first; "+N?" counts the tasks left
    out of the cost since a call of theirs had no price."""
    table = Table(
        title=f"Tasks finished in the last {_span(since)}, by {by}",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    rows = [
        (
            str(group.tasks),
            "-" if group.success_rate is None else f"{group.success_rate:.0%}",
            _ms(group.avg_duration_ms),
            _ms(group.p95_duration_ms),
            str(group.prompt_tokens),
            str(group.cached_tokens),
            str(group.completion_tokens),
            f"{group.cost_usd:.6f}" + (f" +{group.unpriced_tasks}?" if group.unpriced_tasks else ""),
        )
        for group in figures
    ]
    # Figures are never cut: each numeric column is as wide as its widest cell, and the group's name folds.
    table.add_column(by, overflow="fold", min_width=8)
    for at, column in enumerate(("tasks", "ok", "avg ms", "p95 ms", "prompt", "cached", "output", "USD")):
        width = max([len(column), *(len(row[at]) for row in rows)])
        table.add_column(column, justify="right", no_wrap=True, min_width=width)
    for group, row in zip(figures, rows, strict=True):
        table.add_row(Text(group.group), *row)
    return table


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _span(since: timedelta) -> str:
    seconds = since.total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"
