"""The authorization code grant's token request (RFC 6749 §4.1.3): an application exchanges a
code issued for one of its users (:class:`~fhirgate.oauth.delegation.Delegation`) for that
user's access and refresh tokens. The code carries its scope."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from fhirgate.domain.clients import Client
from fhirgate.domain.stores import AuditSink
from fhirgate.oauth.delegation import Delegation
from fhirgate.oauth.grants.base import (
    AUTHORIZATION_CODE,
    GrantRequest,
    TokenPolicy,
    audited,
    required,
)
from fhirgate.oauth.tokens import IssuedToken

__all__ = ["AuthorizationCodeGrant"]


class AuthorizationCodeGrant:
    grant_type: ClassVar[str] = AUTHORIZATION_CODE
    parameters: ClassVar[tuple[str, ...]] = ("code",)

    def __init__(self, delegation: Delegation, audit: AuditSink) -> None:
        self._delegation = delegation
        self._audit = audit

    def read(self, form: Mapping[str, str], policy: TokenPolicy) -> GrantRequest:
        required(form, "code")
        return GrantRequest(form)

    async def exchange(self, client: Client, request: GrantRequest, source: str) -> IssuedToken:
        with audited(self._audit, client, source):
            return await self._delegation.exchange_code(client, request.form["code"])
