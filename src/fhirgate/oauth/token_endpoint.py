"""The token endpoint (RFC 6749 §3.2), as named steps in order — the order decides which
error a bad request gets, so it is part of the behaviour:

1. parse the form (the web layer: :func:`~fhirgate.oauth.forms.parse_form`, no repeated
   parameters);
2. find the grant for ``grant_type`` among those the URL accepts (``unsupported_grant_type``);
3. let the grant read its parameters, syntax only (a malformed request spends no assertion);
4. detect the client's authentication, refuse a request that uses two methods, and verify it
   (:meth:`~fhirgate.oauth.client_auth.ClientAuthenticator.from_form`; RFC 6749 §2.3,
   RFC 7523 §3);
5. check the client may use the grant type (``unauthorized_client``, RFC 6749 §5.2, before any
   code or refresh token is looked at);
6. exchange: the grant issues the token (:mod:`fhirgate.oauth.grants`);
7. audit: the token's row is stored before the token leaves.

Each step raises a typed :class:`~fhirgate.oauth.errors.OAuthError`; the web layer renders it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from fhirgate.domain.clients import AuthMethod, Client
from fhirgate.domain.stores import AuditSink
from fhirgate.oauth.client_auth import ClientAuthenticator
from fhirgate.oauth.errors import InvalidRequest, UnauthorizedClient, UnsupportedGrantType
from fhirgate.oauth.grants.base import (
    ALL_GRANT_TYPES,
    CLIENT_CREDENTIALS,
    Grant,
    TokenPolicy,
)
from fhirgate.oauth.tokens import IssuedToken

__all__ = ["TokenEndpoint"]

#: The grant types a client may use (RFC 7591 §2 ``grant_types``), by how it authenticates: a
#: ``private_key_jwt`` client is a SMART Backend Services client, ``client_credentials`` only; a
#: secret client may also be a 1upHealth application, exchanging its users' codes and refresh
#: tokens. Legacy API keys use their own endpoints and none of these.
_CLIENT_GRANT_TYPES: dict[str, frozenset[str]] = {
    AuthMethod.PRIVATE_KEY_JWT: frozenset({CLIENT_CREDENTIALS}),
    AuthMethod.CLIENT_SECRET_BASIC: ALL_GRANT_TYPES,
    AuthMethod.CLIENT_SECRET_POST: ALL_GRANT_TYPES,
}


class TokenEndpoint:
    """The grants of the token URLs: ``client_credentials`` for confidential clients and, where
    a URL accepts them, the ``authorization_code`` and ``refresh_token`` grants of application
    users."""

    def __init__(
        self, authenticator: ClientAuthenticator, grants: Iterable[Grant], audit: AuditSink
    ) -> None:
        self._authenticator = authenticator
        self._grants = {grant.grant_type: grant for grant in grants}
        self._audit = audit

    async def handle(
        self, form: Mapping[str, str], authorization: str | None, policy: TokenPolicy, source: str
    ) -> IssuedToken:
        grant = self._grant(form, policy)
        request = grant.read(form, policy)
        client = await self._authenticator.from_form(
            form, authorization, policy.methods, policy.rules, source
        )
        _check_grant_type_allowed(client, grant.grant_type)
        issued = await grant.exchange(client, request, source)
        await self._audit.issued(  # stored before the token leaves
            "token.issued",
            client_id=issued.client_id,
            source=source,
            detail=f"jti={issued.jti} dialect={policy.dialect}",
        )
        return issued

    def _grant(self, form: Mapping[str, str], policy: TokenPolicy) -> Grant:
        """The grant ``grant_type`` names, if this URL accepts it (RFC 6749 §5.2)."""
        grant_type = form.get("grant_type")
        if grant_type is None:
            raise InvalidRequest("grant_type is required", check="grant_type_missing")
        grant = self._grants.get(grant_type) if grant_type in policy.grant_types else None
        if grant is None:
            raise UnsupportedGrantType(
                f"grant_type must be {' or '.join(sorted(policy.grant_types))}",
                check="grant_type_unsupported",
                detail=f"grant_type {grant_type[:64]!r}",
            )
        return grant


def _check_grant_type_allowed(client: Client, grant_type: str) -> None:
    """RFC 6749 §5.2 ``unauthorized_client``: the client authenticated, but its registration
    does not allow this grant type."""
    if grant_type not in _CLIENT_GRANT_TYPES.get(client.auth_method, frozenset()):
        raise UnauthorizedClient(
            f"a {client.auth_method} client may not use grant_type {grant_type}",
            check="grant_type_not_allowed",
        )
