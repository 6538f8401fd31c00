"""Sets of keys that expire: single-use assertion ids and the access-token deny-list.

Three backends with one contract. In the database a key is a primary-key row, so the first
insert wins atomically on every replica; in Redis it is ``SET key 1 NX PX ttl``. Keys are digests
of the caller's values, so their length is bounded whatever a client sends.

On SQLite (embedded mode) the set uses its own ``sqlite3`` connections and runs each statement
inline on the event loop (:mod:`fhirgate.storage.sqlite_inline`): an autocommit insert in WAL
mode costs microseconds, far less than a hop to aiosqlite's thread, and it is the one storage
write of every token request.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import sqlite3
import time
from pathlib import Path
from typing import Protocol

from redis.asyncio import Redis
from sqlalchemy import Table, bindparam, delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncEngine

from fhirgate.storage.models import RevokedTokenRow, UsedJtiRow
from fhirgate.storage.sqlite_inline import InlineSqlite

__all__ = ["RedisTTLSet", "SqlTTLSet", "SqliteTTLSet", "TTLSet", "digest"]


def digest(*parts: str) -> str:
    """A fixed-length key for a tuple of strings: BLAKE2b-128 of them NUL-separated, in hex.

    128 bits keep keys short (smaller indexes and Redis keys) and collisions out of reach.
    """
    return hashlib.blake2b("\x00".join(parts).encode("utf-8"), digest_size=16).hexdigest()


class TTLSet(Protocol):
    async def add(self, key: str, expires_at: int) -> bool:
        """Add ``key`` until ``expires_at`` (epoch seconds); ``False`` if already present."""
        ...

    async def contains(self, key: str) -> bool: ...

    async def purge(self) -> int:
        """Drop expired keys; returns how many went (Redis expires them itself: 0)."""
        ...

    def close(self) -> None:
        """Release what the set holds itself (shared engines and clients are closed by owners)."""
        ...


class SqlTTLSet:
    """A TTL set in a PostgreSQL table with columns (key-column, ``expires_at``).

    ``add`` is one autocommit statement (one round trip): insert, or take over a row whose
    entry has expired but is not purged yet; a live row makes it change nothing.
    """

    def __init__(self, engine: AsyncEngine, table: Table, key_column: str) -> None:
        self._engine = engine.execution_options(isolation_level="AUTOCOMMIT")
        self._table = table
        self._key = table.c[key_column]
        self._key_name = key_column
        insert = pg_insert(table)
        self._upsert = insert.on_conflict_do_update(
            index_elements=[self._key],
            set_={"expires_at": insert.excluded.expires_at},
            where=table.c.expires_at < bindparam("now"),
        )

    async def add(self, key: str, expires_at: int) -> bool:
        values = {self._key_name: key, "expires_at": expires_at, "now": int(time.time())}
        async with self._engine.connect() as conn:
            result = await conn.execute(self._upsert, values)
        return result.rowcount == 1

    async def contains(self, key: str) -> bool:
        stmt = select(self._table.c.expires_at).where(self._key == key)
        async with self._engine.connect() as conn:
            expires_at = (await conn.execute(stmt)).scalar()
        return expires_at is not None and expires_at >= int(time.time())

    async def purge(self) -> int:
        stmt = delete(self._table).where(self._table.c.expires_at < int(time.time()))
        async with self._engine.begin() as conn:
            result = await conn.execute(stmt)
        return int(result.rowcount)

    def close(self) -> None:
        pass

    @classmethod
    def used_jti(cls, engine: AsyncEngine) -> SqlTTLSet:
        return cls(engine, UsedJtiRow.__table__, "key")  # type: ignore[arg-type]

    @classmethod
    def revoked_tokens(cls, engine: AsyncEngine) -> SqlTTLSet:
        return cls(engine, RevokedTokenRow.__table__, "jti")  # type: ignore[arg-type]


class SqliteTTLSet:
    """A TTL set in a SQLite table, written inline (:class:`InlineSqlite`: never waiting on
    the event loop for the write lock).

    Nothing slow runs on the event loop: these connections never checkpoint the WAL themselves
    (:meth:`checkpoint` does, in a thread, from a background job), and :meth:`purge` deletes in
    batches, yielding between them.
    """

    PURGE_BATCH = 2000

    def __init__(self, path: str | Path, table: str, key_column: str) -> None:
        self._path = path
        self._db = InlineSqlite(path)
        # table and column names come from the models below, never from input
        self._insert = (
            f"INSERT INTO {table} ({key_column}, expires_at) VALUES (?, ?) "  # noqa: S608
            f"ON CONFLICT ({key_column}) DO UPDATE SET expires_at = excluded.expires_at "
            f"WHERE {table}.expires_at < ?"
        )
        self._select = f"SELECT expires_at FROM {table} WHERE {key_column} = ?"  # noqa: S608
        self._purge = (
            f"DELETE FROM {table} WHERE {key_column} IN "  # noqa: S608
            f"(SELECT {key_column} FROM {table} WHERE expires_at < ? LIMIT {self.PURGE_BATCH})"
        )

    async def add(self, key: str, expires_at: int) -> bool:
        """Insert, or take over an expired row; ``False`` when a live row exists."""
        values = (key, expires_at, int(time.time()))
        return await self._db.run(lambda db: db.execute(self._insert, values).rowcount == 1)

    async def contains(self, key: str) -> bool:
        row = await self._db.run(lambda db: db.execute(self._select, (key,)).fetchone())
        return row is not None and int(row[0]) >= int(time.time())

    async def purge(self) -> int:
        now, purged = int(time.time()), 0
        while (
            batch := await self._db.run(lambda db: db.execute(self._purge, (now,)).rowcount)
        ) > 0:
            purged += batch
            await asyncio.sleep(0)  # let requests in between batches
        return purged

    async def checkpoint(self) -> None:
        """Copy the WAL back into the database file (PASSIVE: never waits for readers)."""
        await asyncio.to_thread(_checkpoint, self._path)

    def close(self) -> None:
        self._db.close()

    @classmethod
    def used_jti(cls, path: str | Path) -> SqliteTTLSet:
        return cls(path, UsedJtiRow.__tablename__, "key")

    @classmethod
    def revoked_tokens(cls, path: str | Path) -> SqliteTTLSet:
        return cls(path, RevokedTokenRow.__tablename__, "jti")


def _checkpoint(path: str | Path) -> None:
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute("PRAGMA busy_timeout=2000")
        db.execute("PRAGMA wal_checkpoint(PASSIVE)")


class RedisTTLSet:
    """A TTL set in Redis under ``prefix``; expiry is Redis's own."""

    def __init__(self, redis: Redis, prefix: str) -> None:
        self._redis = redis
        self._prefix = prefix

    async def add(self, key: str, expires_at: int) -> bool:
        ttl_ms = int((expires_at - time.time()) * 1000)
        if ttl_ms <= 0:  # already expired: nothing to remember, as in the SQL sets
            return not await self.contains(key)
        return bool(await self._redis.set(self._prefix + key, b"1", nx=True, px=ttl_ms))

    async def contains(self, key: str) -> bool:
        return bool(await self._redis.exists(self._prefix + key))

    async def purge(self) -> int:
        return 0

    def close(self) -> None:
        pass
