"""Sets of keys that expire: single-use assertion ids and the access-token deny-list.

Two backends with one contract. In the database a key is a primary-key row, so the first insert
wins atomically on every replica; in Redis it is ``SET key 1 NX PX ttl``. Keys are digests of
the caller's values, so their length is bounded whatever a client sends.
"""

from __future__ import annotations

import hashlib
import time
from typing import Protocol

from redis.asyncio import Redis
from sqlalchemy import Table, delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from fhirgate.storage.models import RevokedTokenRow, UsedJtiRow

__all__ = ["RedisTTLSet", "SqlTTLSet", "TTLSet", "digest"]


def digest(*parts: str) -> str:
    """A fixed-length key for a tuple of strings (NUL-separated, SHA-256)."""
    return hashlib.sha256("\x00".join(parts).encode("utf-8")).hexdigest()


class TTLSet(Protocol):
    async def add(self, key: str, expires_at: int) -> bool:
        """Add ``key`` until ``expires_at`` (epoch seconds); ``False`` if already present."""
        ...

    async def contains(self, key: str) -> bool: ...

    async def purge(self) -> int:
        """Drop expired keys; returns how many went (Redis expires them itself: 0)."""
        ...


class SqlTTLSet:
    """A TTL set in one table with columns (key-column, ``expires_at``)."""

    def __init__(self, engine: AsyncEngine, table: Table, key_column: str) -> None:
        self._engine = engine
        self._table = table
        self._key = table.c[key_column]
        self._key_name = key_column
        self._insert = table.insert()

    async def add(self, key: str, expires_at: int) -> bool:
        try:
            async with self._engine.begin() as conn:
                await conn.execute(self._insert, {self._key_name: key, "expires_at": expires_at})
        except IntegrityError:
            return False
        return True

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

    @classmethod
    def used_jti(cls, engine: AsyncEngine) -> SqlTTLSet:
        return cls(engine, UsedJtiRow.__table__, "key")  # type: ignore[arg-type]

    @classmethod
    def revoked_tokens(cls, engine: AsyncEngine) -> SqlTTLSet:
        return cls(engine, RevokedTokenRow.__table__, "jti")  # type: ignore[arg-type]


class RedisTTLSet:
    """A TTL set in Redis under ``prefix``; expiry is Redis's own."""

    def __init__(self, redis: Redis, prefix: str) -> None:
        self._redis = redis
        self._prefix = prefix

    async def add(self, key: str, expires_at: int) -> bool:
        ttl_ms = max(1, int((expires_at - time.time()) * 1000))
        return bool(await self._redis.set(self._prefix + key, b"1", nx=True, px=ttl_ms))

    async def contains(self, key: str) -> bool:
        return bool(await self._redis.exists(self._prefix + key))

    async def purge(self) -> int:
        return 0
