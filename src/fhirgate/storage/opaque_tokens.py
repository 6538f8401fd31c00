"""Opaque tokens — legacy access tokens and refresh tokens (legacy API keys and user grants) —
stored only as SHA-256 hashes.

A token is 256 random bits, so a plain SHA-256 is enough to make a stolen table useless (no guessing
is possible; docs/security.md#opaque-tokens-legacy-api-keys-and-refresh-tokens). Tokens issued
together share a family; refresh rotation is one conditional ``UPDATE … WHERE consumed_at IS NULL``,
so of any number of concurrent refreshes with one token exactly one wins, on SQLite and PostgreSQL
alike (RFC 6819 §5.2.2.3).
"""

from __future__ import annotations

import hashlib
import secrets
import time
import uuid
from typing import Any

from sqlalchemy import Row, and_, delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from fhirgate.domain.tokens import IssuedPair, OpaqueKind, OpaqueToken
from fhirgate.storage.models import OpaqueTokenRow, UserGrantRow

__all__ = [
    "REUSE_GRACE",
    "OpaqueTokenRepo",
    "hash_token",
    "new_token",
]

#: A refresh token presented again this soon after it was spent is a concurrent duplicate or a
#: retry of the same client (refused, nothing revoked); later, it is reuse (family revoked).
REUSE_GRACE = 2


def new_token() -> str:
    """256 random bits, base64url (RFC 6749 §10.10)."""
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


_COLUMNS = (
    OpaqueTokenRow.token_hash,
    OpaqueTokenRow.kind,
    OpaqueTokenRow.client_id,
    OpaqueTokenRow.family_id,
    OpaqueTokenRow.scope,
    OpaqueTokenRow.issued_at,
    OpaqueTokenRow.expires_at,
    OpaqueTokenRow.consumed_at,
    OpaqueTokenRow.revoked_at,
)


def _row(
    token: str,
    kind: OpaqueKind,
    client_id: str,
    family_id: str,
    scope: str,
    issued_at: int,
    expires_at: int,
) -> dict[str, Any]:
    return {
        "token_hash": hash_token(token),
        "kind": kind.value,
        "client_id": client_id,
        "family_id": family_id,
        "scope": scope,
        "issued_at": issued_at,
        "expires_at": expires_at,
    }


def _token(row: Row[Any]) -> OpaqueToken:
    values: tuple[Any, ...] = tuple(row)
    return OpaqueToken(*values)


