"""What every command prints through: one console that reads no text as markup, an error line, a field line, and
records for scripts (`--json`, or plain rows when standard output is not a terminal)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from rich.console import Console, RenderableType
from rich.text import Text

# Titles, descriptions, results, errors and ids are user data: nothing printed is read as markup or emoji
# codes. Styling is explicit (`Text`, `style=`), never spelled inside a string.
console = Console(markup=False, emoji=False, highlight=False)


def print_error(label: str, message: str) -> None:
    console.print(Text.assemble((f"{label}:", "bold red"), " ", message), soft_wrap=True)


def print_field(name: str, value: str) -> None:
    # A value of several lines (a JSON result) keeps to its column; piped, a long one stays on its line, uncut.
    text = Text.assemble((f"{name:>17}", "bold"), " ", value.replace("\n", "\n" + " " * 18))
    console.print(text, soft_wrap=not console.is_terminal)


def print_records(
    records: Sequence[Mapping[str, Any]],
    *,
    fields: Sequence[str],
    as_json: bool,
    table: Callable[[], RenderableType],
) -> None:
    """Records for whoever reads them: with `as_json`, one JSON object per line; when standard output is not a
    terminal, a header of `fields` and one tab-separated row per record, nothing cut (a tab or a line break inside
    a value becomes a space; null is empty); on a terminal, `table()`."""
    if as_json:
        for record in records:
            print_json(record)
        return
    if console.is_terminal:
        console.print(table())
        return
    for row in ([*fields], *([_plain(record.get(name)) for name in fields] for record in records)):
        _write("\t".join(row))


def print_json(record: Mapping[str, Any]) -> None:
    """One JSON object on a line of its own."""
    _write(json.dumps(record, ensure_ascii=False))


def _write(line: str) -> None:
    # Past rich, which would expand the tabs into spaces.
    print(line, file=console.file)


def _plain(value: Any) -> str:
    if value is None:
        return ""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return " ".join(text.split()) if ("\t" in text or "\n" in text or "\r" in text) else text
