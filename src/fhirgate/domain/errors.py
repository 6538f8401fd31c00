"""Errors of the domain that every layer raises and every surface renders."""

from __future__ import annotations

__all__ = ["Conflict", "NotFound"]


class NotFound(LookupError):
    """The named organization, environment, client or user does not exist."""


class Conflict(ValueError):
    """The write would break a uniqueness rule (a taken slug, for example)."""
