"""Per-agent, per-user and per-model overrides of the admission controls' settings, read from the
`limit_overrides` table and kept for a few seconds, so a batch costs no query and a change made with
`python cli.py limits set` reaches every worker within `OverrideCache.ttl_seconds`."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from agent_service.database import session_scope
from agent_service.models import LimitOverride, LimitScope

OverrideKey = tuple[LimitScope, str, str]  # scope, subject, setting name


class OverrideCache:
    """All overrides, read at most once per `ttl_seconds` (the table holds a row per override, not per task)."""

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        *,
        ttl_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._session_factory = session_factory
        self.ttl_seconds = ttl_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._values: dict[OverrideKey, str] = {}
        self._read_at: float | None = None

    def get(self, scope: LimitScope, subject: str, name: str) -> str | None:
        """The override of setting `name` for this agent, user or model, or None."""
        return self._current().get((scope, subject, name))

    def number(self, scope: LimitScope, subject: str, name: str, default: float | None) -> float | None:
        """The override as a number, else `default`. An override that is not a number counts as absent."""
        value = self.get(scope, subject, name)
        try:
            return default if value is None else float(value)
        except ValueError:
            return default

    def _current(self) -> dict[OverrideKey, str]:
        with self._lock:
            now = self._clock()
            if self._read_at is None or now - self._read_at >= self.ttl_seconds:
                with session_scope(self._session_factory) as session:
                    rows = session.execute(
                        select(LimitOverride.scope, LimitOverride.subject, LimitOverride.name, LimitOverride.value)
                    )
                    self._values = {(scope, subject, name): value for scope, subject, name, value in rows}
                self._read_at = now
            return self._values


def set_override(session: Session, scope: LimitScope, subject: str, name: str, value: str | None) -> None:
    """Set (or, with None, remove) one override."""
    existing = session.scalar(
        select(LimitOverride).where(
            LimitOverride.scope == scope, LimitOverride.subject == subject, LimitOverride.name == name
        )
    )
    if value is None:
        if existing is not None:
            session.delete(existing)
        return
    if existing is None:
        session.add(LimitOverride(scope=scope, subject=subject, name=name, value=value))
    else:
        existing.value = value
