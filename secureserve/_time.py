"""Time, injectable: every check that depends on "now" takes an optional ``now``."""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["utc"]


def utc(now: datetime | None = None) -> datetime:
    """``now`` as an aware UTC datetime (naive values are taken as UTC); the clock if None."""
    if now is None:
        return datetime.now(UTC)
    if now.tzinfo is None:
        return now.replace(tzinfo=UTC)
    return now.astimezone(UTC)
