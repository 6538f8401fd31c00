"""``private_key_jwt`` client authentication (RFC 7523 §2.2, SMART client-confidential-asymmetric).

The key is resolved as SMART prescribes:

1. ``jku`` present → it must equal the registered JWKS URL; candidates are that URL's keys.
2. otherwise → the registered JWK Set plus, if registered, the JWKS URL's keys.
3. exactly one candidate whose ``kid`` matches and whose ``kty`` fits ``alg``.
4. verify the signature with it; then the time, audience and ``jti`` checks; then ``jti`` is
   recorded single-use per ``iss`` until the assertion's expiry plus leeway.
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TypeVar

from fhirgate.domain.clients import AuthMethod, Client
from fhirgate.domain.stores import SingleUseStore, digest
from fhirgate.oauth.assertions import (
    AssertionRules,
    check_claims,
    check_header,
    check_subject,
    parse_assertion,
)
from fhirgate.oauth.clients import ClientDirectory, RegisteredClient
from fhirgate.oauth.errors import InvalidClient
from fhirgate.oauth.jose import ParsedJWS, PublicKey, verify_signature
from fhirgate.oauth.jwks import JWKSFetcher, JWKSFetchError
from fhirgate.oauth.keyset import ClientKey, match_key

__all__ = ["ClaimedAssertion", "PrivateKeyJWTAuthenticator"]

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class ClaimedAssertion:
    """A well-formed assertion whose header and subject passed, not yet verified."""

    jws: ParsedJWS
    alg: str
    kid: str
    client_id: str


def _key_not_found(detail: str) -> InvalidClient:
    return InvalidClient(check="key_not_found", detail=detail)


class PrivateKeyJWTAuthenticator:
    """Verifies a ``private_key_jwt`` client assertion and consumes its ``jti``."""

    def __init__(
        self, clients: ClientDirectory, jwks: JWKSFetcher, used_jti: SingleUseStore
    ) -> None:
        self._clients = clients
        self._jwks = jwks
        self._used_jti = used_jti

    @staticmethod
    def claim(
        assertion: str, form_client_id: str | None, rules: AssertionRules
    ) -> ClaimedAssertion:
        """Parse the assertion and check its header and ``iss``/``sub`` (no storage, no crypto)."""
        jws = parse_assertion(assertion, rules)
        alg, kid = check_header(jws.header, rules)
        return ClaimedAssertion(jws, alg, kid, check_subject(jws.claims, form_client_id))

    async def authenticate(self, claimed: ClaimedAssertion, rules: AssertionRules) -> Client:
        registered = await self._clients.get(claimed.client_id)
        if registered is None or not registered.client.active:
            raise _key_not_found(f"no active client {claimed.client_id!r}")
        if registered.client.auth_method != AuthMethod.PRIVATE_KEY_JWT:
            raise _key_not_found("client does not use private_key_jwt")
        jws = claimed.jws
        key = await self._resolve_key(registered, jws.header.get("jku"), claimed.kid, claimed.alg)
        if not verify_signature(claimed.alg, key, jws.signing_input, jws.signature):
            raise InvalidClient(check="signature", detail="signature does not verify")
        claims = check_claims(jws.claims, rules)
        if not await self._used_jti.add(
            digest(claimed.client_id, claims.jti), claims.expires_at + rules.leeway
        ):
            raise InvalidClient("this assertion has already been used", check="replay")
        return registered.client

    async def _candidates(self, registered: RegisteredClient, jku: str | None) -> list[ClientKey]:
        url = registered.client.jwks_url
        if jku is not None and jku != url:
            raise _key_not_found("jku does not equal the registered JWKS URL")
        keys = [] if jku is not None else list(registered.inline_keys)
        if url:
            keys.extend(await self._fetch(self._jwks.keys(url)))
        return keys

    async def _resolve_key(
        self, registered: RegisteredClient, jku: object, kid: str, alg: str
    ) -> PublicKey:
        candidates = await self._candidates(registered, jku if isinstance(jku, str) else None)
        key = match_key(candidates, kid, alg)
        url = registered.client.jwks_url
        if key is None and url and not any(k.kid == kid for k in candidates):
            refreshed = await self._fetch(
                self._jwks.keys_after_unknown_kid(url, registered.client.client_id)
            )
            if refreshed is not None:
                inline = registered.inline_keys if jku is None else ()
                key = match_key([*inline, *refreshed], kid, alg)
        if key is None:
            raise _key_not_found(f"no single key with kid {kid!r} fitting {alg}")
        return key

    @staticmethod
    async def _fetch(pending: Awaitable[_T]) -> _T:
        try:
            return await pending
        except JWKSFetchError as exc:
            raise _key_not_found(f"JWKS URL unusable: {exc}") from exc
