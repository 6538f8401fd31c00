"""The token pipeline (RFC 6749 §4.4, §4.1.3, §6; client authentication per §2.3 and RFC 7523).

Steps, in order: check the content type → parse the form (no repeated parameters) → check
``grant_type`` against the URL's grants → read the requested scope → detect and verify the
client's authentication → check that the client may use the grant type (``unauthorized_client``,
RFC 6749 §5.2, before any code or refresh token is looked at) → then, by grant:
``client_credentials`` grants a scope within the client's allowed scope and issues the access
token; ``authorization_code`` and ``refresh_token`` go to
:class:`~fhirgate.oauth.delegation.Delegation`. Each step raises a typed
:class:`~fhirgate.oauth.errors.OAuthError`; the HTTP surface renders it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import unquote_plus

from fhirgate.domain.clients import AuthMethod, Client
from fhirgate.oauth.assertions import AssertionRules
from fhirgate.oauth.client_auth import ClientAuthenticator, detect_credentials
from fhirgate.oauth.delegation import Delegation
from fhirgate.oauth.errors import (
    InvalidGrant,
    InvalidRequest,
    InvalidScope,
    UnauthorizedClient,
    UnsupportedGrantType,
)
from fhirgate.oauth.scopes import ScopeError, ScopeSet, narrow, parse_scopes
from fhirgate.oauth.tokens import AccessTokenService, IssuedToken
from fhirgate.storage.audit import AuditLog

__all__ = [
    "ALL_GRANT_TYPES",
    "FORM_CONTENT_TYPE",
    "KEEP_EMPTY_SCOPE",
    "TokenEndpoint",
    "TokenPolicy",
    "parse_form",
]

FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
CLIENT_CREDENTIALS = "client_credentials"
AUTHORIZATION_CODE = "authorization_code"
REFRESH_TOKEN = "refresh_token"  # noqa: S105 (a grant type)
ALL_GRANT_TYPES = frozenset({CLIENT_CREDENTIALS, AUTHORIZATION_CODE, REFRESH_TOKEN})
#: The grant types a client may use (RFC 7591 §2 ``grant_types``), by how it authenticates: a
#: ``private_key_jwt`` client is a SMART Backend Services client, ``client_credentials`` only; a
#: secret client may also be a 1upHealth application, exchanging its users' codes and refresh
#: tokens. Legacy API keys use their own endpoints and none of these.
_CLIENT_GRANT_TYPES: dict[str, frozenset[str]] = {
    AuthMethod.PRIVATE_KEY_JWT: frozenset({CLIENT_CREDENTIALS}),
    AuthMethod.CLIENT_SECRET_BASIC: ALL_GRANT_TYPES,
    AuthMethod.CLIENT_SECRET_POST: ALL_GRANT_TYPES,
}
#: The token endpoints keep an empty ``scope=`` so that it can be told from no ``scope``.
KEEP_EMPTY_SCOPE = frozenset({"scope"})
_MAX_FIELDS = 64


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


@lru_cache(maxsize=1024)
def _unquote_short(text: str) -> str:
    """Short values repeat from request to request (``client_assertion_type``, ``scope``)."""
    return unquote_plus(text, errors="strict")


def _decode(text: str) -> str:
    if "%" not in text and "+" not in text:
        return text
    return _unquote_short(text) if len(text) <= 256 else unquote_plus(text, errors="strict")


def _form_pairs(text: str) -> list[tuple[str, str]]:
    """``application/x-www-form-urlencoded`` pairs, strictly: every field is ``name=value``
    (WHATWG URL §5.1; ``parse_qsl(strict_parsing=True)`` without its per-field overhead)."""
    if not text:
        return []
    fields = text.split("&")
    if len(fields) > _MAX_FIELDS:
        raise ValueError(f"more than {_MAX_FIELDS} fields")
    pairs = []
    for field in fields:
        name, equals, value = field.partition("=")
        if not equals:
            raise ValueError("a field is not name=value")
        pairs.append((_decode(name), _decode(value)))
    return pairs


def parse_form(
    body: bytes, content_type: str | None, *, keep_empty: frozenset[str] = frozenset()
) -> dict[str, str]:
    """A form body as a dict (RFC 6749 §3.2: no repeated parameters; §3.1: a parameter without
    a value counts as omitted, except those in ``keep_empty``, whose caller judges it)."""
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type != FORM_CONTENT_TYPE:
        raise InvalidRequest(f"Content-Type must be {FORM_CONTENT_TYPE}", check="content_type")
    try:
        pairs = _form_pairs(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidRequest(
            "the request body is not a valid form", check="form_malformed", detail=str(exc)
        ) from exc
    form: dict[str, str] = {}
    for name, value in pairs:
        if name in form:
            raise InvalidRequest(f"parameter {name!r} is repeated", check="duplicate_parameter")
        form[name] = value
    return {name: value for name, value in form.items() if value != "" or name in keep_empty}


def _grant_type(form: Mapping[str, str], accepted: frozenset[str]) -> str:
    grant_type = form.get("grant_type")
    if grant_type is None:
        raise InvalidRequest("grant_type is required", check="grant_type_missing")
    if grant_type not in accepted:
        raise UnsupportedGrantType(
            f"grant_type must be {' or '.join(sorted(accepted))}",
            check="grant_type_unsupported",
            detail=f"grant_type {grant_type[:64]!r}",
        )
    return grant_type


def _requested_scope(form: Mapping[str, str], policy: TokenPolicy) -> ScopeSet | None:
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


def _check_grant_type_allowed(client: Client, grant_type: str) -> None:
    """RFC 6749 §5.2 ``unauthorized_client``: the client authenticated, but its registration
    does not allow this grant type."""
    if grant_type not in _CLIENT_GRANT_TYPES.get(client.auth_method, frozenset()):
        raise UnauthorizedClient(
            f"a {client.auth_method} client may not use grant_type {grant_type}",
            check="grant_type_not_allowed",
        )


def _required(form: Mapping[str, str], name: str) -> str:
    value = form.get(name)
    if value is None:
        raise InvalidRequest(f"{name} is required", check=f"{name}_missing")
    return value


class TokenEndpoint:
    """``client_credentials`` (RFC 6749 §4.4) for confidential clients — ``private_key_jwt``
    (SMART Backend Services) or a client secret — and, where the URL accepts them, the
    ``authorization_code`` and ``refresh_token`` grants of application users."""

    def __init__(
        self,
        authenticator: ClientAuthenticator,
        tokens: AccessTokenService,
        delegation: Delegation,
        audit: AuditLog,
    ):
        self._authenticator = authenticator
        self._tokens = tokens
        self._delegation = delegation
        self._audit = audit

    async def handle(
        self, form: Mapping[str, str], authorization: str | None, policy: TokenPolicy, source: str
    ) -> IssuedToken:
        grant_type = _grant_type(form, policy.grant_types)
        if grant_type == AUTHORIZATION_CODE:
            code = _required(form, "code")  # the code carries its scope (RFC 6749 §4.1.3)
            client = await self._client(form, authorization, policy, source, grant_type)
            with self._audited(client, source):
                return await self._delegation.exchange_code(client, code)
        if "scope" not in form and policy.scope_required and grant_type == CLIENT_CREDENTIALS:
            raise InvalidRequest("scope is required", check="scope_missing")
        wanted = _requested_scope(form, policy)  # syntax first: a malformed request burns no jti
        if grant_type == REFRESH_TOKEN:
            refresh_token = _required(form, "refresh_token")
            client = await self._client(form, authorization, policy, source, grant_type)
            with self._audited(client, source):
                return await self._delegation.refresh(client, refresh_token, wanted)
        client = await self._client(form, authorization, policy, source, grant_type)
        try:
            granted = narrow(wanted, parse_scopes(client.scope))
        except ScopeError as exc:
            raise InvalidScope(str(exc), check="scope_not_allowed") from exc
        return self._tokens.issue(client, str(granted))

    @contextlib.contextmanager
    def _audited(self, client: Client, source: str) -> Iterator[None]:
        """Audit a refused code or refresh token (reuse among them: the grant was revoked)."""
        try:
            yield
        except InvalidGrant as error:
            self._audit.enqueue(
                "grant.failure", client_id=client.client_id, source=source, detail=error.check
            )
            raise

    async def _client(
        self,
        form: Mapping[str, str],
        authorization: str | None,
        policy: TokenPolicy,
        source: str,
        grant_type: str,
    ) -> Client:
        """The authenticated client, allowed ``grant_type``."""
        credentials = detect_credentials(form, authorization, policy.methods)
        client = await self._authenticator.authenticate(credentials, policy.rules, source)
        _check_grant_type_allowed(client, grant_type)
        return client
