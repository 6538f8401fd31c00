"""Token endpoints: ``POST /oauth2/token`` (standard) and the dialects' paths over one core.

The route is a raw ASGI app (no FastAPI middleware or dependency resolution on the hot path). It
reads the body, runs :class:`~fhirgate.oauth.server.TokenEndpoint` and lets the dialect shape
the answer. Every rejection is logged with its check name and detail, never with the assertion.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from fhirgate.config import Settings
from fhirgate.oauth.assertions import AssertionRules
from fhirgate.oauth.errors import OAuthError
from fhirgate.oauth.server import TokenPolicy, parse_form
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
    "NO_STORE",
    "STANDARD",
    "TokenDialect",
    "assertion_rules",
    "oauth_error_response",
    "token_app",
]

log = logging.getLogger("fhirgate.token")

#: RFC 6749 §5.1: token responses must not be cached.
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def oauth_error_response(error: OAuthError) -> Response:
    """RFC 6749 §5.2 JSON error."""
    return JSONResponse(error.body(), status_code=error.status_code, headers=NO_STORE)


def standard_success(issued: IssuedToken) -> Response:
    """RFC 6749 §5.1 / SMART Backend Services token response."""
    body = {
        "access_token": issued.access_token,
        "token_type": "Bearer",
        "expires_in": issued.expires_in,
        "scope": issued.scope,
    }
    return JSONResponse(body, headers=NO_STORE)


@dataclass(frozen=True, slots=True)
class TokenDialect:
    """How one token URL validates and shapes: its policy and its renderers."""

    name: str
    policy: Callable[[Settings], TokenPolicy]
    render_error: Callable[[OAuthError], Response] = oauth_error_response
    render_success: Callable[[IssuedToken], Response] = standard_success


def token_app(dialect: TokenDialect, settings: Settings) -> ASGIApp:
    """A raw ASGI app serving ``POST`` at ``dialect``'s token URL.

    ``FhirgateApp`` calls it directly, outside FastAPI's middleware stack: this is the hot path.
    It therefore does itself what that stack does for other routes: the body-size limit (413),
    storage failures (503) and unexpected errors (500), each without leaking details.
    """
    policy = dialect.policy(settings)
    limit = settings.request_body_limit

    async def respond(scope: Scope, body: bytes) -> Response:
        services: Services = scope["app"].state.services
        headers = _headers(scope)
        try:
            form = parse_form(body, headers.get(b"content-type"))
            issued = await services.token_endpoint.handle(
                form, headers.get(b"authorization"), policy
            )
        except OAuthError as error:
            log.info(
                "token request rejected",
                extra={
                    "dialect": dialect.name,
                    "error": error.error,
                    "check": error.check,
                    "detail": error.detail,
                },
            )
            return dialect.render_error(error)
        log.info(
            "token issued",
            extra={"dialect": dialect.name, "client_id": issued.client_id, "jti": issued.jti},
        )
        return dialect.render_success(issued)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        try:
            response = await respond(scope, await read_body(scope, receive, limit))
        except BodyTooLarge:
            response = too_large()
        except STORAGE_ERRORS as exc:
            response = await storage_unavailable(Request(scope), exc)
        except Exception as exc:
            response = await unexpected_error(Request(scope), exc)
        await response(scope, receive, send)

    return app


def _headers(scope: Scope) -> dict[bytes, str]:
    """The two request headers the token endpoint reads, decoded (latin-1, as ASGI sends)."""
    wanted: dict[bytes, str] = {}
    for name, value in scope["headers"]:
        if name in (b"content-type", b"authorization"):
            wanted.setdefault(name, value.decode("latin-1"))
    return wanted


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
        assertion_rules(settings, "/oauth2/token"), scope_required=True
    ),
)
