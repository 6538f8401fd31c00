"""Redox dialect: ``POST /v2/auth/token`` with Redox's error body and descriptions.

Redox documents (troubleshoot-oauth-api-key-errors) one error shape,
``{"error": "invalid_request", "error_description", "error_uri"}``, with fixed descriptions;
``Unexpected X claim value`` names a missing or malformed claim or header member X, and the
description is blank for a wrong ``aud`` or ``alg``, a replayed ``jti``, a failed ``iat`` check
(and, here, a failed signature). Its JavaScript sample sends no ``exp``: an assertion without one
is accepted while its ``iat`` is fresh, and expires at ``iat`` + 300 s. Without ``scope`` the
client's allowed scopes are granted. Validation itself is the core's; only shapes differ.
"""

from __future__ import annotations

from starlette.responses import Response

from fhirgate.config import Settings
from fhirgate.domain.clients import AuthMethod
from fhirgate.oauth.errors import OAuthError
from fhirgate.oauth.grants.base import TokenPolicy
from fhirgate.web.token import TokenDialect, assertion_rules, json_response

__all__ = ["REDOX", "REDOX_ERROR_URI", "redox_description"]

REDOX_ERROR_URI = "https://docs.redoxengine.com/permalink/7sEi7MTFssZ1JuHpUYLeYJ"
TOKEN_PATH = "/v2/auth/token"  # noqa: S105 (a path, not a secret)

_DESCRIPTIONS = {
    "content_type": "x-www-form-urlencoded content-type required",
    "grant_type_missing": "Missing grant_type parameter",
    "grant_type_unsupported": "The grant_type parameter should equal 'client_credentials'",
    "assertion_type_missing": "Missing client assertion type",
    "assertion_type_invalid": "Invalid client assertion type",
    "assertion_missing": "Missing client assertion",
    "kid_required": "JWT header kid property is required",
    "key_not_found": "Public key not found, check client_id, kid and Redox dashboard settings",
}
_BLANK = frozenset(
    {
        "alg_not_allowed",
        "aud_mismatch",
        "replay",
        "iat_window",
        "iat_future",
        "signature",
        "assertion_malformed",
        "assertion_size",
    }
)


def redox_description(error: OAuthError) -> str:
    """Redox's documented description for a core error."""
    if error.check in _DESCRIPTIONS:
        return _DESCRIPTIONS[error.check]
    if error.check in _BLANK:
        return ""
    if error.claim:
        return f"Unexpected {error.claim} claim value"
    return error.description


def render_error(error: OAuthError) -> Response:
    """400 for a malformed request, 401 when the assertion fails, 503 when storage is down."""
    body = {
        "error": "invalid_request",
        "error_description": redox_description(error),
        "error_uri": REDOX_ERROR_URI,
    }
    return json_response(body, error.status_code)


def _policy(settings: Settings) -> TokenPolicy:
    rules = assertion_rules(settings, TOKEN_PATH, require_exp=False, iat_max_age=300, iat_skew=10)
    return TokenPolicy(rules, scope_required=False, methods=frozenset({AuthMethod.PRIVATE_KEY_JWT}))


REDOX = TokenDialect(name="redox", policy=_policy, render_error=render_error)
