"""Inline SQLite writes never wait on the event loop for a lock the event loop must release."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from pathlib import Path

from sqlalchemy import text

from fhirgate.storage.db import create_engine, upgrade_async
from fhirgate.storage.direct import SqliteStatements
from fhirgate.storage.sqlite_inline import InlineSqlite, refresh_statistics
from fhirgate.storage.ttl_sets import SqlTTLSet


async def test_a_write_behind_an_async_transaction_waits_in_a_thread(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/inline.db"
    await upgrade_async(url)
    sqlite = SqliteStatements(tmp_path / "inline.db")
    used = SqlTTLSet.used_jti(sqlite)
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:  # holds SQLite's write lock across awaits
            await conn.execute(
                text("INSERT INTO used_jti (key, expires_at) VALUES ('held', :exp)"),
                {"exp": int(time.time()) + 60},
            )
            started = time.monotonic()
            adding = asyncio.create_task(used.add("waiting", int(time.time()) + 60))
            await asyncio.sleep(0.3)
            # the event loop kept running (this line ran), and the write is still waiting
            assert time.monotonic() - started < 1.0
            assert not adding.done()
        assert await asyncio.wait_for(adding, 5) is True  # done once the transaction committed
        assert await used.contains("waiting") and await used.contains("held")
    finally:
        await sqlite.aclose()
        await engine.dispose()


def _load_observations(path: Path, count: int) -> None:
    """``count`` Observations of one environment, each referencing its own patient."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA foreign_keys=OFF")  # no organization rows needed for a plan
        for n in range(count):
            row_id = db.execute(
                "INSERT INTO fhir_resources (environment_id, fhir_version, resource_type,"
                " resource_id, version_id, last_updated, deleted, content)"
                " VALUES ('env', 'R4', 'Observation', :id, 1, '2026-01-01 00:00:00.000000', 0,"
                " '{}')",
                {"id": f"o{n}"},
            ).lastrowid
            db.execute(
                "INSERT INTO fhir_index_references (row_id, name, target_type, target_id)"
                " VALUES (:row, 'patient', 'Patient', :target)",
                {"row": row_id, "target": f"p{n}"},
            )
        db.commit()


async def test_inline_connections_plan_with_statistics_gathered_after_they_opened(
    tmp_path: Path,
) -> None:
    """A connection opened before ``ANALYZE`` plans a patient's search by walking every
    Observation; once it reloads the statistics it starts from the patient's index rows."""
    url = f"sqlite+aiosqlite:///{tmp_path}/plan.db"
    await upgrade_async(url)
    inline = InlineSqlite(tmp_path / "plan.db")  # opened on empty tables, like a server
    try:
        _load_observations(tmp_path / "plan.db", 3000)
        refresh_statistics(tmp_path / "plan.db")
        search = (
            "EXPLAIN QUERY PLAN SELECT row_id FROM fhir_resources WHERE environment_id = 'env'"
            " AND fhir_version = 'R4' AND resource_type = 'Observation' AND row_id IN"
            " (SELECT row_id FROM fhir_index_references WHERE name = 'patient'"
            " AND target_type = 'Patient' AND target_id = 'p7')"
        )

        def plan() -> str:
            return " / ".join(str(row[3]) for row in inline._inline.execute(search).fetchall())

        assert "sqlite_autoindex_fhir_resources" in plan()  # stale: every Observation, probed
        await inline.reload_statistics()
        assert "fhir_resources USING INTEGER PRIMARY KEY" in plan()  # from the index rows
    finally:
        inline.close()
