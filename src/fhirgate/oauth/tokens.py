"""Access tokens: JWTs per RFC 9068, issued here and verified by the resource guard.

A token is ``{"typ": "at+jwt", "alg": "ES256", "kid"}`` over the claims ``iss``, ``sub``,
``aud``, ``exp``, ``iat``, ``jti``, ``client_id``, ``scope`` (RFC 9068 §2.2) and fhirgate's
``organization`` and ``environment``. A token an application holds for one of its users (a user
grant, 1upHealth dialect) has that user as ``sub`` (RFC 9068 §2.2: the resource owner) and
carries ``oneup_user_id`` and ``grant_id``. Verification checks type, algorithm, key, signature,
issuer, audience, expiry and the ``jti`` deny-list (RFC 9068 §4), and for a user's token that
its grant is live (not revoked, not past its lifetime, its user active): a grant ended on one
replica ends its tokens on every replica at once.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass

from fhirgate.domain.clients import AuthMethod, Client
from fhirgate.domain.stores import DenyList, GrantStore
from fhirgate.domain.tokens import TokenStanding, UserGrant
from fhirgate.oauth.errors import InvalidToken
from fhirgate.oauth.jose import JWSError, parse_compact, verify_signature
from fhirgate.oauth.keys import ACCESS_TOKEN_ALG, Keyring, KeySigner
from fhirgate.oauth.scopes import ScopeError, ScopeSet, parse_scopes, within

__all__ = ["AccessTokenService", "IssuedToken", "Principal", "bounded"]

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
    refresh_token: str | None = None
    id_token: str | None = None


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
    #: The application user the token acts for (a user grant, or ``x-oneup-user-id``).
    user_id: int | None = None
    #: The user grant the token was issued under (checked live on every request).
    grant_id: str | None = None
    #: ``x-oneup-user-id: client``: every user of the application (the FHIR store's
    #: application-wide reach, which reads only).
    all_users: bool = False


def bounded(principal: Principal, allowed: str, longest: int, *, identity: bool = False) -> None:
    """Refuse (``invalid_token``) a token whose scopes are beyond ``allowed`` (a client's
    current scope text; :func:`~fhirgate.oauth.scopes.within`) or whose lifetime is beyond
    ``longest`` seconds."""
    if principal.expires_at - principal.issued_at > longest:
        raise InvalidToken(check="lifetime", detail="token outlives the client's maximum")
    if not within(principal.scopes, allowed, identity=identity):
        raise InvalidToken(check="scope_beyond_client", detail="scope beyond the client's")


class AccessTokenService:
    """Issues and verifies fhirgate access tokens."""

    def __init__(
        self,
        keyring: Keyring,
        revoked: DenyList,
        grants: GrantStore,
        *,
        issuer: str,
        audience: str,
        ttl: int,
        secret_ttl: int,
        user_ttl: int,
    ) -> None:
        self._keyring = keyring
        self._grants = grants
        self._revoked = revoked
        self._issuer = issuer
        self._audience = audience
        self.ttl = ttl
        self._secret_ttl = secret_ttl
        self._user_ttl = user_ttl
        self._signer = KeySigner(keyring, ACCESS_TOKEN_ALG, TOKEN_TYPE)
        self._verified: OrderedDict[str, Principal] = OrderedDict()

    def lifetime(self, client: Client) -> int:
        """The client's own token lifetime, else its method's default: ``ttl`` (≤ 300 s, SMART
        Backend Services) for ``private_key_jwt``, ``secret_ttl`` for secret clients."""
        if client.token_lifetime:
            return client.token_lifetime
        if client.auth_method == AuthMethod.PRIVATE_KEY_JWT:
            return self.ttl
        return self._secret_ttl

    def issue(self, client: Client, scope: str, grant: UserGrant | None = None) -> IssuedToken:
        """Sign an access token for ``client`` (RFC 9068 §2), acting for the user of ``grant``
        if one is given (``user_ttl``, never beyond the grant's end)."""
        issued_at = int(time.time())
        if grant is None:
            ttl, subject = self.lifetime(client), client.client_id
        else:
            ttl = min(self._user_ttl, grant.expires_at - issued_at)
            subject = str(grant.oneup_user_id)
        jti = secrets.token_urlsafe(16)
        claims: dict[str, object] = {
            "iss": self._issuer,
            "sub": subject,
            "aud": self._audience,
            "exp": issued_at + ttl,
            "iat": issued_at,
            "jti": jti,
            "client_id": client.client_id,
            "scope": scope,
            "organization": client.environment.organization_id,
            "environment": client.environment.kind,
        }
        if grant is not None:
            claims["oneup_user_id"] = grant.oneup_user_id
            claims["grant_id"] = grant.grant_id
        return IssuedToken(self._signer.sign(claims), ttl, scope, jti, client.client_id)

    def check_client(self, principal: Principal, client: Client) -> None:
        """Refuse (``invalid_token``) a token that the client could not get now: its scopes
        beyond the client's current allowed scopes (a user grant's: with the identity scopes),
        or its lifetime beyond the client's current maximum (RFC 9068 §4: a resource server
        may refuse a token for any reason; a key row forged in storage, or a client narrowed
        since, must not widen what a token reaches)."""
        user = principal.grant_id is not None
        longest = self._user_ttl if user else self.lifetime(client)
        bounded(principal, client.scope, longest, identity=user)

    async def revoke(self, principal: Principal) -> None:
        """Deny-list a token's ``jti`` until it would have expired anyway (a user grant's
        token beside its grant: :class:`~fhirgate.storage.user_grants.GrantRepo`)."""
        if principal.grant_id is None:
            await self._revoked.add(principal.jti, principal.expires_at)
        else:
            await self._grants.deny_token(principal.jti, principal.expires_at)

    async def verify(self, token: str) -> Principal:
        """Validate a bearer token (RFC 9068 §4); any failure is ``invalid_token``.

        After the signature and claims, one lookup on every call: the deny-list, or for a
        user grant's token the grant and the deny-list at once."""
        principal = await self._signed_claims(token)
        if principal.grant_id is None:
            revoked = await self._revoked.contains(principal.jti)
            standing = TokenStanding.REVOKED if revoked else TokenStanding.LIVE
        else:
            standing = await self._grants.token_standing(principal.grant_id, principal.jti)
        if standing is TokenStanding.REVOKED:
            raise InvalidToken(check="revoked", detail="token has been revoked")
        if standing is TokenStanding.GRANT_ENDED:
            raise InvalidToken(check="grant_ended", detail="grant revoked or expired")
        return principal

    async def _signed_claims(self, token: str) -> Principal:
        """The token's principal if its signature and claims are valid and it has not expired
        — not yet checked against the deny-list or its grant: :meth:`verify` is all.

        A token whose signature and claims were checked recently is found in a bounded cache
        keyed by the exact token text (so nothing else can match it); its expiry is checked on
        every call all the same."""
        principal = self._verified.get(token)
        if principal is None:
            principal = await self._verify_signed(token)
            self._verified[token] = principal
            if len(self._verified) > _VERIFIED_CACHE:
                self._verified.popitem(last=False)
        elif principal.expires_at <= time.time():
            del self._verified[token]
            raise InvalidToken(check="expired", detail="token has expired")
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
        user_id, grant_id = claims.get("oneup_user_id"), claims.get("grant_id")
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
            user_id=user_id if isinstance(user_id, int) else None,
            grant_id=str(grant_id) if grant_id is not None else None,
        )
