"""Pattern Health dialect: ``POST /api/auth/token`` (docs.pattern.health, authentication).

Client credentials with HTTP Basic only; the answer is
``{"access_token", "expires_in": <milliseconds>, "token_type": "bearer"}`` — ``expires_in`` in
**milliseconds** (3,600,000 for the default hour) and ``token_type`` always lower-case
``bearer``, as Pattern documents. No ``scope`` is sent: the client's allowed scope is granted.
Errors keep the RFC 6749 §5.2 JSON body; their statuses are Pattern's (400, 401, 429).
"""

from __future__ import annotations

from starlette.responses import Response

from fhirgate.config import Settings
from fhirgate.domain.clients import AuthMethod
from fhirgate.oauth.grants.base import TokenPolicy
from fhirgate.oauth.tokens import IssuedToken
from fhirgate.web.token import TokenDialect, assertion_rules, json_response

__all__ = ["PATTERN", "TOKEN_PATH"]

TOKEN_PATH = "/api/auth/token"  # noqa: S105 (a path, not a secret)


def render_success(issued: IssuedToken) -> Response:
    body = {
        "access_token": issued.access_token,
        "expires_in": issued.expires_in * 1000,
        "token_type": "bearer",
    }
    return json_response(body)


def _policy(settings: Settings) -> TokenPolicy:
    return TokenPolicy(
        assertion_rules(settings, TOKEN_PATH),
        scope_required=False,
        methods=frozenset({AuthMethod.CLIENT_SECRET_BASIC}),
    )


PATTERN = TokenDialect(name="pattern", policy=_policy, render_success=render_success)
