"""Single SQL statements on the hot paths, without SQLAlchemy's expression and result layers.

A FHIR read and its audit row are one statement each; built, compiled and run through
SQLAlchemy and a driver adapter they cost ten times what the database does (docs/benchmarks.md).
Here they are constant SQL text with ``:name`` parameters, run

* on SQLite inline on the event loop on a ``sqlite3`` connection of their own, never waiting
  there for the write lock (:class:`~fhirgate.storage.sqlite_inline.InlineSqlite`);
* on PostgreSQL as one autocommit statement on a few asyncpg connections of its own
  (:mod:`fhirgate.storage.lease`: no pre-ping, no ``BEGIN``/``COMMIT``, no reset query), the
  text turned into ``$n`` form once;
* inside a caller's SQLAlchemy transaction (a transaction Bundle) through that connection, so
  the statement sees the transaction's own writes.

Values cross as the database stores them: on SQLite a ``datetime`` parameter becomes
SQLAlchemy's text form, and :func:`as_datetime` and :func:`as_json` read results of every path.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

import asyncpg
import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from fhirgate.storage.lease import Lease
from fhirgate.storage.sqlite_inline import InlineSqlite, in_transaction

__all__ = [
    "GroupInsert",
    "PostgresStatements",
    "SqliteStatements",
    "Statements",
    "as_json",
    "statements_for",
]

#: How SQLAlchemy stores a DateTime in SQLite (UTC here).
SQLITE_DATETIME = "%Y-%m-%d %H:%M:%S.%f"
_MAX_CACHED_TEXTS = 2000
_NAMED = re.compile(r"(?<![:\w]):([a-z_][a-z0-9_]*)")

Row = Sequence[Any]
_T = TypeVar("_T")


class Statements(Protocol):
    """One statement at a time, on the backend's fastest path (or in ``conn``'s transaction)."""

    async def fetchrow(
        self, sql: str, params: Mapping[str, Any], conn: AsyncConnection | None = None
    ) -> Row | None: ...

    async def fetch(
        self, sql: str, params: Mapping[str, Any], conn: AsyncConnection | None = None
    ) -> list[Row]: ...

    async def execute(
        self, sql: str, params: Mapping[str, Any], conn: AsyncConnection | None = None
    ) -> int:
        """Run a statement that returns no rows; how many rows it changed."""
        ...

    async def execute_many(self, sql: str, rows: Sequence[Mapping[str, Any]]) -> None:
        """Run ``sql`` once per row, all in one transaction (one commit)."""
        ...

    async def execute_each(self, sqls: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> None:
        """For each row, run every statement of ``sqls`` in order; all in one transaction."""
        ...

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``: for the few statements whose SQL differs."""
        ...

    async def aclose(self) -> None: ...


async def _in_transaction(conn: AsyncConnection, sql: str, params: Mapping[str, Any]) -> Any:
    return await conn.execute(text(sql), dict(params))


def as_json(value: Any) -> Any:
    """A stored JSON document (text from the drivers, already decoded through SQLAlchemy)."""
    return orjson.loads(value) if isinstance(value, (str, bytes)) else value


def _sqlite_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime(SQLITE_DATETIME)
    return value


def _as_stored(params: Mapping[str, Any]) -> dict[str, Any]:
    """Parameters as SQLite stores them (datetimes in SQLAlchemy's text form)."""
    return {name: _sqlite_value(value) for name, value in params.items()}


