"""Redox legacy API keys: an ``apiKey`` and ``secret`` exchanged for an opaque 24-hour access
token and a refresh token (Redox, "Authenticate a legacy API key").

The ``apiKey`` is the client id of a ``legacy_api_key`` client; its ``secret`` is checked
exactly like a client secret (:mod:`fhirgate.oauth.client_auth.client_secret`), with the same
throttling and audit. Refreshing spends the refresh token and returns a new pair of the same
family; a spent refresh token presented again revokes the family. The resource guard accepts the
access tokens (:meth:`LegacyKeyService.verify`).
"""

from __future__ import annotations

import time

from fhirgate.domain.clients import AuthMethod, Client
from fhirgate.domain.stores import AuditSink, OpaqueTokenStore
from fhirgate.domain.tokens import IssuedPair, OpaqueKind, OpaqueToken
from fhirgate.oauth.client_auth import ClientAuthenticator, SecretCredentials
from fhirgate.oauth.clients import ClientDirectory
from fhirgate.oauth.errors import InvalidGrant, InvalidToken
from fhirgate.oauth.scopes import ScopeError, parse_scopes
from fhirgate.oauth.tokens import Principal, bounded

__all__ = ["LegacyKeyService"]

_MAX_TOKEN_CHARS = 512


class LegacyKeyService:
    """Issues, refreshes and verifies legacy API key tokens."""

    def __init__(
        self,
        authenticator: ClientAuthenticator,
        directory: ClientDirectory,
        tokens: OpaqueTokenStore,
        audit: AuditSink,
        *,
        access_ttl: int,
        refresh_ttl: int,
    ) -> None:
        self._authenticator = authenticator
        self._directory = directory
        self._tokens = tokens
        self._audit = audit
        self._access_ttl = access_ttl
        self._refresh_ttl = refresh_ttl

    async def authenticate(self, api_key: str, secret: str, source: str) -> IssuedPair:
        """``POST /auth/authenticate``: a new token family."""
        presented = SecretCredentials(api_key, secret, AuthMethod.LEGACY_API_KEY)
        client = await self._authenticator.authenticate(presented, None, source)
        ttl = self.lifetime(client)
        pair = await self._tokens.issue_pair(client.client_id, client.scope, ttl, self._refresh_ttl)
        await self._issued(client.client_id, pair, source, "secret")
        return pair

    def lifetime(self, client: Client) -> int:
        """The lifetime of the client's access tokens: its own, else ``access_ttl``."""
        return client.token_lifetime or self._access_ttl

    async def refresh(self, api_key: str, refresh_token: str, source: str) -> IssuedPair:
        """``POST /auth/refreshToken``: spend the refresh token, get a new pair."""
        self._authenticator.throttle(source, api_key)
        pair = None
        if max(len(api_key), len(refresh_token)) <= _MAX_TOKEN_CHARS:
            registered = await self._directory.get(api_key)
            client = registered.client if registered is not None else None
            legacy = client is not None and client.auth_method == AuthMethod.LEGACY_API_KEY
            if client is not None and client.active and legacy:
                ttl = self.lifetime(client)
                pair = await self._tokens.rotate(api_key, refresh_token, ttl, self._refresh_ttl)
        if pair is None:
            error = InvalidGrant(check="refresh_token_invalid")
            await self._authenticator.failed(error, source, api_key)
            raise error
        await self._issued(api_key, pair, source, "refreshToken")
        return pair

    async def _issued(self, client_id: str, pair: IssuedPair, source: str, grant: str) -> None:
        """Store the pair's audit row before it leaves."""
        await self._audit.issued(
            "token.issued",
            client_id=client_id,
            source=source,
            detail=f"family={pair.family_id[:36]} dialect=redox-legacy grant={grant}",
        )

    async def verify(self, token: str) -> Principal:
        """A live legacy access token's principal (the resource guard); else ``invalid_token``."""
        record = None if len(token) > _MAX_TOKEN_CHARS else await self._tokens.find(token)
        if record is None or record.kind != OpaqueKind.ACCESS or not record.live(time.time()):
            raise InvalidToken(check="opaque_unknown", detail="unknown, expired or revoked token")
        registered = await self._directory.get(record.client_id)
        if registered is None or not registered.client.active:
            raise InvalidToken(check="client_inactive", detail="client revoked or deleted")
        return self.principal(record, registered.client)

    def principal(self, record: OpaqueToken, client: Client) -> Principal:
        """The principal of a live access token ``record`` of ``client``; ``invalid_token``
        if the client could not get that token now (:func:`~fhirgate.oauth.tokens.bounded`)."""
        try:
            scopes = parse_scopes(record.scope)
        except ScopeError as exc:
            raise InvalidToken(check="scope", detail=str(exc)) from exc
        environment = client.environment
        principal = Principal(
            client_id=record.client_id,
            subject=record.client_id,
            scopes=scopes,
            expires_at=record.expires_at,
            issued_at=record.issued_at,
            jti=record.token_hash,
            organization_id=environment.organization_id,
            environment=environment.kind,
        )
        bounded(principal, client.scope, self.lifetime(client))
        return principal
