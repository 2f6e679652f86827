"""User-given JSON Schemas (a data agent's results, a tool's arguments): checked and applied with jsonschema,
never fetching anything. A `$ref` that points outside its schema is refused when the schema is given, and
validation runs against a registry that resolves no URI, so even a schema stored before that check cannot
make the service fetch a URL."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from referencing import Registry

NOTHING_REMOTE: Registry[Any] = Registry()  # resolves no URI: nothing outside the schema is ever fetched
REFERENCE_KEYWORDS = ("$ref", "$dynamicRef")
# Keywords whose values are data, not schemas: a "$ref" inside them is not a reference.
DATA_KEYWORDS = frozenset({"const", "enum", "default", "examples"})


def check_local_references(schema: Any) -> None:
    """Raises: ValueError naming the first reference that points outside `schema` (anything but `#...`)."""
    for path, reference in _references(schema, "$"):
        if not reference.startswith("#"):
            raise ValueError(
                f"{path}: {reference!r} is not a reference within the schema (#/...); remote schemas are never fetched"
            )


def _references(node: Any, path: str) -> Iterator[tuple[str, str]]:
    """Every reference in a schema, with where it is, leaving out data values (`const`, `enum`, ...)."""
    if isinstance(node, list):
        for index, item in enumerate(node):
            yield from _references(item, f"{path}[{index}]")
    elif isinstance(node, dict):
        for key, value in node.items():
            if key in REFERENCE_KEYWORDS and isinstance(value, str):
                yield f"{path}.{key}", value
            elif key not in DATA_KEYWORDS:
                yield from _references(value, f"{path}.{key}")