class SqliteStatements:
    """Inline on the event loop; in a thread only while another connection writes."""

    def __init__(self, path: str | Path) -> None:
        self._db = InlineSqlite(path)

    async def run(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        """``work`` on this runner's connections (:meth:`InlineSqlite.run`): what the grant
        store's transactions run on."""
        return await self._db.run(work)

    async def fetchrow(
        self, sql: str, params: Mapping[str, Any], conn: AsyncConnection | None = None
    ) -> Row | None:
        named = _as_stored(params)
        if conn is not None:
            return (await _in_transaction(conn, sql, named)).first()  # type: ignore[no-any-return]
        row: Row | None = await self._db.run(lambda db: db.execute(sql, named).fetchone())
        return row

    async def fetch(
        self, sql: str, params: Mapping[str, Any], conn: AsyncConnection | None = None
    ) -> list[Row]:
        named = _as_stored(params)
        if conn is not None:
            return list((await _in_transaction(conn, sql, named)).all())
        return await self._db.run(lambda db: db.execute(sql, named).fetchall())

    async def execute(
        self, sql: str, params: Mapping[str, Any], conn: AsyncConnection | None = None
    ) -> int:
        named = _as_stored(params)
        if conn is not None:
            return int((await _in_transaction(conn, sql, named)).rowcount)
        return await self._db.run(lambda db: db.execute(sql, named).rowcount)

    async def execute_many(self, sql: str, rows: Sequence[Mapping[str, Any]]) -> None:
        named = [_as_stored(row) for row in rows]
        await self._db.run(lambda db: in_transaction(db, lambda db: db.executemany(sql, named)))

    async def execute_each(self, sqls: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> None:
        named = [_as_stored(row) for row in rows]

        def work(db: sqlite3.Connection) -> None:
            for row in named:
                for sql in sqls:
                    db.execute(sql, row)

        await self._db.run(lambda db: in_transaction(db, work))

    @property
    def dialect(self) -> str:
        return "sqlite"

    async def reload_statistics(self) -> None:
        """After ``ANALYZE`` elsewhere (:func:`~fhirgate.storage.sqlite_inline.
        refresh_statistics`): plan with the new statistics."""
        await self._db.reload_statistics()

    async def aclose(self) -> None:
        self._db.close()


class PostgresStatements:
    """One autocommit statement per call, on a few asyncpg connections of its own, lent by
    :class:`~fhirgate.storage.lease.Lease` instead of ``asyncpg.Pool`` (whose release costs a
    third of a deny-list check)."""

    def __init__(self, url: str, max_size: int = 10) -> None:
        self._lease: Lease[asyncpg.Connection] = Lease(
            lambda: asyncpg.connect(url),
            _terminate,
            lambda connection: not connection.is_closed(),
            (asyncpg.PostgresError,),  # the server refused the statement; the session is fine
            max_size,
        )
        self._connection = self._lease.connection
        self._positional: dict[str, tuple[str, tuple[str, ...]]] = {}

    def _as_positional(self, sql: str) -> tuple[str, tuple[str, ...]]:
        """``:name`` parameters as ``$n``, and the names in that order (cached per text)."""
        known = self._positional.get(sql)
        if known is None:
            if len(self._positional) >= _MAX_CACHED_TEXTS:  # search shapes vary: stay bounded
                self._positional.clear()
            names: list[str] = []

            def number(match: re.Match[str]) -> str:
                if match.group(1) not in names:
                    names.append(match.group(1))
                return f"${names.index(match.group(1)) + 1}"

            known = self._positional[sql] = (_NAMED.sub(number, sql), tuple(names))
        return known

    def _bound(self, sql: str, params: Mapping[str, Any]) -> tuple[str, list[Any]]:
        """``sql`` in ``$n`` form and its arguments in that order."""
        positional, names = self._as_positional(sql)
        return positional, [params[name] for name in names]

    async def fetchrow_args(self, sql: str, args: Sequence[Any]) -> asyncpg.Record | None:
        """``sql`` already in asyncpg's ``$n`` form, with its arguments in order."""
        async with self._connection() as connection:
            return await connection.fetchrow(sql, *args)

    async def fetchrow(
        self, sql: str, params: Mapping[str, Any], conn: AsyncConnection | None = None
    ) -> Row | None:
        if conn is not None:
            return (await _in_transaction(conn, sql, params)).first()  # type: ignore[no-any-return]
        return await self.fetchrow_args(*self._bound(sql, params))

    async def fetch(
        self, sql: str, params: Mapping[str, Any], conn: AsyncConnection | None = None
    ) -> list[Row]:
        if conn is not None:
            return list((await _in_transaction(conn, sql, params)).all())
        positional, args = self._bound(sql, params)
        async with self._connection() as connection:
            return list(await connection.fetch(positional, *args))

    async def execute(
        self, sql: str, params: Mapping[str, Any], conn: AsyncConnection | None = None
    ) -> int:
        if conn is not None:
            return int((await _in_transaction(conn, sql, params)).rowcount)
        positional, args = self._bound(sql, params)
        async with self._connection() as connection:
            status = await connection.execute(positional, *args)
        count = status.rsplit(" ", 1)[-1]  # "DELETE 3", "INSERT 0 1"
        return int(count) if count.isdigit() else 0

    async def execute_many(self, sql: str, rows: Sequence[Mapping[str, Any]]) -> None:
        positional, names = self._as_positional(sql)
        arguments = [[row[name] for name in names] for row in rows]
        async with self._connection() as connection:
            await connection.executemany(positional, arguments)  # atomic: one transaction

    async def execute_each(self, sqls: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> None:
        if len(sqls) == 1:
            await self.execute_many(sqls[0], rows)
            return
        bound = [self._as_positional(sql) for sql in sqls]
        async with self._connection() as connection, connection.transaction():
            for row in rows:
                for positional, names in bound:
                    await connection.execute(positional, *[row[name] for name in names])

    @property
    def dialect(self) -> str:
        return "postgresql"

    async def aclose(self) -> None:
        await self._lease.aclose()


async def _terminate(connection: asyncpg.Connection) -> None:
    connection.terminate()


class GroupInsert:
    """Group commit for one insert: the rows queued during one turn of the event loop are
    written together, in one transaction, and each caller resumes once its row is committed
    (or with the error that kept it out).

    Under load a commit is the cost of an insert (SQLite appends and syncs its WAL, PostgreSQL
    makes a round trip); sharing it among the requests of the same turn keeps the guarantee —
    nothing is answered before its row is stored — at a fraction of the cost
    (docs/benchmarks.md).
    """

    def __init__(self, statements: Statements, sql: str | Sequence[str]) -> None:
        """``sql``: the insert, or the statements that store one row (run in order, in one
        transaction)."""
        self._statements = statements
        self._sqls = (sql,) if isinstance(sql, str) else tuple(sql)
        self._queued: list[tuple[Mapping[str, Any], asyncio.Future[None]]] = []
        self._writing: set[asyncio.Task[None]] = set()

    async def insert(self, row: Mapping[str, Any]) -> None:
        loop = asyncio.get_running_loop()
        stored = loop.create_future()
        self._queued.append((row, stored))
        if len(self._queued) == 1:  # the first of this turn: write them all on the next one
            loop.call_soon(self._write_queued)
        await stored

    def _write_queued(self) -> None:
        batch, self._queued = self._queued, []
        task = asyncio.ensure_future(self._write(batch))
        self._writing.add(task)  # held until done (the loop keeps only weak references)
        task.add_done_callback(self._writing.discard)

    async def _write(self, batch: list[tuple[Mapping[str, Any], asyncio.Future[None]]]) -> None:
        try:
            await self._store([row for row, _ in batch])
        except Exception as exc:
            if len(batch) == 1:
                _settle(batch[0][1], exc)
                return
            for row, stored in batch:  # one row refused must not fail the others: each alone
                try:
                    await self._store([row])
                except Exception as alone:
                    _settle(stored, alone)
                else:
                    _settle(stored, None)
            return
        for _, stored in batch:
            _settle(stored, None)

    async def _store(self, rows: list[Mapping[str, Any]]) -> None:
        if len(self._sqls) > 1:
            await self._statements.execute_each(self._sqls, rows)
        elif len(rows) == 1:  # alone: one autocommit statement
            await self._statements.execute(self._sqls[0], rows[0])
        else:
            await self._statements.execute_many(self._sqls[0], rows)

    async def aclose(self) -> None:
        """Wait for the writes in progress."""
        if self._writing:
            await asyncio.gather(*self._writing, return_exceptions=True)


def _settle(stored: asyncio.Future[None], error: BaseException | None) -> None:
    if stored.done():  # its request was cancelled meanwhile
        return
    if error is None:
        stored.set_result(None)
    else:
        stored.set_exception(error)


def statements_for(engine: AsyncEngine) -> SqliteStatements | PostgresStatements:
    """The statements runner for ``engine``'s database (a path for SQLite, a URL for asyncpg)."""
    if engine.dialect.name == "sqlite":
        return SqliteStatements(str(engine.url.database))
    url = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    return PostgresStatements(url)
