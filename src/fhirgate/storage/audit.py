"""The audit log: who did what, when — FHIR interactions, token issues, authentication
failures, secret rotations, client and user changes. Rows hold identifiers only: never a
secret, token, assertion or resource content; long caller-supplied values are cut.

FHIR interactions are written by :meth:`AuditLog.fhir_event` before the response leaves: if the
row cannot be written, the request fails (no health data without its audit row). The rows of
one event-loop turn share one transaction (:class:`~fhirgate.storage.direct.GroupInsert`; on
SQLite inline on its own connection).

Every row carries its own MAC from the moment it is written, and a background job seals the
rows into a keyed chain and checkpoints its head outside the database
(:mod:`fhirgate.storage.audit_chain`, ``fhirgate audit verify``). Every resource id a FHIR
interaction disclosed or changed is recorded in ``audit_event_resources``, written with its
event in one transaction, whatever their number; ``resource_ids`` keeps the first 20,000
characters of them for display.

A write and its audit row commit together (:meth:`AuditLog.fhir_event` with the write's
connection): a change whose row cannot be stored is rolled back.

Two ways in. :meth:`AuditLog.record` writes at once: for administrative changes, which must not
report success unless their event is stored. :meth:`AuditLog.enqueue` is for events on a hot
path that an attacker can provoke at will (failed authentications): they are queued in memory
and written in batches by :meth:`AuditLog.flush`, which the server runs every second and at
shutdown, so a flood of failures costs one multi-row insert a second instead of a write lock per
request. The queue is bounded; past it, events are dropped and the loss is logged as an error.

A third for what anyone can send without a credential (requests refused by the resource guard):
:meth:`AuditLog.tally` counts them per (event, source address, minute) in memory, and
:meth:`AuditLog.flush` writes one row per such minute once it has ended, with the count by
outcome (``count=400 401=60 429=340 minute=2026-12-03T14:05:00Z``): 400 refusals cost one row,
not 400. At shutdown the current minutes are written too; a crash loses at most the current
minute's counts (each replica writes its own rows). The tally is bounded; addresses past the
bound are counted under ``*``, so no refusal goes uncounted.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from fhirgate.storage.audit_chain import (
    MAC_FIELDS,
    AuditChain,
    AuditKeys,
    Checkpoint,
    CheckpointFile,
    Verification,
    ids_digest,
    row_mac,
)
from fhirgate.storage.direct import GroupInsert, Statements
from fhirgate.storage.models import AuditEventRow
from fhirgate.storage.repos import now

__all__ = ["AuditEvent", "AuditKeys", "AuditLog", "Checkpoint", "CheckpointFile", "Verification"]

_FHIR_COLUMNS = (*MAC_FIELDS, "row_mac")
_EVENT_INSERT = (
    f"INSERT INTO audit_events ({', '.join(_FHIR_COLUMNS)}) "  # noqa: S608 (constant text)
    f"VALUES ({', '.join(':' + name for name in _FHIR_COLUMNS)})"
)
_RESOURCES = "INSERT INTO audit_event_resources (event_id, position, resource_id) "
#: The statements that store one FHIR event and its resource ids, per backend: PostgreSQL in
#: one statement (the ids as an array), SQLite in two on one connection (a JSON array).
_FHIR_INSERTS = {
    "postgresql": (
        f"WITH event AS ({_EVENT_INSERT} RETURNING id) {_RESOURCES}"  # noqa: S608 (constant)
        "SELECT event.id, ids.position - 1, ids.resource_id FROM event, "
        "unnest(CAST(:ids AS text[])) WITH ORDINALITY AS ids(resource_id, position)",
    ),
    "sqlite": (
        _EVENT_INSERT,
        f"{_RESOURCES}SELECT last_insert_rowid(), key, value FROM json_each(:ids)",  # noqa: S608
    ),
}


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
    """At most ``length`` characters, storable by every backend: no NUL (PostgreSQL text
    refuses it), no lone surrogate (not UTF-8) — whatever a caller put in a path."""
    if value is None:
        return None
    value = value[:length]
    if value.isascii() and "\x00" not in value:  # nearly always: nothing to replace
        return value
    return value.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")


def _row(
    event: str, client_id: str | None, source: str | None, actor: str | None, detail: str
) -> dict[str, Any]:
    return {
        "occurred_at": now(),
        "event": event,
        "client_id": _cut(client_id, 64),
        "source": _cut(source, 64),
        "actor": _cut(actor, 200),
        "detail": _cut(detail, 1000) or "",
        "user_id": None,
        "resource_type": None,
        "resource_ids": "",
        "outcome": None,
        "request_id": None,
        "organization_id": None,
    }


class AuditLog:
    """Appends audit events (each with its MAC), seals them into the chain, reads and
    verifies them. ``keys`` may be omitted only by readers."""

    MAX_QUEUED = 10_000
    #: (event, source, minute) tallies held at once; further sources are tallied under ``*``.
    MAX_TALLIED = 10_000

    def __init__(
        self,
        engine: AsyncEngine,
        keys: AuditKeys | None = None,
        statements: Statements | None = None,
        checkpoints: CheckpointFile | None = None,
    ) -> None:
        self._engine = engine
        self._keys = keys
        self._statements = statements
        self.chain = None if keys is None else AuditChain(engine, keys, checkpoints)
        self._fhir_sqls: tuple[str, ...] | None = None
        self._fhir_rows: GroupInsert | None = None
        self._issue_rows: GroupInsert | None = None
        if statements is not None:
            self._fhir_sqls = _FHIR_INSERTS[statements.dialect]
            self._fhir_rows = GroupInsert(statements, self._fhir_sqls)
            self._issue_rows = GroupInsert(statements, _EVENT_INSERT)
        self._queue: deque[dict[str, Any]] = deque()
        self._dropped = 0
        self._tallies: dict[tuple[str, str, int], Counter[str]] = {}
        self._clock: Callable[[], float] = time.time  # epoch seconds: the tallies' minutes

    def _signed(self, row: dict[str, Any], ids: Sequence[str] = ()) -> dict[str, Any]:
        """``row`` with its MAC (over its fields and ``ids``)."""
        if self._keys is None:
            raise RuntimeError("the audit log was opened without its keys: it cannot write")
        row["row_mac"] = row_mac(self._keys.row, row, ids_digest(ids))
        return row

    async def record(
        self,
        event: str,
        *,
        client_id: str | None = None,
        source: str | None = None,
        actor: str | None = None,
        detail: str = "",
        organization_id: str | None = None,
    ) -> None:
        """Write one event now (``organization_id``: the organization whose audit page shows
        it)."""
        row = _row(event, client_id, source, actor, detail)
        row["organization_id"] = organization_id
        async with self._engine.begin() as conn:
            await conn.execute(insert(AuditEventRow), [self._signed(row)])

    async def issued(self, event: str, *, client_id: str, source: str, detail: str) -> None:
        """Write the event of a token issued, before the token leaves (the caller answers only
        after; if the row cannot be stored the token is never sent): with the rows of the
        same event-loop turn, in one transaction (group commit)."""
        if self._issue_rows is None:
            raise RuntimeError("the audit log was opened without its statements")
        await self._issue_rows.insert(self._signed(_row(event, client_id, source, None, detail)))

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
        self._queue.append(self._signed(_row(event, client_id, source, None, detail)))

    def tally(self, event: str, source: str, outcome: int) -> None:
        """Count one ``event`` from ``source`` with ``outcome`` (an HTTP status) in this minute,
        for the row :meth:`flush` writes once the minute has ended."""
        minute = int(self._clock() // 60)
        key = (event, source, minute)
        counts = self._tallies.get(key)
        if counts is None:
            if len(self._tallies) >= self.MAX_TALLIED:
                key = (event, "*", minute)
            counts = self._tallies.setdefault(key, Counter())
        counts[str(outcome)] += 1

    def _close_tallies(self, final: bool) -> None:
        """Queue one row per tallied minute that has ended (every one when ``final``)."""
        current = int(self._clock() // 60)
        for key in [key for key in self._tallies if final or key[2] < current]:
            counts = self._tallies.pop(key)
            event, source, minute = key
            start = datetime.fromtimestamp(minute * 60, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            by_outcome = " ".join(f"{outcome}={n}" for outcome, n in sorted(counts.items()))
            detail = f"count={counts.total()} {by_outcome} minute={start}"
            self.enqueue(event, source=source, detail=detail)

    async def flush(self, *, final: bool = False) -> int:
        """Write the queued events, and the tallies of the minutes that have ended (``final``:
        all of them, at shutdown), in one statement; returns how many rows."""
        self._close_tallies(final)
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

    async def recent(
        self, client_id: str | None = None, limit: int = 100, organization_id: str | None = None
    ) -> Sequence[AuditEvent]:
        """The latest events, newest first, optionally of one client or one organization."""
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
        if organization_id is not None:
            stmt = stmt.where(AuditEventRow.organization_id == organization_id)
        async with self._engine.connect() as conn:
            return [AuditEvent(*row) for row in await conn.execute(stmt.limit(limit))]

    async def fhir_event(
        self,
        action: str,
        *,
        client_id: str | None,
        user_id: int | None,
        resource_type: str | None,
        resource_ids: Sequence[str],
        outcome: int,
        source: str | None,
        request_id: str,
        conn: AsyncConnection | None = None,
    ) -> None:
        """Write the audit row of one FHIR interaction and every resource id it names now (the
        caller answers only after): in ``conn``'s transaction when given (a write: they commit
        together), else with the rows of the same event-loop turn, in one transaction (group
        commit)."""
        if self._statements is None or self._fhir_rows is None or self._fhir_sqls is None:
            raise RuntimeError("the audit log was opened without its statements")
        row = _row(f"fhir.{action}", client_id, source, None, "")
        ids = [_cut(resource_id, 200) or "" for resource_id in resource_ids]
        row.update(
            user_id=user_id,
            resource_type=_cut(resource_type, 64),
            resource_ids=_cut(",".join(ids), 20_000),
            outcome=str(outcome),
            request_id=request_id,
        )
        self._signed(row, ids)
        row["ids"] = ids if self._statements.dialect == "postgresql" else json.dumps(ids)
        if conn is None:
            await self._fhir_rows.insert(row)
            return
        for sql in self._fhir_sqls:
            await self._statements.execute(sql, row, conn)

    async def aclose(self) -> None:
        """Wait for the FHIR and token rows being written."""
        for rows in (self._fhir_rows, self._issue_rows):
            if rows is not None:
                await rows.aclose()

    async def seal(self) -> int:
        """Chain the rows written since the last seal (:meth:`AuditChain.seal`)."""
        return 0 if self.chain is None else await self.chain.seal()

    async def verify(self, checkpoints: Sequence[Checkpoint] = ()) -> Verification:
        """Check the whole log (:meth:`AuditChain.verify`); seals nothing."""
        if self.chain is None:
            raise RuntimeError("the audit log was opened without its keys: it cannot verify")
        return await self.chain.verify(checkpoints)
