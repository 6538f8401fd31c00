"""Inline SQLite writes never wait on the event loop for a lock the event loop must release."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from sqlalchemy import text

from fhirgate.storage.db import create_engine, upgrade_async
from fhirgate.storage.direct import SqliteStatements
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
