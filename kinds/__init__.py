"""Task kinds, by name: each one a file of this package (see `kinds.base`)."""

from __future__ import annotations

from collections.abc import Mapping

from errors import PermanentError
from kinds.api import ApiKind
from kinds.base import KindName, TaskKind
from kinds.data import DataKind
from kinds.decision import DecisionKind
from kinds.text import TextKind

KINDS: dict[str, TaskKind] = {KindName(kind.name): kind for kind in (TextKind(), DecisionKind(), ApiKind(), DataKind())}


def kind_named(name: str, kinds: Mapping[str, TaskKind] = KINDS) -> TaskKind:
    """The kind called `name` among `kinds`. Raises: PermanentError for a kind that is not there."""
    try:
        return kinds[name]
    except KeyError:
        raise PermanentError(f"unknown task kind {name!r}; known: {', '.join(sorted(kinds))}") from None
