"""The audit log: who did what, when — authentication failures, secret rotations, client
changes. Rows never hold a secret, token or assertion; long caller-supplied values are cut.

Two ways in. :meth:`AuditLog.record` writes at once: for administrative changes, which must not
report success unless their event is stored. :meth:`AuditLog.enqueue` is for events on a hot
path that an attacker can provoke at will (failed authentications): they are queued in memory
and written in batches by :meth:`AuditLog.flush`, which the server runs every second and at
shutdown, so a flood of failures costs one multi-row insert a second instead of a write lock per
request. The queue is bounded; past it, events are dropped and the loss is logged as an error.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from fhirgate.storage.models import AuditEventRow
from fhirgate.storage.repos import now

__all__ = ["AuditEvent", "AuditLog"]

log = logging.getLogger("fhirgate.audit")


@dataclass(frozen=True, slots=True)
class AuditEvent:
    occurred_at: datetime
    event: str
    client_id: str | None
    source: str | None
    actor: str | None
    detail: str


def _cut(value: str | None, length: int) -> str | None:
    return None if value is None else value[:length]


def _row(
    event: str, client_id: str | None, source: str | None, actor: str | None, detail: str
) -> dict[str, Any]:
    return {
        "occurred_at": now(),
        "event": event,
        "client_id": _cut(client_id, 64),
        "source": _cut(source, 64),
        "actor": _cut(actor, 200),
        "detail": detail[:1000],
    }


class AuditLog:
    """Appends audit events and reads them back."""

    MAX_QUEUED = 10_000

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._queue: deque[dict[str, Any]] = deque()
        self._dropped = 0

    async def record(
        self,
        event: str,
        *,
        client_id: str | None = None,
        source: str | None = None,
        actor: str | None = None,
        detail: str = "",
    ) -> None:
        """Write one event now."""
        async with self._engine.begin() as conn:
            await conn.execute(
                insert(AuditEventRow), [_row(event, client_id, source, actor, detail)]
            )

    def enqueue(
        self,
        event: str,
        *,
        client_id: str | None = None,
        source: str | None = None,
        detail: str = "",
    ) -> None:
        """Queue one event for the next :meth:`flush`."""
        if len(self._queue) >= self.MAX_QUEUED:
            self._dropped += 1
            return
        self._queue.append(_row(event, client_id, source, None, detail))

    async def flush(self) -> int:
        """Write the queued events in one statement; returns how many."""
        if self._dropped:
            log.error("audit queue full: %d events dropped", self._dropped)
            self._dropped = 0
        rows = [self._queue.popleft() for _ in range(len(self._queue))]
        if not rows:
            return 0
        try:
            async with self._engine.begin() as conn:
                await conn.execute(insert(AuditEventRow), rows)
        except Exception:
            self._queue.extendleft(reversed(rows[: self.MAX_QUEUED - len(self._queue)]))
            raise
        return len(rows)

    async def recent(self, client_id: str | None = None, limit: int = 100) -> Sequence[AuditEvent]:
        """The latest events, newest first, optionally of one client."""
        stmt = select(
            AuditEventRow.occurred_at,
            AuditEventRow.event,
            AuditEventRow.client_id,
            AuditEventRow.source,
            AuditEventRow.actor,
            AuditEventRow.detail,
        ).order_by(AuditEventRow.id.desc())
        if client_id is not None:
            stmt = stmt.where(AuditEventRow.client_id == client_id)
        async with self._engine.connect() as conn:
            return [AuditEvent(*row) for row in await conn.execute(stmt.limit(limit))]
