"""The single-statement runner on PostgreSQL (:class:`PostgresStatements`): its own connection
lease must bound, reuse and retire connections correctly under concurrency, cancellation,
statement errors and connections PostgreSQL ends."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import asyncpg
import pytest
from tests.support import PG_URL, fresh_postgres_database, require_service

from fhirgate.storage.direct import PostgresStatements, SqliteStatements


@pytest.fixture
async def url() -> str:
    return (await fresh_postgres_database(require_service(PG_URL, "PostgreSQL"))).replace(
        "postgresql+asyncpg://", "postgresql://"
    )


@pytest.fixture
async def statements(url: str) -> AsyncIterator[PostgresStatements]:
    runner = PostgresStatements(url, max_size=3)
    yield runner
    await runner.aclose()


async def _server_connections(url: str) -> int:
    admin = await asyncpg.connect(url)
    try:
        return int(
            await admin.fetchval(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        )
    finally:
        await admin.close()


async def test_named_parameters_reach_postgres_in_order(statements: PostgresStatements) -> None:
    row = await statements.fetchrow(
        "SELECT :b::int - :a::int, :a::text || :b::text", {"a": 1, "b": 5}
    )
    assert row is not None and tuple(row) == (4, "15")


async def test_more_statements_than_connections_all_finish_on_at_most_max_size(
    statements: PostgresStatements, url: str
) -> None:
    results = await asyncio.gather(
        *(statements.fetchrow("SELECT :n::int, pg_sleep(0.05)", {"n": n}) for n in range(12))
    )
    assert [row[0] for row in results if row is not None] == list(range(12))
    assert await _server_connections(url) <= 3


async def test_a_refused_statement_leaves_its_connection_usable(
    statements: PostgresStatements, url: str
) -> None:
    await statements.execute("CREATE TABLE t (k int PRIMARY KEY)", {})
    assert await statements.execute("INSERT INTO t VALUES (:k)", {"k": 1}) == 1
    with pytest.raises(asyncpg.UniqueViolationError):
        await statements.execute("INSERT INTO t VALUES (:k)", {"k": 1})
    assert await statements.execute("DELETE FROM t WHERE k = :k", {"k": 1}) == 1
    assert await _server_connections(url) == 1  # the same connection, lent again


async def test_a_cancelled_statement_retires_its_connection(
    statements: PostgresStatements, url: str
) -> None:
    slow = asyncio.create_task(statements.fetchrow("SELECT pg_sleep(3)", {}))
    await asyncio.sleep(0.3)
    admin = await asyncpg.connect(url)
    try:
        sleeping = await admin.fetchval(
            "SELECT pid FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(3)'"
        )
    finally:
        await admin.close()
    slow.cancel()
    with pytest.raises(asyncio.CancelledError):
        await slow
    row = await statements.fetchrow("SELECT pg_backend_pid()", {})
    assert row is not None and row[0] != sleeping  # a fresh connection, not the interrupted one


async def test_a_connection_ended_by_postgres_fails_one_statement_then_is_replaced(
    statements: PostgresStatements, url: str
) -> None:
    row = await statements.fetchrow("SELECT pg_backend_pid()", {})
    assert row is not None
    admin = await asyncpg.connect(url)
    try:
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", row[0])
    finally:
        await admin.close()
    await asyncio.sleep(0.2)
    with contextlib.suppress(asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
        await statements.fetchrow("SELECT 1", {})  # may be the one that finds it dead
    again = await statements.fetchrow("SELECT pg_backend_pid()", {})
    assert again is not None and again[0] != row[0]


async def test_waiting_for_a_connection_can_be_cancelled_without_losing_one(
    statements: PostgresStatements,
) -> None:
    busy = [asyncio.create_task(statements.fetchrow("SELECT pg_sleep(0.3)", {})) for _ in range(3)]
    await asyncio.sleep(0.1)
    waiting = asyncio.create_task(statements.fetchrow("SELECT 1", {}))
    await asyncio.sleep(0.05)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await asyncio.gather(*busy)
    rows = await asyncio.gather(
        *(statements.fetchrow("SELECT :n::int", {"n": n}) for n in range(6))
    )
    assert [row[0] for row in rows if row is not None] == list(range(6))


async def test_sqlite_datetimes_are_stored_as_sqlalchemy_does(tmp_path: object) -> None:
    from datetime import UTC, datetime, timedelta, timezone

    from fhirgate.storage.direct import as_datetime

    runner = SqliteStatements(f"{tmp_path}/d.db")
    try:
        await runner.execute("CREATE TABLE d (at TEXT)", {})
        moment = datetime(2026, 11, 29, 21, 0, 0, 123456, tzinfo=timezone(timedelta(hours=2)))
        await runner.execute("INSERT INTO d VALUES (:at)", {"at": moment})
        row = await runner.fetchrow("SELECT at FROM d", {})
        assert row is not None and row[0] == "2026-11-29 19:00:00.123456"
        assert as_datetime(row[0]) == moment.astimezone(UTC)
    finally:
        await runner.aclose()
