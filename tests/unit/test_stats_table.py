"""`python cli.py stats` prints every figure whole, however wide the others are, on an 80-column terminal."""

from __future__ import annotations

from datetime import timedelta

from rich.console import Console

from agent_service.store.stats import TaskStats
from agent_service.terminal.tables import stats_table


def test_figures_are_never_cut_on_an_80_column_terminal_the_group_name_folds_instead():
    # Given a group with wide figures (slow tasks, many tokens) and a long name
    wide = TaskStats(
        group="a-user-with-a-rather-long-identifier",
        tasks=12345,
        completed=12000,
        failed=345,
        avg_duration_ms=123456.0,
        p95_duration_ms=987654.0,
        prompt_tokens=12345678,
        completion_tokens=2345678,
        cached_tokens=345678,
        cost_usd=1234.567891,
        unpriced_tasks=0,
    )
    console = Console(width=80, record=True)
    # When the table is printed
    console.print(stats_table([wide], by="user", since=timedelta(hours=24)))
    text = console.export_text()
    # Then every figure is there in full
    for figure in ("12345", "123456", "987654", "12345678", "345678", "2345678", "1234.567891"):
        assert figure in text, (figure, text)
    assert "…" not in text
