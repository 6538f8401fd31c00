"""Redox legacy API keys over HTTP: ``POST /auth/authenticate`` and ``POST /auth/refreshToken``.

Shapes as Redox documents them (docs/redox.md#legacy-api-keys): JSON ``{"apiKey", "secret"}`` or
``{"apiKey", "refreshToken"}`` in; ``{"accessToken", "expires", "refreshToken"}`` out, with
``expires`` in ISO 8601 UTC with milliseconds (``2015-03-25T20:52:35.000Z``). Redox answers
failures with a plain-text reason and 401 ("Invalid source secret"); here every credential
failure of one endpoint has one text, whatever the cause, so the answer never tells an unknown
``apiKey`` from a wrong secret or a spent refresh token. Malformed bodies get 400.
``FHIRGATE_LEGACY_API_KEYS=false`` removes both routes.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from fhirgate.domain.tokens import IssuedPair
from fhirgate.oauth.errors import OAuthError, TooManyAttempts
from fhirgate.oauth.legacy import LegacyKeyService
from fhirgate.services import Services
from fhirgate.web.token import NO_STORE, source_address

__all__ = ["router"]

log = logging.getLogger("fhirgate.token")
router = APIRouter(tags=["redox legacy API keys"])

AUTHENTICATE_FAILED = "Invalid source secret"
REFRESH_FAILED = "Invalid refresh token"


def _expires(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _pair(pair: IssuedPair) -> Response:
    body = {
        "accessToken": pair.access_token,
        "expires": _expires(pair.access_expires_at),
        "refreshToken": pair.refresh_token,
    }
    return JSONResponse(body, headers=NO_STORE)


def _text(status: int, text: str, headers: dict[str, str] | None = None) -> Response:
    return PlainTextResponse(text, status_code=status, headers={**NO_STORE, **(headers or {})})


async def _fields(request: Request, names: tuple[str, str]) -> tuple[str, str] | Response:
    try:
        body = json.loads(await request.body())
    except (ValueError, RecursionError):  # not UTF-8, not JSON, too deep, a 4,300+ digit int
        body = None
    values = [body.get(name) if isinstance(body, dict) else None for name in names]
    if not all(isinstance(value, str) and value for value in values):
        wanted = " and ".join(f'"{name}"' for name in names)
        return _text(400, f"Invalid request: a JSON object with {wanted} strings is required")
    return values[0], values[1]  # type: ignore[return-value]


def _refused(error: OAuthError, text: str, endpoint: str, source: str) -> Response:
    log.info(
        "legacy request rejected",
        extra={
            "endpoint": endpoint,
            "check": error.check,
            "detail": error.detail,
            "source": source,
        },
    )
    if isinstance(error, TooManyAttempts):
        return _text(429, error.description, {"Retry-After": str(error.retry_after)})
    return _text(401, text)


Exchange = Callable[[LegacyKeyService, str, str, str], Awaitable[IssuedPair]]


async def _exchange(request: Request, second: str, exchange: Exchange, failure: str) -> Response:
    """Read ``apiKey`` and ``second`` from the JSON body, run the exchange, shape the answer."""
    fields = await _fields(request, ("apiKey", second))
    if isinstance(fields, Response):
        return fields
    services: Services = request.app.state.services
    source = source_address(request.scope)
    try:
        pair = await exchange(services.legacy, *fields, source)
    except OAuthError as error:
        return _refused(error, failure, request.url.path, source)
    log.info(
        "legacy token issued",
        extra={"endpoint": request.url.path, "client_id": fields[0], "family": pair.family_id},
    )
    return _pair(pair)


@router.post("/auth/authenticate", response_class=JSONResponse)
async def authenticate(request: Request) -> Response:
    """Exchange a legacy ``apiKey`` and ``secret`` for a 24-hour access token."""
    return await _exchange(request, "secret", LegacyKeyService.authenticate, AUTHENTICATE_FAILED)


@router.post("/auth/refreshToken", response_class=JSONResponse)
async def refresh_token(request: Request) -> Response:
    """Spend a legacy refresh token for a new access and refresh token."""
    return await _exchange(request, "refreshToken", LegacyKeyService.refresh, REFRESH_FAILED)
