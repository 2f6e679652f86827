"""What every command prints through: one console that reads no text as markup, an error line, a field line."""

from __future__ import annotations

from rich.console import Console
from rich.text import Text

# Titles, descriptions, results, errors and ids are user data: nothing printed is read as markup or emoji
# codes. Styling is explicit (`Text`, `style=`), never spelled inside a string.
console = Console(markup=False, emoji=False, highlight=False)


def print_error(label: str, message: str) -> None:
    console.print(Text.assemble((f"{label}:", "bold red"), " ", message), soft_wrap=True)


def print_field(name: str, value: str) -> None:
    # A value of several lines (a JSON result) keeps to its column.
    console.print(Text.assemble((f"{name:>17}", "bold"), " ", value.replace("\n", "\n" + " " * 18)))
