"""What the audit log (docs/security.md, "Audit log") says about a key's use: when it last got
a token, how many tokens it got per UTC day, and its latest failed authentications or grants."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import Date, cast, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from fhirgate.dashboard.api_keys.views import DailyCount, Failure, KeyActivity
from fhirgate.storage.models import AuditEventRow
from fhirgate.storage.repos import as_utc

ACTIVITY_DAYS = 14
FAILURES_SHOWN = 10
_FAILURE_EVENTS = ("client_auth.failure", "grant.failure")


async def last_used(engine: AsyncEngine, client_ids: list[str]) -> dict[str, datetime]:
    """client id → when it was last issued a token, for those ever issued one."""
    if not client_ids:
        return {}
    event = AuditEventRow
    latest = {}
    async with engine.connect() as conn:
        for client_id in client_ids:  # one index lookup each (ix_audit_events_client_event)
            at = (
                await conn.execute(
                    select(func.max(event.occurred_at)).where(
                        event.client_id == client_id, event.event == "token.issued"
                    )
                )
            ).scalar_one_or_none()
            if at is not None:
                latest[client_id] = as_utc(at)
    return latest


async def key_activity(engine: AsyncEngine, client_id: str) -> KeyActivity:
    """Last use, tokens issued per UTC day over the last :data:`ACTIVITY_DAYS` days (today
    included), and the last :data:`FAILURES_SHOWN` failed authentications or grants."""
    event = AuditEventRow
    today = datetime.now(UTC).date()
    first = today - timedelta(days=ACTIVITY_DAYS - 1)
    start = datetime(first.year, first.month, first.day, tzinfo=UTC)
    if engine.dialect.name == "postgresql":
        day: Any = cast(func.timezone("UTC", event.occurred_at), Date)
    else:  # SQLite keeps UTC wall-clock text
        day = func.date(event.occurred_at)
    mine = event.client_id == client_id
    counts = (
        select(day, func.count())
        .where(mine, event.event == "token.issued", event.occurred_at >= start)
        .group_by(day)
    )
    failures = (
        select(event.occurred_at, event.event, event.source, event.detail)
        .where(mine, event.event.in_(_FAILURE_EVENTS))
        .order_by(event.id.desc())
        .limit(FAILURES_SHOWN)
    )
    async with engine.connect() as conn:
        per_day = {date.fromisoformat(str(d)[:10]): int(n) for d, n in await conn.execute(counts)}
        failed = [
            Failure(as_utc(at), ev, src, det or "")
            for at, ev, src, det in await conn.execute(failures)
        ]
    used = await last_used(engine, [client_id])
    days = (first + timedelta(days=i) for i in range(ACTIVITY_DAYS))
    return KeyActivity(
        used.get(client_id),
        tuple(DailyCount(d, per_day.get(d, 0)) for d in days),
        tuple(failed),
    )
