"""What every grant of the token endpoint shares: the URL's policy, the request a grant reads
from the form, the :class:`Grant` contract, and the checks of the parameters grants have in
common (RFC 6749 §3.2, §3.3, §5.2)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import ClassVar, Protocol

from fhirgate.domain.clients import AuthMethod, Client
from fhirgate.domain.stores import AuditSink
from fhirgate.oauth.assertions import AssertionRules
from fhirgate.oauth.errors import InvalidGrant, InvalidRequest, InvalidScope
from fhirgate.oauth.scopes import ScopeError, ScopeSet, parse_scopes
from fhirgate.oauth.tokens import IssuedToken

__all__ = [
    "ALL_GRANT_TYPES",
    "AUTHORIZATION_CODE",
    "CLIENT_CREDENTIALS",
    "REFRESH_TOKEN",
    "Grant",
    "GrantRequest",
    "TokenPolicy",
    "audited",
    "requested_scope",
    "required",
]

CLIENT_CREDENTIALS = "client_credentials"
AUTHORIZATION_CODE = "authorization_code"
REFRESH_TOKEN = "refresh_token"  # noqa: S105 (a grant type)
ALL_GRANT_TYPES = frozenset({CLIENT_CREDENTIALS, AUTHORIZATION_CODE, REFRESH_TOKEN})


@dataclass(frozen=True, slots=True)
class TokenPolicy:
    """What one token URL accepts: client authentication methods, assertion rules, and
    whether ``scope`` is required."""

    rules: AssertionRules
    scope_required: bool
    methods: frozenset[AuthMethod] = frozenset(
        {AuthMethod.PRIVATE_KEY_JWT, AuthMethod.CLIENT_SECRET_BASIC, AuthMethod.CLIENT_SECRET_POST}
    )
    grant_types: frozenset[str] = frozenset({CLIENT_CREDENTIALS})
    #: The dialect the URL speaks, named in the audit row of every token it issues.
    dialect: str = "standard"


@dataclass(frozen=True, slots=True)
class GrantRequest:
    """What a grant read from the form before the client was authenticated: the form, and the
    requested scope (``None`` when there is none, or the grant takes none)."""

    form: Mapping[str, str]
    scope: ScopeSet | None = None


class Grant(Protocol):
    """One grant type of the token endpoint (RFC 6749 §4). The endpoint runs :meth:`read` before
    it authenticates the client — a malformed request is refused before any assertion's
    ``jti`` is spent — and :meth:`exchange` once the client is authenticated and allowed the
    grant type."""

    #: The ``grant_type`` value (RFC 6749 §4.1.3, §4.4.2, §6).
    grant_type: ClassVar[str]
    #: The form parameters the grant reads, besides ``grant_type`` and client authentication.
    parameters: ClassVar[tuple[str, ...]]

    def read(self, form: Mapping[str, str], policy: TokenPolicy) -> GrantRequest:
        """Check the grant's parameters' syntax; a typed :class:`OAuthError` if they fail."""
        ...

    async def exchange(self, client: Client, request: GrantRequest, source: str) -> IssuedToken:
        """Issue the token the grant yields to ``client``."""
        ...


def requested_scope(form: Mapping[str, str], policy: TokenPolicy) -> ScopeSet | None:
    """The requested scope; ``None`` when the form has none.

    RFC 6749 §3.3: ``scope=`` present but empty asks for nothing, which no client may be
    granted: ``invalid_scope``. Where a URL makes ``scope`` optional (the vendor dialects, whose
    clients get their allowed scopes without one) an empty ``scope=`` counts as omitted, as it
    always did there."""
    requested = form.get("scope")
    if requested is None or (requested == "" and not policy.scope_required):
        return None
    try:
        return parse_scopes(requested)
    except ScopeError as exc:
        raise InvalidScope(str(exc), check="scope_invalid") from exc


def required(form: Mapping[str, str], name: str) -> str:
    value = form.get(name)
    if value is None:
        raise InvalidRequest(f"{name} is required", check=f"{name}_missing")
    return value


@contextlib.contextmanager
def audited(audit: AuditSink, client: Client, source: str) -> Iterator[None]:
    """Audit a refused code or refresh token (reuse among them: the grant was revoked)."""
    try:
        yield
    except InvalidGrant as error:
        audit.enqueue(
            "grant.failure", client_id=client.client_id, source=source, detail=error.check
        )
        raise
