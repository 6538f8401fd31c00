"""Discovery documents and the server's JWK Set.

``/.well-known/smart-configuration`` (SMART App Launch §conformance),
``/.well-known/oauth-authorization-server`` (RFC 8414 §2) and
``/.well-known/openid-configuration`` (OpenID Connect Discovery 1.0 §3) carry absolute URLs
built from the configured public URL, never from the ``Host`` header. Authorization codes come
from the user-management API, not from a browser redirect, so there is no
``authorization_endpoint`` and ``response_types_supported`` is empty. SMART requires discovery
to allow any origin (§app-launch CORS), so these documents carry
``Access-Control-Allow-Origin: *``.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse

from fhirgate.config import Settings
from fhirgate.oauth.keys import ID_TOKEN_ALG
from fhirgate.services import Services

__all__ = ["router", "smart_configuration"]

router = APIRouter(tags=["discovery"])

_CORS = {"Access-Control-Allow-Origin": "*"}
SCOPES_SUPPORTED = [
    "system/*.rs",
    "system/*.cruds",
    "system/*.read",
    "system/*.write",
    "user/*.*",
    "user/*.cruds",
    "user/*.rs",
    "patient/*.rs",
    "openid",
    "platform",  # the Platform API (user-level keys of the dashboard: docs/platform-api.md)
]


AUTH_METHODS = ["private_key_jwt", "client_secret_basic", "client_secret_post"]


def _common(settings: Settings) -> dict[str, Any]:
    algs = sorted(settings.assertion_algorithms)
    return {
        "token_endpoint": settings.url("/oauth2/token"),
        "jwks_uri": settings.url("/.well-known/jwks.json"),
        "grant_types_supported": ["client_credentials", "authorization_code", "refresh_token"],
        "token_endpoint_auth_methods_supported": AUTH_METHODS,
        "token_endpoint_auth_signing_alg_values_supported": algs,
        "revocation_endpoint": settings.url("/oauth2/revoke"),
        "revocation_endpoint_auth_methods_supported": AUTH_METHODS,
        "revocation_endpoint_auth_signing_alg_values_supported": algs,
        "introspection_endpoint": settings.url("/oauth2/introspect"),
        "introspection_endpoint_auth_methods_supported": AUTH_METHODS,
        "introspection_endpoint_auth_signing_alg_values_supported": algs,
        "scopes_supported": SCOPES_SUPPORTED,
        "code_challenge_methods_supported": ["S256"],
    }


def smart_configuration(settings: Settings) -> dict[str, Any]:
    """SMART configuration; ``issuer`` is omitted without ``sso-openid-connect``."""
    return {
        **_common(settings),
        "capabilities": [
            "client-confidential-asymmetric",
            "client-confidential-symmetric",
            "permission-v1",
            "permission-v2",
        ],
    }


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


@router.get("/.well-known/smart-configuration")
async def smart_config(request: Request) -> JSONResponse:
    return JSONResponse(smart_configuration(_services(request).settings), headers=_CORS)


@router.get("/.well-known/oauth-authorization-server")
async def oauth_metadata(request: Request) -> JSONResponse:
    """RFC 8414 §2 metadata; ``issuer`` is identical to the tokens' ``iss`` (§3.3)."""
    settings = _services(request).settings
    body = {"issuer": settings.issuer, **_common(settings), "response_types_supported": []}
    return JSONResponse(body, headers=_CORS)


@router.get("/.well-known/jwks.json")
async def jwks(request: Request) -> JSONResponse:
    """The public keys that verify fhirgate access tokens (RFC 7517 §5)."""
    headers = {**_CORS, "Cache-Control": "public, max-age=60"}
    return JSONResponse(_services(request).keyring.jwks, headers=headers)


@router.get("/.well-known/openid-configuration")
async def openid_configuration(request: Request) -> JSONResponse:
    """OpenID Connect Discovery 1.0 §3: id_tokens are RS256 with keys in ``jwks_uri``."""
    settings = _services(request).settings
    body = {
        "issuer": settings.issuer,
        **_common(settings),
        "response_types_supported": [],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": [ID_TOKEN_ALG],
        "claims_supported": ["iss", "sub", "aud", "exp", "iat", "auth_time"],
    }
    return JSONResponse(body, headers=_CORS)
