"""The refresh hot path: spend a refresh token and add the next one to its live grant, in one
storage round trip.

Refreshing is the one write every long-running application makes again and again, so it is
written in plain SQL per backend instead of going through SQLAlchemy's expression layer
(docs/benchmarks.md):

* PostgreSQL: one autocommit statement whose data-modifying CTEs spend the token (a conditional
  ``UPDATE … WHERE consumed_at IS NULL``: of concurrent spends exactly one wins), check the grant
  and its user, and insert the next token — atomic, one round trip.
* SQLite (embedded): the same three statements in one ``BEGIN IMMEDIATE`` transaction on a
  dedicated ``sqlite3`` connection, run inline on the event loop (microseconds, no thread hop).
  The inline attempt never waits for the write lock: if another connection holds it (a
  transaction of the async engine, which may need this very event loop to finish), the same
  transaction runs in a worker thread on a second connection that may wait.

Either way the spend and the insert commit together or not at all (issue 4, crash consistency).
A token that cannot be spent returns ``None``; :class:`GrantRepo` then tells reuse from error.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ["RefreshStore", "SqlRefreshStore", "SqliteRefreshStore", "refresh_store_for"]

#: (grant_id, client_id, oneup_user_id, scope, auth_time, grant expires_at, refresh expires_at)
Renewed = Sequence[Any]

_PARAMETERS = ("client_id", "token_hash", "new_hash", "now", "ttl")


def _numbered(sql: str) -> str:
    """``:name`` parameters as asyncpg's ``$n``, in the order of ``_PARAMETERS``."""
    for number, name in enumerate(_PARAMETERS, 1):
        sql = sql.replace(f":{name}", f"${number}")
    return sql


_SPEND = """
    UPDATE opaque_tokens SET consumed_at = :now
    WHERE token_hash = :token_hash AND client_id = :client_id AND kind = 'refresh'
      AND consumed_at IS NULL AND revoked_at IS NULL AND expires_at > :now
    RETURNING family_id
"""
_GRANT = """
    SELECT g.grant_id, g.client_id, g.oneup_user_id, g.scope, g.auth_time, g.expires_at
    FROM user_grants g JOIN app_users u ON u.oneup_user_id = g.oneup_user_id
    WHERE g.revoked_at IS NULL AND g.expires_at > :now AND u.active
"""
_PG_REFRESH = _numbered(
    f"""
    WITH spent AS ({_SPEND}),
    live AS ({_GRANT} AND g.grant_id = (SELECT family_id FROM spent)),
    renewed AS (
        INSERT INTO opaque_tokens
            (token_hash, kind, client_id, family_id, scope, issued_at, expires_at)
        SELECT :new_hash, 'refresh', client_id, grant_id, scope, :now,
               LEAST(:now + :ttl, expires_at)
        FROM live
        RETURNING expires_at
    )
    SELECT live.*, renewed.expires_at FROM live, renewed
    """  # noqa: S608 (constant text; every value is a bound parameter)
)
_SQLITE_GRANT = f"{_GRANT} AND g.grant_id = :family"
_SQLITE_INSERT = """
    INSERT INTO opaque_tokens
        (token_hash, kind, client_id, family_id, scope, issued_at, expires_at)
    VALUES (:new_hash, 'refresh', :client_id, :family, :scope, :now, :expires_at)
"""


class RefreshStore(Protocol):
    async def renew(
        self, client_id: str, token_hash: str, new_hash: str, now: int, ttl: int
    ) -> Renewed | None:
        """Spend ``token_hash`` of ``client_id`` and insert ``new_hash`` (expiring ``ttl``
        seconds from ``now``, never after its grant) in the same family; the grant and the new
        token's expiry, or ``None`` when the token cannot be spent or its grant is not live."""
        ...

    async def aclose(self) -> None: ...


class SqlRefreshStore:
    """PostgreSQL: one autocommit statement (data-modifying CTEs), one round trip, on a small
    asyncpg pool of its own (no pre-ping, no ``BEGIN``/``COMMIT`` round trips)."""

    def __init__(self, url: str, max_size: int = 10) -> None:
        self._url = url
        self._max_size = max_size
        self._pool: asyncpg.Pool | None = None
        self._opening = asyncio.Lock()

    async def _connections(self) -> asyncpg.Pool:
        async with self._opening:
            if self._pool is None:
                self._pool = await asyncpg.create_pool(
                    self._url, min_size=1, max_size=self._max_size, reset=_keep_session
                )
        return self._pool

    async def renew(
        self, client_id: str, token_hash: str, new_hash: str, now: int, ttl: int
    ) -> Renewed | None:
        pool = self._pool or await self._connections()
        row: Renewed | None = await pool.fetchrow(
            _PG_REFRESH, client_id, token_hash, new_hash, now, ttl
        )
        return row

    async def aclose(self) -> None:
        if self._pool is not None:
            await self._pool.close()


async def _keep_session(_connection: asyncpg.Connection) -> None:
    """Return a connection to the pool as it is: the store runs single statements that change
    no session state, so asyncpg's default reset (a ``RESET ALL; UNLISTEN *; …`` round trip per
    use) is pure cost."""


def _params(client_id: str, token_hash: str, new_hash: str, now: int, ttl: int) -> dict[str, Any]:
    return {
        "client_id": client_id,
        "token_hash": token_hash,
        "new_hash": new_hash,
        "now": now,
        "ttl": ttl,
    }


class SqliteRefreshStore:
    """SQLite: one ``BEGIN IMMEDIATE`` transaction, inline when the write lock is free."""

    def __init__(self, path: str | Path) -> None:
        self._inline = self._connect(path, busy_ms=0)
        self._waiting = self._connect(path, busy_ms=10_000)
        self._waiting_lock = threading.Lock()

    @staticmethod
    def _connect(path: str | Path, busy_ms: int) -> sqlite3.Connection:
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA foreign_keys=ON")
        db.execute(f"PRAGMA busy_timeout={busy_ms}")
        db.execute("PRAGMA wal_autocheckpoint=0")  # the engine's background job checkpoints
        return db

    async def renew(
        self, client_id: str, token_hash: str, new_hash: str, now: int, ttl: int
    ) -> Renewed | None:
        params = _params(client_id, token_hash, new_hash, now, ttl)
        try:
            return _renew(self._inline, params)
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
        return await asyncio.to_thread(self._renew_waiting, params)

    def _renew_waiting(self, params: dict[str, Any]) -> Renewed | None:
        with self._waiting_lock:
            return _renew(self._waiting, params)

    async def aclose(self) -> None:
        self._inline.close()
        self._waiting.close()


def _renew(db: sqlite3.Connection, params: dict[str, Any]) -> Renewed | None:
    db.execute("BEGIN IMMEDIATE")  # raises at once if locked (inline: busy_timeout 0)
    try:
        spent = db.execute(_SPEND, params).fetchone()
        grant = None
        if spent is not None:
            grant = db.execute(_SQLITE_GRANT, {**params, "family": spent[0]}).fetchone()
        if grant is not None:
            expires_at = min(params["now"] + params["ttl"], grant[5])
            row = {**params, "family": grant[0], "scope": grant[3], "expires_at": expires_at}
            db.execute(_SQLITE_INSERT, row)
            grant = (*grant, expires_at)
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return grant


def refresh_store_for(engine: AsyncEngine) -> RefreshStore:
    """The store for ``engine``'s backend."""
    if engine.dialect.name == "sqlite":
        return SqliteRefreshStore(str(engine.url.database))
    url = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    return SqlRefreshStore(url)
