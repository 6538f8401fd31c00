"""Token introspection (RFC 7662) and revocation (RFC 7009) for an authenticated client.

A client sees and revokes only its own tokens. Introspection answers exactly
``{"active": false}`` for a token that is unknown, expired, revoked, malformed, of a revoked
client or another client's (RFC 7662 §2.2: no hint of why); revocation of such a token changes
nothing and answers like success (RFC 7009 §2.2). Revoking an access token JWT deny-lists its
``jti`` until it expires, which the resource guard checks on every request on every replica;
revoking an opaque access token marks it revoked; revoking a refresh token revokes its whole
family, the access tokens issued with it included (RFC 7009 §2.1). A token is active only while
its client could get it now (scopes within the client's current allowed scopes, lifetime within
its current maximum: the resource guard's rule). A token of a user grant is active only while
the grant is (not revoked, not past its absolute lifetime, its user active);
its ``sub`` is the user's ``oneup_user_id``.
"""

from __future__ import annotations

import time
from typing import Any

from fhirgate.domain.clients import AuthMethod, Client
from fhirgate.domain.stores import GrantStore, OpaqueTokenStore
from fhirgate.domain.tokens import OpaqueKind, OpaqueToken, is_jwt
from fhirgate.oauth.errors import InvalidToken
from fhirgate.oauth.legacy import LegacyKeyService
from fhirgate.oauth.tokens import AccessTokenService, Principal

__all__ = ["INACTIVE", "TokenInspector"]

INACTIVE: dict[str, Any] = {"active": False}


class TokenInspector:
    """Introspects and revokes the tokens of the calling client."""

    def __init__(
        self,
        tokens: AccessTokenService,
        legacy: LegacyKeyService,
        opaque: OpaqueTokenStore,
        grants: GrantStore,
        issuer: str,
    ) -> None:
        self._tokens = tokens
        self._legacy = legacy
        self._opaque = opaque
        self._grants = grants
        self._issuer = issuer

    async def _own_jwt(self, token: str, caller: Client) -> Principal | None:
        try:
            principal = await self._tokens.verify(token)
            if principal.client_id != caller.client_id:
                return None
            self._tokens.check_client(principal, caller)
        except InvalidToken:
            return None
        return principal

    async def _own_opaque(self, token: str, caller: Client) -> OpaqueToken | None:
        record = await self._opaque.find(token)
        if record is None or record.client_id != caller.client_id:
            return None
        return record if record.live(time.time()) else None

    async def introspect(self, token: str, caller: Client) -> dict[str, Any]:
        """RFC 7662 §2.2 response for ``token`` as ``caller`` may see it."""
        if not caller.active:
            return INACTIVE
        if is_jwt(token):
            principal = await self._own_jwt(token, caller)
            if principal is None:
                return INACTIVE
            return self._active(
                principal.scopes,
                caller,
                principal.expires_at,
                principal.issued_at,
                "Bearer",
                principal.subject,
            )
        record = await self._own_opaque(token, caller)
        if record is None or not self._bounded(record, caller):
            return INACTIVE
        subject = caller.client_id
        if record.kind == OpaqueKind.REFRESH and caller.auth_method != AuthMethod.LEGACY_API_KEY:
            grant = await self._grants.live(record.family_id)  # a user grant's refresh token
            if grant is None:
                return INACTIVE
            subject = str(grant.oneup_user_id)
        kind = "Bearer" if record.kind == OpaqueKind.ACCESS else "refresh_token"
        return self._active(
            record.scope, caller, record.expires_at, record.issued_at, kind, subject
        )

    def _bounded(self, record: OpaqueToken, caller: Client) -> bool:
        """An opaque access token (a legacy key's) is active only while its client could get
        it now, as the resource guard demands."""
        if record.kind != OpaqueKind.ACCESS:
            return True
        try:
            self._legacy.principal(record, caller)
        except InvalidToken:
            return False
        return True

    def _active(
        self, scope: object, caller: Client, exp: int, iat: int, token_type: str, subject: str
    ) -> dict[str, Any]:
        return {
            "active": True,
            "scope": str(scope),
            "client_id": caller.client_id,
            "exp": exp,
            "iat": iat,
            "sub": subject,
            "iss": self._issuer,
            "token_type": token_type,
        }

    async def revoke(self, token: str, caller: Client) -> None:
        """RFC 7009 §2.1: revoke ``token`` if it is the caller's; otherwise do nothing."""
        if is_jwt(token):
            principal = await self._own_jwt(token, caller)
            if principal is not None:
                await self._tokens.revoke(principal)
            return
        record = await self._own_opaque(token, caller)
        if record is None:
            return
        if record.kind == OpaqueKind.REFRESH:
            await self._opaque.revoke_family(record.family_id)
        else:
            await self._opaque.revoke(record.token_hash)
