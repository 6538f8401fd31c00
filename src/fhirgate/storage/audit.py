"""The audit log: who did what, when — FHIR interactions, token issues, authentication
failures, secret rotations, client and user changes. Rows hold identifiers only: never a
secret, token, assertion or resource content; long caller-supplied values are cut.

FHIR interactions are written by :meth:`AuditLog.fhir_event` before the response leaves: if the
row cannot be written, the request fails (no health data without its audit row). The rows of
one event-loop turn share one transaction (:class:`~fhirgate.storage.direct.GroupInsert`; on
SQLite inline on its own connection).

Tamper evidence (ONC §170.315(d)(2)): :meth:`AuditLog.seal` (a background job, every second)
numbers the rows not sealed yet (``chain_seq``) and chains them: ``chain_hash`` = HMAC-SHA256
under a key derived from the server secret, over the previous hash and the row's fields. An
edited, deleted or reordered sealed row breaks the chain, which :meth:`AuditLog.verify`
(``fhirgate audit verify``) reports; recomputing the chain needs the server secret. The head of
the chain (``audit_chain``) is locked while a batch is sealed, and ``chain_seq`` is unique, so
replicas never fork it.

Two ways in. :meth:`AuditLog.record` writes at once: for administrative changes, which must not
report success unless their event is stored. :meth:`AuditLog.enqueue` is for events on a hot
path that an attacker can provoke at will (failed authentications): they are queued in memory
and written in batches by :meth:`AuditLog.flush`, which the server runs every second and at
shutdown, so a flood of failures costs one multi-row insert a second instead of a write lock per
request. The queue is bounded; past it, events are dropped and the loss is logged as an error.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from fhirgate.storage.direct import GroupInsert, Statements
from fhirgate.storage.models import AuditChainRow, AuditEventRow
from fhirgate.storage.repos import now

__all__ = ["AuditEvent", "AuditLog", "Verification"]

SEAL_BATCH = 5000
_FHIR_COLUMNS = (
    "occurred_at", "event", "client_id", "source", "actor", "detail",
    "user_id", "resource_type", "resource_ids", "outcome", "request_id",
)  # fmt: skip
_FHIR_INSERT = (
    f"INSERT INTO audit_events ({', '.join(_FHIR_COLUMNS)}) "  # noqa: S608 (constant text)
    f"VALUES ({', '.join(':' + name for name in _FHIR_COLUMNS)})"
)
_CHAINED = (
    AuditEventRow.id,
    AuditEventRow.occurred_at,
    AuditEventRow.event,
    AuditEventRow.client_id,
    AuditEventRow.source,
    AuditEventRow.actor,
    AuditEventRow.detail,
    AuditEventRow.user_id,
    AuditEventRow.resource_type,
    AuditEventRow.resource_ids,
    AuditEventRow.outcome,
    AuditEventRow.request_id,
    AuditEventRow.organization_id,
)


@dataclass(frozen=True, slots=True)
class Verification:
    """What :meth:`AuditLog.verify` found: sealed rows checked, and every break."""

    checked: int
    problems: list[str]

    @property
    def intact(self) -> bool:
        return not self.problems


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
    }


def _instant(value: datetime) -> str:
    aware = value if value.tzinfo else value.replace(tzinfo=UTC)
    return aware.astimezone(UTC).isoformat()


def _link(key: bytes, previous: str, seq: int, row: Sequence[Any]) -> str:
    """One link of the chain: HMAC(key, previous hash + the row's fields, canonically). The
    last field, ``organization_id`` (added in migration 0008), counts only when set, so rows
    sealed before it existed still verify."""
    fields = [seq, row[0], _instant(row[1]), *(row[2:] if row[-1] is not None else row[2:-1])]
    text = json.dumps(fields, separators=(",", ":"), ensure_ascii=False, default=str)
    return hmac.new(key, f"{previous}|{text}".encode(), hashlib.sha256).hexdigest()


class AuditLog:
    """Appends audit events, seals them into the chain, reads and verifies them."""

    MAX_QUEUED = 10_000

    def __init__(
        self, engine: AsyncEngine, chain_key: bytes = b"", statements: Statements | None = None
    ) -> None:
        self._engine = engine
        self._chain_key = chain_key
        self._fhir_rows = None if statements is None else GroupInsert(statements, _FHIR_INSERT)
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
        organization_id: str | None = None,
    ) -> None:
        """Write one event now (``organization_id``: the organization whose audit page shows
        it)."""
        row = _row(event, client_id, source, actor, detail)
        row["organization_id"] = organization_id
        async with self._engine.begin() as conn:
            await conn.execute(insert(AuditEventRow), [row])

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
    ) -> None:
        """Write the audit row of one FHIR interaction now (the caller answers only after):
        with the rows of the same event-loop turn, in one transaction (group commit)."""
        row = _row(f"fhir.{action}", client_id, source, None, "")
        row.update(
            user_id=user_id,
            resource_type=_cut(resource_type, 64),
            resource_ids=_cut(",".join(resource_ids), 20_000),
            outcome=str(outcome),
            request_id=request_id,
        )
        if self._fhir_rows is not None:
            await self._fhir_rows.insert(row)
            return
        async with self._engine.begin() as conn:
            await conn.execute(insert(AuditEventRow), [row])

    async def aclose(self) -> None:
        """Wait for the FHIR rows being written."""
        if self._fhir_rows is not None:
            await self._fhir_rows.aclose()

    async def seal(self) -> int:
        """Chain the rows written since the last seal, oldest first; how many."""
        head_stmt = (
            select(AuditChainRow.last_seq, AuditChainRow.last_hash)
            .where(AuditChainRow.id == 1)
            .with_for_update()
        )
        pending = (
            select(*_CHAINED)
            .where(AuditEventRow.chain_seq.is_(None))
            .order_by(AuditEventRow.id)
            .limit(SEAL_BATCH)
        )
        async with self._engine.begin() as conn:
            head = (await conn.execute(head_stmt)).first()
            rows = (await conn.execute(pending)).all()
            if head is None or not rows:
                return 0
            seq, previous = int(head[0]), str(head[1])
            links = []
            for row in rows:
                seq += 1
                previous = _link(self._chain_key, previous, seq, row)
                links.append({"row_id": row[0], "seq": seq, "hash": previous})
            await conn.execute(
                update(AuditEventRow)
                .where(AuditEventRow.id == bindparam("row_id"))
                .values(chain_seq=bindparam("seq"), chain_hash=bindparam("hash")),
                links,
            )
            await conn.execute(
                update(AuditChainRow)
                .where(AuditChainRow.id == 1)
                .values(last_seq=seq, last_hash=previous)
            )
        return len(rows)

    async def verify(self) -> Verification:
        """Recompute the chain over every sealed row (``fhirgate audit verify``)."""
        problems: list[str] = []
        expected_seq, previous, checked = 1, "", 0
        stmt = (
            select(AuditEventRow.chain_seq, AuditEventRow.chain_hash, *_CHAINED)
            .where(AuditEventRow.chain_seq.is_not(None))
            .order_by(AuditEventRow.chain_seq)
        )
        async with self._engine.connect() as conn:
            head = (
                await conn.execute(
                    select(AuditChainRow.last_seq, AuditChainRow.last_hash).where(
                        AuditChainRow.id == 1
                    )
                )
            ).first()
            result = await conn.stream(stmt)
            async for sealed_seq, stored, *row in result:
                seq = int(sealed_seq or 0)
                checked += 1
                if seq != expected_seq:
                    problems.append(f"rows {expected_seq}-{seq - 1} of the chain are missing")
                expected_seq = seq + 1
                computed = _link(self._chain_key, previous, seq, row)
                if not hmac.compare_digest(computed, stored or ""):
                    problems.append(f"row {row[0]} (chain {seq}) was altered")
                previous = stored or ""
        if head is not None and (int(head[0]), str(head[1])) != (expected_seq - 1, previous):
            problems.append("the chain ends before its recorded head: rows were removed")
        return Verification(checked, problems)