class OpaqueTokenRepo:
    """Issue, find, rotate and revoke opaque tokens."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def issue_pair(
        self,
        client_id: str,
        scope: str,
        access_ttl: int,
        refresh_ttl: int,
        family_id: str | None = None,
        conn: AsyncConnection | None = None,
    ) -> IssuedPair:
        """An access token and a refresh token of one family (a new family by default)."""
        now = int(time.time())
        family = family_id or str(uuid.uuid4())
        access, refresh = new_token(), new_token()
        rows = [
            _row(access, OpaqueKind.ACCESS, client_id, family, scope, now, now + access_ttl),
            _row(refresh, OpaqueKind.REFRESH, client_id, family, scope, now, now + refresh_ttl),
        ]
        if conn is not None:
            await conn.execute(insert(OpaqueTokenRow), rows)
        else:
            async with self._engine.begin() as own:
                await own.execute(insert(OpaqueTokenRow), rows)
        return IssuedPair(access, now + access_ttl, refresh, family)

    async def find(self, token: str) -> OpaqueToken | None:
        """The token's record, whatever its state."""
        stmt = select(*_COLUMNS).where(OpaqueTokenRow.token_hash == hash_token(token))
        async with self._engine.connect() as conn:
            row = (await conn.execute(stmt)).first()
        return None if row is None else _token(row)  # type: ignore[arg-type]

    async def rotate(
        self, client_id: str, refresh_token: str, access_ttl: int, refresh_ttl: int
    ) -> IssuedPair | None:
        """Spend ``refresh_token`` of ``client_id`` and issue a new pair in its family, in one
        transaction; ``None`` when it cannot be spent (:meth:`spend`)."""
        async with self._engine.begin() as conn:
            spent = await self.spend(conn, client_id, refresh_token)
            if spent is None:
                return None
            family, scope = spent
            return await self.issue_pair(
                client_id, scope, access_ttl, refresh_ttl, family, conn=conn
            )

    async def spend(
        self, conn: AsyncConnection, client_id: str, refresh_token: str
    ) -> tuple[str, str] | None:
        """Mark ``refresh_token`` of ``client_id`` used, inside the caller's transaction;
        its ``(family_id, scope)``.

        ``None`` when the token is unknown, another client's, expired or revoked — or already
        spent, in which case its whole family is revoked (reuse means it was stolen, RFC 9700
        §4.14.2), unless it was spent within ``REUSE_GRACE`` seconds: that is the same client's
        concurrent or retried request, refused without ending the session the winner just
        received. One conditional ``UPDATE``: of concurrent spends exactly one wins."""
        token_hash, now = hash_token(refresh_token), int(time.time())
        mine = and_(
            OpaqueTokenRow.token_hash == token_hash,
            OpaqueTokenRow.client_id == client_id,
            OpaqueTokenRow.kind == OpaqueKind.REFRESH.value,
        )
        spent = await conn.execute(
            update(OpaqueTokenRow)
            .where(
                mine,
                OpaqueTokenRow.consumed_at.is_(None),
                OpaqueTokenRow.revoked_at.is_(None),
                OpaqueTokenRow.expires_at > now,
            )
            .values(consumed_at=now)
            .returning(OpaqueTokenRow.family_id, OpaqueTokenRow.scope)
        )
        won = spent.first()
        if won is not None:
            return str(won[0]), str(won[1])
        await self.revoke_if_reused(conn, client_id, token_hash, now)
        return None

    async def revoke_if_reused(
        self, conn: AsyncConnection, client_id: str, token_hash: str, now: int
    ) -> None:
        """A refresh token of ``client_id`` that could not be spent: if it was spent more than
        ``REUSE_GRACE`` seconds ago, it is being reused — revoke its family."""
        reused = (
            await conn.execute(
                select(OpaqueTokenRow.family_id).where(
                    OpaqueTokenRow.token_hash == token_hash,
                    OpaqueTokenRow.client_id == client_id,
                    OpaqueTokenRow.kind == OpaqueKind.REFRESH.value,
                    OpaqueTokenRow.consumed_at < now - REUSE_GRACE,
                )
            )
        ).scalar()
        if reused is not None:
            await self.revoke_family_in(conn, reused, now)

    async def revoke_family(self, family_id: str) -> None:
        async with self._engine.begin() as conn:
            await self.revoke_family_in(conn, family_id, int(time.time()))

    @staticmethod
    async def revoke_family_in(conn: AsyncConnection, family_id: str, now: int) -> None:
        """Revoke every token of a family; a user grant's family also ends the grant, so the
        access tokens issued under it fail at the resource guard at once."""
        await conn.execute(
            update(OpaqueTokenRow)
            .where(OpaqueTokenRow.family_id == family_id, OpaqueTokenRow.revoked_at.is_(None))
            .values(revoked_at=now)
        )
        await conn.execute(
            update(UserGrantRow)
            .where(UserGrantRow.grant_id == family_id, UserGrantRow.revoked_at.is_(None))
            .values(revoked_at=now)
        )

    async def revoke(self, token_hash: str) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(
                update(OpaqueTokenRow)
                .where(OpaqueTokenRow.token_hash == token_hash, OpaqueTokenRow.revoked_at.is_(None))
                .values(revoked_at=int(time.time()))
            )

    async def purge(self) -> int:
        """Drop tokens that expired (a day ago, so a reused refresh token is still recognised
        for a while after its expiry)."""
        cutoff = int(time.time()) - 86_400
        async with self._engine.begin() as conn:
            result = await conn.execute(
                delete(OpaqueTokenRow).where(OpaqueTokenRow.expires_at < cutoff)
            )
        return int(result.rowcount)
