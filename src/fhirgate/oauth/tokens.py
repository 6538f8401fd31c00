"""Access tokens: JWTs per RFC 9068, issued here and verified by the resource guard.

A token is ``{"typ": "at+jwt", "alg": "ES256", "kid"}`` over the claims ``iss``, ``sub``,
``aud``, ``exp``, ``iat``, ``jti``, ``client_id``, ``scope`` (RFC 9068 §2.2) and fhirgate's
``organization`` and ``environment``. Verification checks type, algorithm, key, signature,
issuer, audience, expiry and the ``jti`` deny-list (RFC 9068 §4).
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass

from fhirgate.oauth.errors import InvalidToken
from fhirgate.oauth.jose import CompactSigner, JWSError, parse_compact, verify_signature
from fhirgate.oauth.keys import ACCESS_TOKEN_ALG, Keyring, SigningKey
from fhirgate.oauth.scopes import ScopeError, ScopeSet, parse_scopes
from fhirgate.storage.models import AuthMethod
from fhirgate.storage.repos import Client
from fhirgate.storage.ttl_sets import TTLSet

__all__ = ["AccessTokenService", "IssuedToken", "Principal"]

TOKEN_TYPE = "at+jwt"  # noqa: S105 (a media type)
_MAX_TOKEN_CHARS = 8192
_VERIFIED_CACHE = 4096  # tokens whose signature was checked, most recent last


@dataclass(frozen=True, slots=True)
class IssuedToken:
    access_token: str
    expires_in: int
    scope: str
    jti: str
    client_id: str


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a verified access token speaks for, and what it grants."""

    client_id: str
    subject: str
    scopes: ScopeSet
    expires_at: int
    issued_at: int
    jti: str
    organization_id: str
    environment: str


class AccessTokenService:
    """Issues and verifies fhirgate access tokens."""

    def __init__(
        self,
        keyring: Keyring,
        revoked: TTLSet,
        *,
        issuer: str,
        audience: str,
        ttl: int,
        secret_ttl: int,
    ) -> None:
        self._keyring = keyring
        self._revoked = revoked
        self._issuer = issuer
        self._audience = audience
        self.ttl = ttl
        self._secret_ttl = secret_ttl
        self._compact_signer: tuple[SigningKey, CompactSigner] | None = None
        self._verified: OrderedDict[str, Principal] = OrderedDict()

    def lifetime(self, client: Client) -> int:
        """The client's own token lifetime, else its method's default: ``ttl`` (≤ 300 s, SMART
        Backend Services) for ``private_key_jwt``, ``secret_ttl`` for secret clients."""
        if client.token_lifetime:
            return client.token_lifetime
        if client.auth_method == AuthMethod.PRIVATE_KEY_JWT:
            return self.ttl
        return self._secret_ttl

    def issue(self, client: Client, scope: str) -> IssuedToken:
        """Sign an access token for ``client`` (RFC 9068 §2)."""
        signer = self._keyring.signer
        issued_at = int(time.time())
        ttl = self.lifetime(client)
        jti = secrets.token_urlsafe(16)
        claims = {
            "iss": self._issuer,
            "sub": client.client_id,
            "aud": self._audience,
            "exp": issued_at + ttl,
            "iat": issued_at,
            "jti": jti,
            "client_id": client.client_id,
            "scope": scope,
            "organization": client.environment.organization_id,
            "environment": client.environment.kind,
        }
        return IssuedToken(self._signer(signer).sign(claims), ttl, scope, jti, client.client_id)

    def _signer(self, key: SigningKey) -> CompactSigner:
        """The signer of ``key``, built once per active key (its header never changes)."""
        cached = self._compact_signer
        if cached is None or cached[0] is not key:
            header = {"alg": ACCESS_TOKEN_ALG, "typ": TOKEN_TYPE, "kid": key.kid}
            cached = self._compact_signer = (key, CompactSigner(header, key.private_key))
        return cached[1]

    async def revoke(self, principal: Principal) -> None:
        """Deny-list a token's ``jti`` until it would have expired anyway."""
        await self._revoked.add(principal.jti, principal.expires_at)

    async def verify(self, token: str) -> Principal:
        """Validate a bearer token (RFC 9068 §4); any failure is ``invalid_token``.

        A token whose signature and claims were checked recently is found in a bounded cache
        keyed by the exact token text (so nothing else can match it); its expiry and the
        deny-list are checked on every call all the same."""
        principal = self._verified.get(token)
        if principal is None:
            principal = await self._verify_signed(token)
            self._verified[token] = principal
            if len(self._verified) > _VERIFIED_CACHE:
                self._verified.popitem(last=False)
        elif principal.expires_at <= time.time():
            del self._verified[token]
            raise InvalidToken(check="expired", detail="token has expired")
        if await self._revoked.contains(principal.jti):
            raise InvalidToken(check="revoked", detail="token has been revoked")
        return principal

    async def _verify_signed(self, token: str) -> Principal:
        if len(token) > _MAX_TOKEN_CHARS:
            raise InvalidToken(check="size", detail="token too long")
        try:
            jws = parse_compact(token)
        except JWSError as exc:
            raise InvalidToken(check="malformed", detail=str(exc)) from exc
        header, claims = jws.header, jws.claims
        if header.get("typ") != TOKEN_TYPE or header.get("alg") != ACCESS_TOKEN_ALG:
            raise InvalidToken(check="header", detail="not an fhirgate access token")
        kid = header.get("kid")
        key = await self._keyring.public_key(kid) if isinstance(kid, str) else None
        if key is None or not verify_signature(
            ACCESS_TOKEN_ALG, key, jws.signing_input, jws.signature
        ):
            raise InvalidToken(check="signature", detail="unknown key or bad signature")
        return self._principal(claims)

    def _principal(self, claims: dict[str, object]) -> Principal:
        now = int(time.time())
        exp, iat = claims.get("exp"), claims.get("iat")
        if claims.get("iss") != self._issuer or claims.get("aud") != self._audience:
            raise InvalidToken(check="iss_aud", detail="wrong issuer or audience")
        if not isinstance(exp, int) or exp <= now or not isinstance(iat, int):
            raise InvalidToken(check="expired", detail="token has expired")
        try:
            scopes = parse_scopes(str(claims.get("scope", "")))
        except ScopeError as exc:
            raise InvalidToken(check="scope", detail=str(exc)) from exc
        return Principal(
            client_id=str(claims["client_id"]),
            subject=str(claims["sub"]),
            scopes=scopes,
            expires_at=exp,
            issued_at=iat,
            jti=str(claims["jti"]),
            organization_id=str(claims["organization"]),
            environment=str(claims["environment"]),
        )
