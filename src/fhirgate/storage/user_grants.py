"""Authorization codes and user grants (RFC 6749 §4.1, §6): what a user's application holds.

A code is 256 random bits stored only as its SHA-256 hash, bound to the application, the user
and the scope, single-use. Redeeming it is one transaction (one statement on PostgreSQL): a
conditional ``UPDATE … WHERE consumed_at IS NULL`` spends it (of any number of concurrent
redemptions exactly one wins, on SQLite and PostgreSQL alike), then the grant (the token family)
and its first refresh token are inserted. So a redemption interrupted before its commit leaves
the code unused, and one after its commit leaves a spent code whose grant is recorded and
revocable: never two live families.

A spent code presented again means it leaked: the grant it produced is revoked with every token
of its family (RFC 6749 §4.1.2, RFC 9700 §4.5). Refreshing spends the refresh token the same way
and adds the next one to the family, in one round trip (:mod:`fhirgate.storage.grant_store`).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import and_, delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from fhirgate.domain.stores import TTLSet
from fhirgate.domain.tokens import Redemption, TokenStanding, UserGrant
from fhirgate.storage.database import Database
from fhirgate.storage.grant_store import Spend
from fhirgate.storage.models import AuthorizationCodeRow, OpaqueTokenRow, UserGrantRow
from fhirgate.storage.opaque_tokens import OpaqueTokenRepo, hash_token, new_token

__all__ = ["GrantRepo", "end_user_grants"]


_GRANT_COLUMNS = (
    UserGrantRow.grant_id,
    UserGrantRow.client_id,
    UserGrantRow.oneup_user_id,
    UserGrantRow.scope,
    UserGrantRow.auth_time,
    UserGrantRow.expires_at,
)


def _grant(row: Sequence[Any]) -> UserGrant:
    grant_id, client_id, oneup_user_id, scope, auth_time, expires_at = tuple(row)
    return UserGrant(grant_id, client_id, int(oneup_user_id), scope, auth_time, expires_at)


class GrantRepo:
    """Issues and redeems codes; refreshes, checks and revokes user grants and their access
    tokens.

    A user grant's access tokens are deny-listed in ``denied``, the database's deny-list
    (``revoked_tokens``), even when Redis holds the other tokens' one: there the guard's check
    of a user token and of its grant is a single lookup (:meth:`token_standing`).
    """

    def __init__(
        self,
        database: Database,
        opaque: OpaqueTokenRepo,
        *,
        denied: TTLSet,
        family_ttl: int,
        refresh_ttl: int,
    ) -> None:
        self._engine = database.engine
        self._store = database.grants
        self._opaque = opaque
        self._denied = denied
        self._family_ttl = family_ttl
        self._refresh_ttl = refresh_ttl

    async def issue_code(self, client_id: str, oneup_user_id: int, scope: str, ttl: int) -> str:
        """A new single-use code for ``client_id`` acting as ``oneup_user_id``."""
        code, issued = new_token(), int(time.time())
        async with self._engine.begin() as conn:
            await conn.execute(
                insert(AuthorizationCodeRow).values(
                    code_hash=hash_token(code),
                    client_id=client_id,
                    oneup_user_id=oneup_user_id,
                    scope=scope,
                    issued_at=issued,
                    expires_at=issued + ttl,
                )
            )
        return code

    async def redeem_code(self, client_id: str, code: str) -> Redemption | None:
        """Spend ``code`` of ``client_id`` and open its grant, in one round trip
        (:mod:`fhirgate.storage.grant_store`); ``None`` when the code is unknown, another
        application's, expired or spent (then the grant it produced is revoked), or its user is
        inactive."""
        now, token, spent = int(time.time()), new_token(), hash_token(code)
        issued = await self._store.redeem(
            Spend(
                client_id,
                spent,
                hash_token(token),
                now,
                self._refresh_ttl,
                str(uuid.uuid4()),
                self._family_ttl,
            )
        )
        if issued is None:
            mine = and_(
                AuthorizationCodeRow.code_hash == spent,
                AuthorizationCodeRow.client_id == client_id,
            )
            async with self._engine.begin() as conn:
                await self._revoke_reused_code(conn, mine, now)
            return None
        return Redemption(_grant(issued[:6]), token, int(issued[6]))

    async def _revoke_reused_code(self, conn: AsyncConnection, mine: Any, now: int) -> None:
        spent = (
            await conn.execute(
                select(AuthorizationCodeRow.grant_id).where(
                    mine, AuthorizationCodeRow.consumed_at.is_not(None)
                )
            )
        ).scalar()
        if spent is not None:
            await self._opaque.revoke_family_in(conn, spent, now)

    async def refresh(self, client_id: str, refresh_token: str) -> Redemption | None:
        """Spend a refresh token of ``client_id`` and issue the next one of its family, in one
        round trip (:mod:`fhirgate.storage.grant_store`); ``None`` when it cannot be spent
        (then, if it is being reused, its family is revoked) or its grant is no longer live."""
        now, token, spent = int(time.time()), new_token(), hash_token(refresh_token)
        renewed = await self._store.renew(
            Spend(client_id, spent, hash_token(token), now, self._refresh_ttl)
        )
        if renewed is None:
            async with self._engine.begin() as conn:
                await self._opaque.revoke_if_reused(conn, client_id, spent, now)
            return None
        return Redemption(_grant(renewed[:6]), token, int(renewed[6]))

    async def live(self, grant_id: str) -> UserGrant | None:
        """The grant, if it is neither revoked nor expired and its user is active."""
        row = await self._store.live(grant_id, int(time.time()))
        return None if row is None else _grant(row[:6])

    async def token_standing(self, grant_id: str, jti: str) -> TokenStanding:
        """Whether access token ``jti`` of grant ``grant_id`` may be used: its grant live and
        the token not deny-listed — one round trip through the grant store, made on every
        request with a user's token."""
        row = await self._store.live(grant_id, int(time.time()), jti)
        if row is None:
            return TokenStanding.GRANT_ENDED
        return TokenStanding.REVOKED if row[6] else TokenStanding.LIVE

    async def deny_token(self, jti: str, expires_at: int) -> None:
        """Deny-list access token ``jti`` of a user grant until it would have expired."""
        await self._denied.add(jti, expires_at)

    async def revoke_user(
        self, client_id: str, oneup_user_id: int, conn: AsyncConnection | None = None
    ) -> None:
        """End everything ``client_id`` holds for the user (:func:`end_user_grants`), in the
        caller's transaction or in one of its own."""
        if conn is None:
            async with self._engine.begin() as own:
                await end_user_grants(own, client_id, oneup_user_id)
        else:
            await end_user_grants(conn, client_id, oneup_user_id)

    async def purge(self) -> int:
        """Drop codes and grants that ended a day ago (a reused code or refresh token is
        recognised, and its grant revoked, until then), and the expired entries of the
        deny-list."""
        cutoff = int(time.time()) - 86_400
        async with self._engine.begin() as conn:
            codes = await conn.execute(
                delete(AuthorizationCodeRow).where(AuthorizationCodeRow.expires_at < cutoff)
            )
            grants = await conn.execute(
                delete(UserGrantRow).where(UserGrantRow.expires_at < cutoff)
            )
        return int(codes.rowcount) + int(grants.rowcount) + await self._denied.purge()


async def end_user_grants(conn: AsyncConnection, client_id: str, oneup_user_id: int) -> None:
    """End everything ``client_id`` holds for the user: unused codes, grants and their
    tokens. Codes go first: a redemption racing this either lost its code already or
    produced a grant that the grant update below then sees (PostgreSQL row locks)."""
    now = int(time.time())
    await conn.execute(
        update(AuthorizationCodeRow)
        .where(
            AuthorizationCodeRow.client_id == client_id,
            AuthorizationCodeRow.oneup_user_id == oneup_user_id,
            AuthorizationCodeRow.consumed_at.is_(None),
        )
        .values(consumed_at=now)
    )
    users_grants = select(UserGrantRow.grant_id).where(
        UserGrantRow.client_id == client_id, UserGrantRow.oneup_user_id == oneup_user_id
    )
    await conn.execute(
        update(OpaqueTokenRow)
        .where(OpaqueTokenRow.family_id.in_(users_grants), OpaqueTokenRow.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    await conn.execute(
        update(UserGrantRow)
        .where(
            UserGrantRow.client_id == client_id,
            UserGrantRow.oneup_user_id == oneup_user_id,
            UserGrantRow.revoked_at.is_(None),
        )
        .values(revoked_at=now)
    )
