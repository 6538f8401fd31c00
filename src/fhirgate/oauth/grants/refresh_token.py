"""The refresh token grant (RFC 6749 §6): an application renews a user grant's tokens; the
refresh token is rotated (RFC 9700 §4.14.2) and a narrower ``scope`` may be asked for."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from fhirgate.domain.clients import Client
from fhirgate.domain.stores import AuditSink
from fhirgate.oauth.delegation import Delegation
from fhirgate.oauth.grants.base import (
    REFRESH_TOKEN,
    GrantRequest,
    TokenPolicy,
    audited,
    requested_scope,
    required,
)
from fhirgate.oauth.tokens import IssuedToken

__all__ = ["RefreshTokenGrant"]


class RefreshTokenGrant:
    grant_type: ClassVar[str] = REFRESH_TOKEN
    parameters: ClassVar[tuple[str, ...]] = ("refresh_token", "scope")

    def __init__(self, delegation: Delegation, audit: AuditSink) -> None:
        self._delegation = delegation
        self._audit = audit

    def read(self, form: Mapping[str, str], policy: TokenPolicy) -> GrantRequest:
        scope = requested_scope(form, policy)
        required(form, "refresh_token")
        return GrantRequest(form, scope)

    async def exchange(self, client: Client, request: GrantRequest, source: str) -> IssuedToken:
        with audited(self._audit, client, source):
            return await self._delegation.refresh(
                client, request.form["refresh_token"], request.scope
            )
