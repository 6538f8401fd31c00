"""Sets of keys that expire: single-use assertion ids and the access-token deny-list.

Three backends with one contract. In the database a key is a primary-key row, so the first
insert wins atomically on every replica; in Redis it is ``SET key 1 NX PX ttl``. Keys are digests
of the caller's values, so their length is bounded whatever a client sends.

In the database each operation is one statement (:mod:`fhirgate.storage.direct`); on SQLite
(embedded mode) it runs inline on the event loop: an autocommit insert in WAL mode costs
microseconds, far less than a hop to aiosqlite's thread, and it is the one storage write of
every token request.
"""

from __future__ import annotations

import asyncio
import time

from redis.asyncio import Redis
from redis.asyncio.connection import Connection
from redis.exceptions import ResponseError

from fhirgate.storage.direct import Statements
from fhirgate.storage.lease import Lease
from fhirgate.storage.models import RevokedTokenRow, UsedJtiRow

__all__ = ["RedisTTLSet", "SqlTTLSet"]


class SqlTTLSet:
    """A TTL set in a database table with columns (key-column, ``expires_at``), one statement
    per call (:mod:`fhirgate.storage.direct`: inline ``sqlite3``, or asyncpg).

    ``add`` is one autocommit statement: insert, or take over a row whose entry has expired but
    is not purged yet; a live row makes it change nothing. :meth:`purge` deletes in batches,
    yielding between them.
    """

    PURGE_BATCH = 2000

    def __init__(self, statements: Statements, table: str, key_column: str) -> None:
        self._statements = statements
        # table and column names come from the models below, never from input
        self._insert = (
            f"INSERT INTO {table} ({key_column}, expires_at) VALUES (:key, :expires_at) "  # noqa: S608
            f"ON CONFLICT ({key_column}) DO UPDATE SET expires_at = excluded.expires_at "
            f"WHERE {table}.expires_at < :now RETURNING 1"
        )
        self._select = f"SELECT expires_at FROM {table} WHERE {key_column} = :key"  # noqa: S608
        self._purge = (
            f"DELETE FROM {table} WHERE {key_column} IN "  # noqa: S608
            f"(SELECT {key_column} FROM {table} WHERE expires_at < :now LIMIT {self.PURGE_BATCH})"
        )

    async def add(self, key: str, expires_at: int) -> bool:
        """Insert, or take over an expired row; ``False`` when a live row exists."""
        values = {"key": key, "expires_at": expires_at, "now": int(time.time())}
        return await self._statements.fetchrow(self._insert, values) is not None

    async def contains(self, key: str) -> bool:
        row = await self._statements.fetchrow(self._select, {"key": key})
        return row is not None and int(row[0]) >= int(time.time())

    async def purge(self) -> int:
        now, purged = int(time.time()), 0
        while (batch := await self._statements.execute(self._purge, {"now": now})) > 0:
            purged += batch
            await asyncio.sleep(0)  # let requests in between batches
        return purged

    async def aclose(self) -> None:
        """Nothing: the statements runner belongs to whoever made it."""

    @classmethod
    def used_jti(cls, statements: Statements) -> SqlTTLSet:
        return cls(statements, UsedJtiRow.__tablename__, "key")

    @classmethod
    def revoked_tokens(cls, statements: Statements) -> SqlTTLSet:
        return cls(statements, RevokedTokenRow.__tablename__, "jti")


class RedisTTLSet:
    """A TTL set in Redis under ``prefix``; expiry is Redis's own.

    Each check is one command on a connection of its own lease (:mod:`fhirgate.storage.lease`)
    rather than through redis-py's client and pool, whose per-command machinery cost twice the
    round trip (docs/benchmarks.md); the connections take the client's settings.
    """

    def __init__(self, redis: Redis, prefix: str) -> None:
        self._prefix = prefix

        async def connect() -> Connection:
            connection: Connection = redis.connection_pool.make_connection()  # type: ignore[no-untyped-call]
            await connection.connect()  # type: ignore[no-untyped-call]
            return connection

        self._lease: Lease[Connection] = Lease(
            connect, _disconnect, lambda c: bool(c.is_connected), (ResponseError,)
        )

    async def _command(self, *args: str | bytes | int) -> object:
        async with self._lease.connection() as connection:
            await connection.send_command(*args)
            return await connection.read_response()

    async def add(self, key: str, expires_at: int) -> bool:
        ttl_ms = int((expires_at - time.time()) * 1000)
        if ttl_ms <= 0:  # already expired: nothing to remember, as in the SQL sets
            return not await self.contains(key)
        return await self._command("SET", self._prefix + key, b"1", "NX", "PX", ttl_ms) is not None

    async def contains(self, key: str) -> bool:
        return bool(await self._command("EXISTS", self._prefix + key))

    async def purge(self) -> int:
        return 0

    async def aclose(self) -> None:
        await self._lease.aclose()


async def _disconnect(connection: Connection) -> None:
    await connection.disconnect()
