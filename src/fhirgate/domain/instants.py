"""Instants as stored: whatever form a driver hands back, one aware UTC value and one canonical
text (what MACs over stored rows cover)."""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["as_datetime", "instant_text"]


def as_datetime(value: datetime | str) -> datetime:
    """A stored instant, aware and in UTC (SQLite hands back SQLAlchemy's text form)."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def instant_text(value: datetime | str) -> str:
    """A stored instant as canonical text (ISO 8601, aware, UTC), whatever form the driver
    gave it: what MACs over stored rows cover."""
    return as_datetime(value).isoformat()
