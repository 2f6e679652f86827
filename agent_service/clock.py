"""The service's clock: every time it stores, compares or reports is UTC and timezone-aware."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    """Now, in UTC."""
    return datetime.now(UTC)


def aware(moment: datetime) -> datetime:
    """`moment` with its zone: UTC when it has none."""
    # SQLite hands timestamps back without a zone; they were written in UTC.
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
