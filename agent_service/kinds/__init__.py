"""Task kinds, by name: each one a file of this package (see `kinds.base`), registered here."""

from __future__ import annotations

from collections.abc import Mapping

from agent_service.errors import PermanentError
from agent_service.kinds.api import ApiKind
from agent_service.kinds.base import TaskKind
from agent_service.kinds.data import DataKind
from agent_service.kinds.decision import DecisionKind
from agent_service.kinds.text import TextKind

KINDS: dict[str, TaskKind] = {}


def register(kind: TaskKind) -> TaskKind:
    """Make `kind` known by its name, to submission and to the worker alike (a kind registered again under the
    same name replaces the first). Returns the kind."""
    KINDS[str(kind.name)] = kind
    return kind


def kind_named(name: str, kinds: Mapping[str, TaskKind] = KINDS) -> TaskKind:
    """The kind called `name` among `kinds`. Raises: PermanentError for a kind that is not there."""
    try:
        return kinds[name]
    except KeyError:
        raise PermanentError(f"unknown task kind {name!r}; known: {', '.join(sorted(kinds))}") from None


for _kind in (TextKind(), DecisionKind(), ApiKind(), DataKind()):
    register(_kind)
