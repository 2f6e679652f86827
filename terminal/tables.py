"""Tasks as rich tables for the terminal. Stored text (titles, results, errors) is user data: it goes
in as `rich.text.Text`, never as markup."""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console
from rich.table import Table
from rich.text import Text

from models import Task, TaskStatus


def task_table(tasks: Sequence[Task], *, console: Console, title: str = "Tasks", full_ids: bool = True) -> Table:
    """A table of tasks, fitted to `console`'s width: status, attempts, tokens, timings and the start of
    the result or error."""
    table = Table(title=title)
    # Fixed widths, and the result gets only what is left: rich otherwise squeezes the short columns
    # to nothing on a narrow terminal.
    widths = {"id": 36 if full_ids else 8, "status": 9, "tries": 5, "tokens": 6, "ms": 7}
    room = console.width - sum(widths.values()) - 3 * (len(widths) + 2) - 1
    for optional in ("tokens", "tries"):  # a narrow terminal: drop what matters least, not squeeze all
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
            "status": task.status.value,
            "tries": str(task.attempts),
            "tokens": str(task.total_tokens or ""),
            "ms": duration,
            "title": task.title,
            "result / error": " ".join((outcome or "").split()),
        }
        table.add_row(*(Text(cells[column]) for column in widths))
    return table
