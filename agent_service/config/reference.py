"""The settings reference, docs/reference/settings.md, written from the `Settings` class: one section per group,
one row per setting (its environment variable, type, default and description).

After changing a setting: `python -m agent_service.config.reference > docs/reference/settings.md`
(tests/unit/test_settings_reference.py fails while the committed page differs).
"""

from __future__ import annotations

import inspect
import re
import types
from typing import Literal, get_args, get_origin

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined
from pydantic_settings import BaseSettings

from agent_service.config.database import LOCAL_DATA_DIR
from agent_service.config.settings import Settings

COMMAND = "python -m agent_service.config.reference > docs/reference/settings.md"
# The constraints a field's metadata may carry (annotated_types' Ge, Gt, ...), by attribute, as the page writes them.
_BOUNDS = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<", "min_length": "length ≥"}


def groups() -> tuple[type[BaseModel], ...]:
    """The groups `Settings` composes, in the order it lists them."""
    return tuple(base for base in Settings.__bases__ if base is not BaseSettings)


def render() -> str:
    """The whole page, in Markdown."""
    sections = [_section(group) for group in groups()]
    contents = "\n".join(f"- [{_title(group)}](#{_anchor(_title(group))})" for group in groups())
    # The class docstring's first line is for the code's readers; the rest says what is checked across groups.
    intro = " ".join((inspect.getdoc(Settings) or "").partition("\n\n")[2].split())
    return (
        "# Settings reference\n\n"
        f"<!-- Generated from agent_service/config/ by `{COMMAND}`: edit the settings, not this page. -->\n\n"
        "Every setting is an environment variable, also read from `.env` in the directory a command runs from "
        "(`<cwd>` below); names are case-insensitive, structured values are JSON. In a container, a file "
        "`/run/secrets/<name in lower case>` (a Docker or Compose secret) gives a setting too, below the "
        "environment and `.env`.\n\n"
        f"{intro}\n\n{contents}\n\n" + "\n".join(sections)
    )


def _section(group: type[BaseModel]) -> str:
    path = group.__module__.replace(".", "/") + ".py"
    rows = "".join(f"| {_row(name, field)} |\n" for name, field in group.model_fields.items())
    return (
        f"## {_title(group)}\n\n{_summary(group)} (`{path}`)\n\n"
        "| Variable | Type | Default | Description |\n|---|---|---|---|\n" + rows
    )


def _row(name: str, field: FieldInfo) -> str:
    cells = (f"`{name.upper()}`", _type(field), _default(field), field.description or "")
    return " | ".join(cell.replace("|", "\\|") for cell in cells)


def _title(group: type[BaseModel]) -> str:
    """A group's docstring is "Title: what it covers."."""
    title, colon, _ = (inspect.getdoc(group) or "").partition(":")
    if not colon:
        raise ValueError(f'{group.__name__} needs a docstring "Title: what it covers."')
    return title


def _summary(group: type[BaseModel]) -> str:
    summary = " ".join((inspect.getdoc(group) or "").partition(":")[2].split()).rstrip(".")
    return summary[:1].upper() + summary[1:]


def _anchor(title: str) -> str:
    """The id GitHub gives a heading."""
    return re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")


def _type(field: FieldInfo) -> str:
    return ", ".join([_annotation(field.annotation), *map(_bound, field.metadata)])


def _bound(constraint: object) -> str:
    """Raises: ValueError for a constraint the page cannot write yet (rather than leave it out)."""
    for attribute, symbol in _BOUNDS.items():
        if hasattr(constraint, attribute):
            return f"{symbol} {_number(getattr(constraint, attribute))}"
    raise ValueError(f"the settings reference does not know how to write {constraint!r}")


def _annotation(annotation: object) -> str:
    origin, arguments = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return "one of " + ", ".join(f"`{value}`" for value in arguments)
    if origin is types.UnionType:
        return " or ".join(_annotation(argument) for argument in arguments if argument is not type(None))
    if origin is dict:
        return "JSON object"
    if annotation is SecretStr:
        return "secret string"
    return getattr(annotation, "__name__", str(annotation))


def _default(field: FieldInfo) -> str:
    value = field.get_default(call_default_factory=True)
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if value is PydanticUndefined:
        return "required"
    if value is None or value == "":
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float):
        return f"`{_number(value)}`"
    return f"`{str(value).replace(str(LOCAL_DATA_DIR), '<cwd>/.local')}`"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


if __name__ == "__main__":
    print(render(), end="")
