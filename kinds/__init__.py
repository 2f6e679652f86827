"""Task kinds, by name: each one a file of this package (see `kinds.base`)."""

from __future__ import annotations

from collections.abc import Mapping

from errors import PermanentError
from kinds.base import TaskKind
from kinds.text import TextKind

KINDS: dict[str, TaskKind] = {kind.name: kind for kind in (TextKind(),)}


def kind_named(name: str, kinds: Mapping[str, TaskKind] = KINDS) -> TaskKind:
    """The kind called `name` among `kinds`. Raises: PermanentError for a kind that is not there."""
    try:
        return kinds[name]
    except KeyError:
        raise PermanentError(f"unknown task kind {name!r}; known: {', '.join(sorted(kinds))}") from None
