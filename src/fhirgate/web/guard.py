"""The resource guard: one dependency that turns a request's credentials into a
:class:`Principal`.

RFC 6750: the token comes only from the ``Authorization`` header (§2.1; never the query string,
§2.3 is not supported). A request without credentials gets 401 with a bare ``Bearer`` challenge;
a bad, expired or revoked token, one whose client is no longer active, or one beyond what its
client may get now (scopes beyond the client's current allowed scopes, a lifetime beyond its
current maximum) gets 401 ``invalid_token``; a token whose scope does not cover the request gets 403
``insufficient_scope`` (§3.1). A user grant's token is refused the moment its grant ends
(revoked, reused, past its lifetime, or its user deactivated), on every replica: the grant is
looked up on every request, with the token's deny-list entry, in one round trip
(:meth:`~fhirgate.oauth.tokens.AccessTokenService.verify`).

1upHealth's system-level access: instead of a token, an application's ``client_id`` and
``client_secret`` headers (checked, throttled and audited like any client secret) with
``x-oneup-user-id`` (a user's number, or ``client`` for all its users, reads only) or
``x-app-user-id``.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from starlette.responses import JSONResponse, Response

from fhirgate.domain.tokens import is_jwt
from fhirgate.oauth.delegation import authenticate_application
from fhirgate.oauth.errors import (
    InvalidRequest,
    InvalidToken,
    OAuthError,
    TooManyAttempts,
)
from fhirgate.oauth.tokens import Principal
from fhirgate.services import Services
from fhirgate.web.token import source_address

__all__ = [
    "BearerError",
    "CurrentPrincipal",
    "authenticate",
    "bearer_error_parts",
    "bearer_error_response",
]

REALM = "fhirgate"


class BearerError(Exception):
    """Raised by the guard; rendered with an RFC 6750 ``WWW-Authenticate`` challenge.
    ``tallied``: a refusal for want of a valid credential, audited in the per-address tally
    (:meth:`~fhirgate.storage.audit.AuditLog.tally`) rather than by a row of its own."""

    def __init__(self, error: OAuthError | None, scope: str = "", *, tallied: bool = False) -> None:
        self.error = error
        self.scope = scope
        self.tallied = tallied


#: The error codes a Bearer challenge may carry (RFC 6750 §3.1); others get a bare challenge.
_BEARER_ERRORS = frozenset({"invalid_request", "invalid_token", "insufficient_scope"})


def _challenge(error: OAuthError | None, scope: str) -> str:
    if error is None or error.error not in _BEARER_ERRORS:
        return f'Bearer realm="{REALM}"'
    parts = [f'realm="{REALM}"', f'error="{error.error}"']
    if error.description:
        parts.append(f'error_description="{error.description}"')
    if scope:
        parts.append(f'scope="{scope}"')
    return "Bearer " + ", ".join(parts)


def bearer_error_parts(exc: BearerError) -> tuple[OAuthError, dict[str, str]]:
    """The error and the headers (the RFC 6750 challenge, ``Retry-After``) of a refusal, for
    each surface to render in its own format."""
    error = exc.error or InvalidToken("an access token is required", check="missing")
    headers = {"WWW-Authenticate": _challenge(exc.error, exc.scope), "Cache-Control": "no-store"}
    if isinstance(error, TooManyAttempts):
        headers["Retry-After"] = str(error.retry_after)
    return error, headers


def bearer_error_response(exc: BearerError) -> Response:
    error, headers = bearer_error_parts(exc)
    return JSONResponse(error.body(), status_code=error.status_code, headers=headers)


def _bearer_token(request: Request) -> str:
    header = request.headers.get("authorization")
    if header is None:
        raise BearerError(None)
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        raise BearerError(
            InvalidToken("use the Authorization: Bearer <token> scheme", check="scheme")
        )
    return token


async def authenticate(request: Request) -> Principal:
    """Validate the request's bearer token — an access token JWT (RFC 6750 §2.1, RFC 9068 §4)
    or an opaque legacy API key token — or 1upHealth's client credentials headers.

    A request without a valid credential is refused (401) and tallied in the audit, one row per
    source address and minute; past ``FHIRGATE_BEARER_FAILURE_LIMIT`` such refusals in a minute,
    the address's further ones get 429 with ``Retry-After`` until the minute ends (RFC 6585 §4),
    while its valid credentials are still served. Client headers are throttled by client
    authentication itself (:mod:`fhirgate.oauth.throttle`) and only tallied here."""
    services: Services = request.app.state.services
    source = source_address(request.scope)
    if "client_id" in request.headers or "client_secret" in request.headers:
        return await _header_principal(request, services, source)
    try:
        return await _bearer_principal(request, services)
    except BearerError as refused:
        raise await _refused(services, source, refused) from None


async def _refused(services: Services, source: str, refused: BearerError) -> BearerError:
    """The answer to a request without a valid credential: ``refused``, or 429 once the
    address is past its limit; tallied in the audit either way."""
    throttle = services.bearer_failures
    wait = throttle.check(source, None)
    if wait is None:
        await throttle.record_failure(source, None)
    else:
        refused = BearerError(TooManyAttempts(wait))
    refused.tallied = True
    status = 401 if refused.error is None else refused.error.status_code
    services.audit.tally("bearer.refused", source, status)
    return refused


async def _bearer_principal(request: Request, services: Services) -> Principal:
    token = _bearer_token(request)
    try:
        if not is_jwt(token):  # opaque: a legacy API key's access token
            return await services.legacy.verify(token)
        principal = await services.tokens.verify(token)
        registered = await services.directory.get(principal.client_id)
        if registered is None or not registered.client.active:
            raise InvalidToken(check="client_inactive", detail="client revoked or deleted")
        services.tokens.check_client(principal, registered.client)
    except InvalidToken as error:
        raise BearerError(error) from error
    return principal


async def _header_principal(request: Request, services: Services, source: str) -> Principal:
    headers = request.headers
    client_id, secret = headers.get("client_id"), headers.get("client_secret")
    try:
        if "authorization" in headers:
            raise InvalidRequest(
                "send either Authorization or the client_id and client_secret headers",
                check="multiple_credentials",
            )
        if client_id is None or secret is None:
            raise InvalidRequest(
                "the client_id and client_secret headers go together", check="header_credentials"
            )
        client = await authenticate_application(services.authenticator, client_id, secret, source)
    except OAuthError as error:
        services.audit.tally("bearer.refused", source, error.status_code)
        raise BearerError(error, tallied=True) from error
    try:
        return await services.delegation.header_principal(
            client,
            headers.get("x-oneup-user-id"),
            _utf8_header(headers.get("x-app-user-id")),
            request.method,
        )
    except OAuthError as error:
        raise BearerError(error) from error


def _utf8_header(value: str | None) -> str | None:
    """An ``app_user_id`` header as the text it was created with: clients send it as UTF-8,
    which Starlette hands over decoded as Latin-1 (RFC 9110 §5.5: field values are octets)."""
    if value is None:
        return None
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequest("x-app-user-id must be UTF-8", check="user_header") from exc


CurrentPrincipal = Annotated[Principal, Depends(authenticate)]
