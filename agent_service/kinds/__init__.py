"""Task kinds, by name: each one a file of this package (see `kinds.base`)."""

from __future__ import annotations

from collections.abc import Mapping

from agent_service.errors import PermanentError
from agent_service.kinds.api import ApiKind
from agent_service.kinds.base import KindName, TaskKind
from agent_service.kinds.data import DataKind
from agent_service.kinds.decision import DecisionKind
from agent_service.kinds.text import TextKind

KINDS: dict[str, TaskKind] = {KindName(kind.name): kind for kind in (TextKind(), DecisionKind(), ApiKind(), DataKind())}


def kind_named(name: str, kinds: Mapping[str, TaskKind] = KINDS) -> TaskKind:
    """The kind called `name` among `kinds`. Raises: PermanentError for a kind that is not there."""
    try:
        return kinds[name]
    except KeyError:
        raise PermanentError(f"unknown task kind {name!r}; known: {', '.join(sorted(kinds))}") from None
