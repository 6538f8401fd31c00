"""``POST /oauth2/introspect`` (RFC 7662) and ``POST /oauth2/revoke`` (RFC 7009).

Both take a form with ``token`` (an optional ``token_type_hint`` is not needed: the token's
shape says what it is) and authenticate the client with its registered method, as the token
endpoint does (an assertion's ``aud`` is this URL or the issuer). Failures are RFC 6749 §5.2
JSON; ``WWW-Authenticate: Basic`` accompanies a 401 after Basic. Resource servers may call
introspection on every request, so both are raw form apps like the token endpoint
(:func:`~fhirgate.web.token.form_app`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from starlette.responses import Response
from starlette.types import ASGIApp

from fhirgate.config import Settings
from fhirgate.domain.clients import AuthMethod, Client
from fhirgate.oauth.client_auth import is_basic
from fhirgate.oauth.errors import InvalidRequest, OAuthError
from fhirgate.oauth.forms import parse_form
from fhirgate.oauth.grants.base import TokenPolicy
from fhirgate.services import Services
from fhirgate.web.token import (
    NO_STORE,
    FormRequest,
    add_challenge,
    assertion_rules,
    form_app,
    json_response,
    oauth_error_response,
)

__all__ = ["INTROSPECTION_PATH", "REVOCATION_PATH", "introspection_app", "revocation_app"]

INTROSPECTION_PATH = "/oauth2/introspect"
REVOCATION_PATH = "/oauth2/revoke"

log = logging.getLogger("fhirgate.token")

Action = Callable[[Services, str, Client], Awaitable[Response]]


def _client_app(settings: Settings, path: str, action: Action) -> ASGIApp:
    policy = TokenPolicy(assertion_rules(settings, path), scope_required=False)

    async def respond(request: FormRequest) -> Response:
        services, authorization, source = request.services, request.authorization, request.source
        try:
            form = parse_form(request.body, request.content_type)
            client = await services.authenticator.from_form(
                form,
                authorization,
                policy.methods,
                policy.rules,
                source,
                also=(AuthMethod.LEGACY_API_KEY,),
            )
            token = form.get("token")
            if token is None:  # RFC 7009 §2.1: the client is authenticated first
                raise InvalidRequest("token is required", check="token_missing")
        except OAuthError as error:
            log.info(
                "token management request rejected",
                extra={
                    "path": path,
                    "check": error.check,
                    "detail": error.detail,
                    "source": source,
                },
            )
            return add_challenge(oauth_error_response(error), error, is_basic(authorization))
        return await action(services, token, client)

    return form_app(respond, settings.request_body_limit)


async def _introspect(services: Services, token: str, client: Client) -> Response:
    return json_response(await services.inspector.introspect(token, client))


async def _revoke(services: Services, token: str, client: Client) -> Response:
    await services.inspector.revoke(token, client)
    log.info("revocation request", extra={"client_id": client.client_id})
    return Response(status_code=200, headers=NO_STORE)


def introspection_app(settings: Settings) -> ASGIApp:
    """RFC 7662 token introspection of the authenticated client's own tokens."""
    return _client_app(settings, INTROSPECTION_PATH, _introspect)


def revocation_app(settings: Settings) -> ASGIApp:
    """RFC 7009 token revocation; 200 whether or not the token was known."""
    return _client_app(settings, REVOCATION_PATH, _revoke)
