"""The single-statement runner on PostgreSQL (:class:`PostgresStatements`): its own connection
lease must bound, reuse and retire connections correctly under concurrency, cancellation,
statement errors and connections PostgreSQL ends."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncConnection
from tests.support import PG_URL, fresh_postgres_database, require_service

from fhirgate.storage.direct import GroupInsert, PostgresStatements, SqliteStatements


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

    from fhirgate.domain.instants import as_datetime

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


class _Counting(SqliteStatements):
    """SQLite statements that also count how rows reached the database."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.batches: list[int] = []
        self.alone = 0

    async def execute_many(self, sql: str, rows: Sequence[Mapping[str, Any]]) -> None:
        self.batches.append(len(rows))
        await super().execute_many(sql, rows)

    async def execute(
        self, sql: str, params: Mapping[str, Any], conn: AsyncConnection | None = None
    ) -> int:
        self.alone += 1
        return await super().execute(sql, params, conn)


@pytest.fixture
async def counting(tmp_path: Path) -> AsyncIterator[_Counting]:
    runner = _Counting(f"{tmp_path}/g.db")
    await runner.execute("CREATE TABLE g (n INTEGER NOT NULL)", {})
    runner.alone = 0
    yield runner
    await runner.aclose()


async def test_rows_queued_in_one_turn_are_committed_together(counting: _Counting) -> None:
    group = GroupInsert(counting, "INSERT INTO g (n) VALUES (:n)")
    await asyncio.gather(*(group.insert({"n": n}) for n in range(40)))
    assert counting.batches == [40] and counting.alone == 0
    await group.insert({"n": 40})  # alone in its turn: one plain statement
    assert counting.batches == [40] and counting.alone == 1
    rows = await counting.fetch("SELECT n FROM g ORDER BY n", {})
    assert [row[0] for row in rows] == list(range(41))


async def test_a_refused_row_fails_only_its_own_caller(counting: _Counting) -> None:
    group = GroupInsert(counting, "INSERT INTO g (n) VALUES (:n)")
    outcomes = await asyncio.gather(
        *(group.insert({"n": None if n == 3 else n}) for n in range(6)), return_exceptions=True
    )
    assert isinstance(outcomes[3], sqlite3.IntegrityError)  # NOT NULL
    assert [o for i, o in enumerate(outcomes) if i != 3] == [None] * 5
    rows = await counting.fetch("SELECT n FROM g ORDER BY n", {})
    assert [row[0] for row in rows] == [0, 1, 2, 4, 5]


async def test_a_batch_is_one_transaction_on_postgres(statements: PostgresStatements) -> None:
    await statements.execute("CREATE TABLE g (n int NOT NULL)", {})
    group = GroupInsert(statements, "INSERT INTO g (n) VALUES (:n)")
    await asyncio.gather(*(group.insert({"n": n}) for n in range(25)))
    outcomes = await asyncio.gather(
        *(group.insert({"n": None if n == 0 else 100 + n}) for n in range(3)),
        return_exceptions=True,
    )
    assert isinstance(outcomes[0], asyncpg.NotNullViolationError) and outcomes[1:] == [None, None]
    count = await statements.fetchrow("SELECT count(*), max(n) FROM g", {})
    assert count is not None and tuple(count) == (27, 102)
