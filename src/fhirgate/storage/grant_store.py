"""The grant hot paths in one storage round trip each: redeem an authorization code (spend it,
open its grant, issue the first refresh token), refresh (spend a refresh token, check its grant,
issue the next one), and the check, on every request with a user's token, that its grant is still
live and the token itself not deny-listed.

Refreshing is the write every long-running application makes again and again, so both are
plain SQL per backend instead of SQLAlchemy's expression layer (docs/benchmarks.md):

* PostgreSQL: one autocommit statement whose data-modifying CTEs do every step — atomic, one
  round trip — on the direct statements' asyncpg connections.
* SQLite (embedded): the same steps in one ``BEGIN IMMEDIATE`` transaction on the direct
  statements' ``sqlite3`` connection, inline on the event loop (microseconds, no thread hop),
  never waiting there for the write lock (:mod:`fhirgate.storage.sqlite_inline`).

Each spend is a conditional ``UPDATE … WHERE consumed_at IS NULL``: of concurrent spends exactly
one wins. The spend and the inserts commit together or not at all (crash consistency).
A code or token that cannot be spent, or whose user or grant is no longer live, gives ``None``;
:class:`~fhirgate.storage.user_grants.GrantRepo` then tells reuse from error.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import asdict, astuple, dataclass
from typing import Any, Protocol

import asyncpg

from fhirgate.storage.direct import PostgresStatements, SqliteStatements
from fhirgate.storage.sqlite_inline import in_transaction

__all__ = [
    "ASYNCPG_ERRORS",
    "GrantStatements",
    "PostgresGrantStatements",
    "Spend",
    "SqliteGrantStatements",
    "grant_statements_for",
]

#: (grant_id, client_id, oneup_user_id, scope, auth_time, grant expires_at, refresh expires_at)
Issued = Sequence[Any]

#: What asyncpg raises when the database or the connection fails (storage faults: 503).
ASYNCPG_ERRORS: tuple[type[Exception], ...] = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)

#: Every statement's parameters, in asyncpg's ``$n`` order.
_PARAMETERS = ("client_id", "spent_hash", "new_hash", "now", "ttl", "grant_id", "family_ttl")

_SPEND_REFRESH = """
    UPDATE opaque_tokens SET consumed_at = :now
    WHERE token_hash = :spent_hash AND client_id = :client_id AND kind = 'refresh'
      AND consumed_at IS NULL AND revoked_at IS NULL AND expires_at > :now
    RETURNING family_id
"""
_GRANT_COLUMNS = "g.grant_id, g.client_id, g.oneup_user_id, g.scope, g.auth_time, g.expires_at"
_LIVE_GRANTS = """
    FROM user_grants g JOIN app_users u ON u.oneup_user_id = g.oneup_user_id
    WHERE g.revoked_at IS NULL AND g.expires_at > :now AND u.active
"""
_LIVE_GRANT = f"SELECT {_GRANT_COLUMNS} {_LIVE_GRANTS}"
_SPEND_CODE = """
    UPDATE authorization_codes SET consumed_at = :now, grant_id = :grant_id
    WHERE code_hash = :spent_hash AND client_id = :client_id
      AND consumed_at IS NULL AND expires_at > :now
    RETURNING oneup_user_id, scope, issued_at
"""
_OPEN_GRANT = """
    INSERT INTO user_grants
        (grant_id, client_id, oneup_user_id, scope, auth_time, created_at, expires_at)
    SELECT :grant_id, :client_id, u.oneup_user_id, {scope}, {auth_time}, :now, :now + :family_ttl
    FROM app_users u WHERE u.oneup_user_id = {user} AND u.active
    RETURNING grant_id, client_id, oneup_user_id, scope, auth_time, expires_at
"""
_NEXT_REFRESH = """
    INSERT INTO opaque_tokens
        (token_hash, kind, client_id, family_id, scope, issued_at, expires_at)
    SELECT :new_hash, 'refresh', client_id, grant_id, scope, :now, MIN_OF(:now + :ttl, expires_at)
    FROM {grant}
    RETURNING expires_at
"""


def _postgres(sql: str) -> str:
    """``:name`` parameters as asyncpg's ``$n``; ``MIN_OF`` as PostgreSQL's ``LEAST``."""
    for number, name in enumerate(_PARAMETERS, 1):
        sql = sql.replace(f":{name}", f"${number}")
    return sql.replace("MIN_OF", "LEAST")


_PG_RENEW = _postgres(
    f"""
    WITH spent AS ({_SPEND_REFRESH}),
    live AS ({_LIVE_GRANT} AND g.grant_id = (SELECT family_id FROM spent)),
    renewed AS ({_NEXT_REFRESH.format(grant="live")})
    SELECT live.*, renewed.expires_at FROM live, renewed
    """  # noqa: S608 (constant text; every value is a bound parameter)
)
_PG_REDEEM = _postgres(
    f"""
    WITH spent AS ({_SPEND_CODE}),
    opened AS ({
        _OPEN_GRANT.format(
            scope="(SELECT scope FROM spent)",
            auth_time="(SELECT issued_at FROM spent)",
            user="(SELECT oneup_user_id FROM spent)",
        )
    }),
    renewed AS ({_NEXT_REFRESH.format(grant="opened")})
    SELECT opened.*, renewed.expires_at FROM opened, renewed
    """  # noqa: S608 (constant text; every value is a bound parameter)
)
#: The grant of ``:family`` if live, and whether access token ``:jti`` of it is deny-listed: a
#: user token's deny-list entry is kept beside its grant (never in Redis) so that both are one
#: lookup (:meth:`GrantStatements.live`).
_LIVE_TOKEN = f"""
    SELECT {_GRANT_COLUMNS},
        EXISTS (SELECT 1 FROM revoked_tokens r WHERE r.jti = :jti AND r.expires_at >= :now)
    {_LIVE_GRANTS} AND g.grant_id = :family
