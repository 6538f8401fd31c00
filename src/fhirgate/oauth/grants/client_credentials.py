"""The client credentials grant (RFC 6749 §4.4): a confidential client — ``private_key_jwt``
(SMART Backend Services) or a client secret — gets an access token for itself, within the
scope it registered."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from fhirgate.domain.clients import Client
from fhirgate.oauth.errors import InvalidRequest, InvalidScope
from fhirgate.oauth.grants.base import (
    CLIENT_CREDENTIALS,
    GrantRequest,
    TokenPolicy,
    requested_scope,
)
from fhirgate.oauth.scopes import ScopeError, narrow, parse_scopes
from fhirgate.oauth.tokens import AccessTokenService, IssuedToken

__all__ = ["ClientCredentialsGrant"]


class ClientCredentialsGrant:
    grant_type: ClassVar[str] = CLIENT_CREDENTIALS
    parameters: ClassVar[tuple[str, ...]] = ("scope",)

    def __init__(self, tokens: AccessTokenService) -> None:
        self._tokens = tokens

    def read(self, form: Mapping[str, str], policy: TokenPolicy) -> GrantRequest:
        """``scope`` (RFC 6749 §4.4.2), required where the URL says so (SMART Backend Services
        §4.1)."""
        if "scope" not in form and policy.scope_required:
            raise InvalidRequest("scope is required", check="scope_missing")
        return GrantRequest(form, requested_scope(form, policy))

    async def exchange(self, client: Client, request: GrantRequest, source: str) -> IssuedToken:
        """The requested scope narrowed to the client's (RFC 6749 §3.3); ``invalid_scope`` when
        nothing of it is allowed."""
        try:
            granted = narrow(request.scope, parse_scopes(client.scope))
        except ScopeError as exc:
            raise InvalidScope(str(exc), check="scope_not_allowed") from exc
        return self._tokens.issue(client, str(granted))
