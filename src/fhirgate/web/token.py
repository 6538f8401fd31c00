"""Token endpoints: ``POST /oauth2/token`` (standard) and the dialects' paths over one core.

The route is a raw ASGI app (no FastAPI middleware or dependency resolution on the hot path).
It reads the body, runs :class:`~fhirgate.oauth.token_endpoint.TokenEndpoint` and lets the
dialect shape the answer. Every rejection is logged with its check name and detail, never
with the assertion.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from fhirgate.config import Settings
from fhirgate.domain.clients import AuthMethod
from fhirgate.oauth.assertions import AssertionRules
from fhirgate.oauth.client_auth import is_basic
from fhirgate.oauth.errors import OAuthError, TooManyAttempts
from fhirgate.oauth.forms import KEEP_EMPTY_SCOPE, parse_form
from fhirgate.oauth.grants.base import ALL_GRANT_TYPES, TokenPolicy
from fhirgate.oauth.tokens import IssuedToken
from fhirgate.services import Services
from fhirgate.web.failures import (
    STORAGE_ERRORS,
    BodyTooLarge,
    read_body,
    storage_unavailable,
    too_large,
    unexpected_error,
)

__all__ = [
    "BASIC_CHALLENGE",
    "NO_STORE",
    "STANDARD",
    "FormRequest",
    "TokenDialect",
    "add_challenge",
    "assertion_rules",
    "form_app",
    "json_response",
    "oauth_error_response",
    "source_address",
    "token_app",
]

log = logging.getLogger("fhirgate.token")

#: RFC 6749 §5.1: token responses must not be cached.
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


#: RFC 6749 §5.2 / RFC 7617 §2: the challenge of a client that authenticated with HTTP Basic.
BASIC_CHALLENGE = 'Basic realm="fhirgate", charset="UTF-8"'


def json_response(body: object, status_code: int = 200) -> Response:
    """A ``no-store`` JSON answer (RFC 6749 §5.1), encoded with orjson: a token response is
    encoded on every grant, and orjson takes a fraction of ``json``'s time."""
    return Response(orjson.dumps(body), status_code, NO_STORE, "application/json")


def oauth_error_response(error: OAuthError) -> Response:
    """RFC 6749 §5.2 JSON error."""
    return json_response(error.body(), error.status_code)


def add_challenge(response: Response, error: OAuthError, basic: bool) -> Response:
    """``WWW-Authenticate: Basic`` on a 401 when the client used (or had to use) HTTP Basic;
    ``Retry-After`` when failures are throttled."""
    if error.status_code == 401 and basic:
        response.headers["WWW-Authenticate"] = BASIC_CHALLENGE
    if isinstance(error, TooManyAttempts):
        response.headers["Retry-After"] = str(error.retry_after)
    return response


def source_address(scope: Scope) -> str:
    """The peer address (the proxy's client when uvicorn trusts ``X-Forwarded-For``)."""
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


def standard_success(issued: IssuedToken) -> Response:
    """RFC 6749 §5.1 / SMART Backend Services token response."""
    body = {
        "access_token": issued.access_token,
        "token_type": "Bearer",
        "expires_in": issued.expires_in,
        "scope": issued.scope,
    }
    if issued.refresh_token is not None:  # a user grant (RFC 6749 §5.1, OIDC Core §3.1.3.3)
        body["refresh_token"] = issued.refresh_token
        if issued.id_token is not None:
            body["id_token"] = issued.id_token
    return json_response(body)


@dataclass(frozen=True, slots=True)
class TokenDialect:
    """How one token URL validates and shapes: its policy and its renderers."""

    name: str
    policy: Callable[[Settings], TokenPolicy]
    render_error: Callable[[OAuthError], Response] = oauth_error_response
    render_success: Callable[[IssuedToken], Response] = standard_success


def token_app(dialect: TokenDialect, settings: Settings) -> ASGIApp:
    """A raw ASGI app serving ``POST`` at ``dialect``'s token URL (see :func:`form_app`)."""
    policy = replace(dialect.policy(settings), dialect=dialect.name)
    limit = settings.request_body_limit
    basic_only = policy.methods == {AuthMethod.CLIENT_SECRET_BASIC}

    async def respond(request: FormRequest) -> Response:
        services, authorization, source = request.services, request.authorization, request.source
        try:
            form = parse_form(request.body, request.content_type, keep_empty=KEEP_EMPTY_SCOPE)
            issued = await services.token_endpoint.handle(form, authorization, policy, source)
        except OAuthError as error:
            log.info(
                "token request rejected",
                extra={
                    "dialect": dialect.name,
                    "error": error.error,
                    "check": error.check,
                    "detail": error.detail,
                    "source": source,
                },
            )
            basic = basic_only or is_basic(authorization)
            return add_challenge(dialect.render_error(error), error, basic)
        # every value is the server's own (dialect, generated ids), never client text, so the
        # fields go in the message: cheaper than ``extra``, and this line is written per grant
        log.info(
            "token issued dialect=%s client_id=%s jti=%s",
            dialect.name,
            issued.client_id,
            issued.jti,
        )
        return dialect.render_success(issued)

    return form_app(respond, limit)


@dataclass(frozen=True, slots=True)
class FormRequest:
    """What a form endpoint reads of a request: the body, two headers (latin-1, as ASGI
    sends them) and the peer address."""

    services: Services
    body: bytes
    content_type: str | None
    authorization: str | None
    source: str

    @classmethod
    def of(cls, scope: Scope, body: bytes) -> FormRequest:
        headers: dict[bytes, str] = {}
        for name, value in scope["headers"]:
            if name in (b"content-type", b"authorization"):
                headers.setdefault(name, value.decode("latin-1"))
        return cls(
            scope["app"].state.services,
            body,
            headers.get(b"content-type"),
            headers.get(b"authorization"),
            source_address(scope),
        )


def form_app(respond: Callable[[FormRequest], Awaitable[Response]], limit: int) -> ASGIApp:
    """A raw ASGI app for a hot ``POST`` endpoint: read the body, ``respond``.

    ``FhirgateApp`` calls it directly, outside FastAPI's middleware stack, so it does itself
    what that stack does for other routes: the body-size limit (413), storage failures (503)
    and unexpected errors (500), each without leaking details.
    """

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        try:
            body = await read_body(scope, receive, limit)
            response = await respond(FormRequest.of(scope, body))
        except BodyTooLarge:
            response = too_large()
        except STORAGE_ERRORS as exc:
            response = await storage_unavailable(Request(scope), exc)
        except Exception as exc:
            response = await unexpected_error(Request(scope), exc)
        await response(scope, receive, send)

    return app


def assertion_rules(settings: Settings, token_path: str, **overrides: object) -> AssertionRules:
    """Rules for assertions posted to ``token_path``: ``aud`` is that URL or the issuer."""
    return AssertionRules(
        audiences=frozenset({settings.url(token_path), settings.issuer}),
        algorithms=settings.assertion_algorithms,
        leeway=settings.assertion_leeway,
        max_chars=settings.assertion_max_chars,
        **overrides,  # type: ignore[arg-type]
    )


STANDARD = TokenDialect(
    name="standard",
    policy=lambda settings: TokenPolicy(
        assertion_rules(settings, "/oauth2/token"),
        scope_required=True,
        grant_types=ALL_GRANT_TYPES,
    ),
)