"""  # noqa: S608 (constant text; every value is a bound parameter)
_PG_LIVE = _LIVE_TOKEN.replace(":now", "$1").replace(":family", "$2").replace(":jti", "$3")
# SQLite: the same statements one after the other, the previous one's result as parameters
_SQLITE_LIVE_GRANT = f"{_LIVE_GRANT} AND g.grant_id = :family"
_SQLITE_OPEN_GRANT = _OPEN_GRANT.format(scope=":scope", auth_time=":auth_time", user=":user")
_SQLITE_NEXT_REFRESH = _NEXT_REFRESH.format(grant="user_grants WHERE grant_id = :family").replace(
    "MIN_OF", "MIN"
)


@dataclass(frozen=True, slots=True)
class Spend:
    """One redemption or refresh: spend ``spent_hash`` (a code's or a refresh token's hash) of
    ``client_id`` at ``now``; the new refresh token ``new_hash`` lasts ``ttl`` seconds, never
    beyond its grant. A redemption opens grant ``grant_id`` for ``family_ttl`` seconds. The
    fields are in the order of :data:`_PARAMETERS`."""

    client_id: str
    spent_hash: str
    new_hash: str
    now: int
    ttl: int
    grant_id: str = ""
    family_ttl: int = 0


class GrantStatements(Protocol):
    async def redeem(self, spend: Spend) -> Issued | None:
        """Spend the code and, if its user is active, open the grant with its refresh token."""
        ...

    async def renew(self, spend: Spend) -> Issued | None:
        """Spend the refresh token and, if its grant is live, give it the next one."""
        ...

    async def live(self, grant_id: str, now: int, jti: str = "") -> Issued | None:
        """The grant (its first six columns) if it is not revoked, not expired and its user is
        active, then whether access token ``jti`` is deny-listed: the resource guard asks on
        every request with a user's token."""
        ...


class PostgresGrantStatements:
    """One autocommit statement per operation, on the direct statements' asyncpg connections
    (:class:`~fhirgate.storage.direct.PostgresStatements`)."""

    def __init__(self, statements: PostgresStatements) -> None:
        self._db = statements

    async def redeem(self, spend: Spend) -> Issued | None:
        return await self._db.fetchrow_args(_PG_REDEEM, astuple(spend))

    async def renew(self, spend: Spend) -> Issued | None:
        return await self._db.fetchrow_args(_PG_RENEW, astuple(spend)[:5])  # it uses five

    async def live(self, grant_id: str, now: int, jti: str = "") -> Issued | None:
        return await self._db.fetchrow_args(_PG_LIVE, (now, grant_id, jti))


Steps = Callable[[sqlite3.Connection, dict[str, Any]], Issued | None]


class SqliteGrantStatements:
    """One ``BEGIN IMMEDIATE`` transaction per operation on the direct statements' connections,
    inline when the write lock is free (:class:`~fhirgate.storage.sqlite_inline.InlineSqlite`)."""

    def __init__(self, statements: SqliteStatements) -> None:
        self._db = statements

    async def redeem(self, spend: Spend) -> Issued | None:
        return await self._transaction(_redeem, spend)

    async def renew(self, spend: Spend) -> Issued | None:
        return await self._transaction(_renew, spend)

    async def live(self, grant_id: str, now: int, jti: str = "") -> Issued | None:
        named = {"family": grant_id, "now": now, "jti": jti}
        row: Issued | None = await self._db.run(
            lambda db: db.execute(_LIVE_TOKEN, named).fetchone()
        )
        return row

    async def _transaction(self, steps: Steps, spend: Spend) -> Issued | None:
        named = asdict(spend)
        return await self._db.run(lambda db: _in_transaction(db, steps, named))


def _in_transaction(db: sqlite3.Connection, steps: Steps, named: dict[str, Any]) -> Issued | None:
    return in_transaction(db, lambda db: steps(db, named))


def _issue_refresh(db: sqlite3.Connection, named: dict[str, Any], grant: Issued) -> Issued:
    expires = db.execute(_SQLITE_NEXT_REFRESH, {**named, "family": grant[0]}).fetchone()
    return (*grant, expires[0])


def _renew(db: sqlite3.Connection, named: dict[str, Any]) -> Issued | None:
    spent = db.execute(_SPEND_REFRESH, named).fetchone()
    if spent is None:
        return None
    grant = db.execute(_SQLITE_LIVE_GRANT, {**named, "family": spent[0]}).fetchone()
    return None if grant is None else _issue_refresh(db, named, grant)


def _redeem(db: sqlite3.Connection, named: dict[str, Any]) -> Issued | None:
    spent = db.execute(_SPEND_CODE, named).fetchone()
    if spent is None:
        return None
    user, scope, auth_time = spent
    opened = {**named, "user": user, "scope": scope, "auth_time": auth_time}
    grant = db.execute(_SQLITE_OPEN_GRANT, opened).fetchone()
    return None if grant is None else _issue_refresh(db, named, grant)


def grant_statements_for(
    statements: SqliteStatements | PostgresStatements,
) -> GrantStatements:
    """The grant operations on the connections of ``statements``' backend."""
    if isinstance(statements, SqliteStatements):
        return SqliteGrantStatements(statements)
    return PostgresGrantStatements(statements)
