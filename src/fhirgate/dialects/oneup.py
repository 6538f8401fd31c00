"""1upHealth's user-management API (``/user-management/v1``), over :mod:`fhirgate.oauth.delegation`.

Shapes as 1upHealth documents them (docs/oneup.md): ``POST /user`` → ``{"success": true,
"code", "oneup_user_id", "app_user_id", "active": true}``, an existing user → 400 ``{"error":
"this user already exists"}``; ``GET /user`` (filtered, paginated; no match for a filter → 400
``{"error": "Could not find a user matching this query"}``); ``PUT /user`` → ``{"oneUpUserId",
"success": true}``; ``POST /user/auth-code`` → a new code. fhirgate adds ``active`` to ``PUT``
(deactivation ends the user's tokens) and ``POST /user/revoke`` (ends the application's grant for
the user; the user stays active).

The application's ``client_id`` and ``client_secret`` come as headers, form or JSON fields, or
query parameters — all three appear in 1upHealth's docs and samples — and are checked, throttled
and audited like any client secret; they are never logged (no access log, and error lines carry
the path only). Each application may make ``FHIRGATE_USER_MANAGEMENT_RATE_LIMIT`` calls an hour
(300 by default); more get 429 with ``Retry-After``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlencode

import orjson
from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response

from fhirgate.domain.app_users import AppUser
from fhirgate.domain.clients import Client
from fhirgate.domain.errors import Conflict, NotFound
from fhirgate.oauth.delegation import Delegation, UserInactive, authenticate_application
from fhirgate.oauth.errors import InvalidRequest, OAuthError, TooManyAttempts
from fhirgate.oauth.forms import parse_form
from fhirgate.oauth.scopes import ScopeError
from fhirgate.services import Services
from fhirgate.web.token import source_address

__all__ = ["router"]

router = APIRouter(prefix="/user-management/v1", tags=["user management (1upHealth)"])

_NUMBER = re.compile(r"[0-9]{1,18}")
_NO_STORE = {"Cache-Control": "no-store"}
_CREDENTIALS = ("client_id", "client_secret")
MAX_PAGE = 1000


class UserManagementError(Exception):
    """An answer ``{"error": message}`` with ``status`` (1upHealth's error shape)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def error_response(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, UserManagementError)
    return JSONResponse({"error": exc.message}, exc.status, {**_NO_STORE, **exc.headers})


def _merge(params: dict[str, str], pairs: Iterable[tuple[str, Any]]) -> None:
    for name, raw in pairs:
        if raw is None:
            continue
        if not isinstance(raw, str | int | bool):  # JSON: only scalars are parameters
            raise UserManagementError(400, f"parameter {name} must be a string or a number")
        value = str(raw).lower() if isinstance(raw, bool) else str(raw)
        if params.setdefault(name, value) != value:
            raise UserManagementError(400, f"parameter {name} is given twice, differently")


async def _params(request: Request) -> dict[str, str]:
    """Query parameters, body fields (form or JSON) and the credential headers, as one map."""
    params: dict[str, str] = {}
    _merge(params, request.query_params.multi_items())
    body = await request.body()
    if body:
        media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        try:
            if media_type == "application/json":
                document = orjson.loads(body)
                if not isinstance(document, dict):
                    raise ValueError("not an object")
                _merge(params, document.items())
            else:
                _merge(params, parse_form(body, media_type).items())
        except (ValueError, OAuthError) as exc:
            raise UserManagementError(400, "the body must be a form or a JSON object") from exc
    _merge(params, ((name, request.headers.get(name)) for name in _CREDENTIALS))
    return params


async def _application(request: Request, params: dict[str, str]) -> tuple[Services, Client]:
    """The authenticated application, within its hourly quota."""
    services: Services = request.app.state.services
    client_id, secret = params.get("client_id"), params.get("client_secret")
    try:
        if client_id is None or secret is None:
            raise InvalidRequest("client_id and client_secret are required")
        client = await authenticate_application(
            services.authenticator, client_id, secret, source_address(request.scope)
        )
    except TooManyAttempts as error:
        raise UserManagementError(429, error.description, _retry(error.retry_after)) from error
    except OAuthError as error:
        raise UserManagementError(error.status_code, error.description or error.error) from error
    retry_after = await services.user_management_quota.take(client.client_id)
    if retry_after is not None:
        limit = services.user_management_quota.limit
        message = f"rate limit exceeded: {limit} calls per hour"
        raise UserManagementError(429, message, _retry(retry_after))
    return services, client


def _retry(seconds: int) -> dict[str, str]:
    return {"Retry-After": str(seconds)}


def _user_number(params: dict[str, str]) -> int | None:
    value = params.get("oneup_user_id")
    if value is None:
        return None
    if not _NUMBER.fullmatch(value):
        raise UserManagementError(400, "oneup_user_id must be a number")
    return int(value)


async def _user(delegation: Delegation, client: Client, params: dict[str, str]) -> AppUser:
    number, app_user_id = _user_number(params), params.get("app_user_id")
    if number is None and app_user_id is None:
        raise UserManagementError(400, "app_user_id or oneup_user_id is required")
    try:
        return await delegation.users.get(
            client.client_id, app_user_id=app_user_id, oneup_user_id=number
        )
    except NotFound as exc:
        raise UserManagementError(400, str(exc)) from exc


def _with_code(user: AppUser, code: str) -> JSONResponse:
    body = {"success": True, "code": code, **user.describe()}
    return JSONResponse(body, headers=_NO_STORE)


async def _audit(
    services: Services, request: Request, event: str, client: Client, user: AppUser
) -> None:
    await services.audit.record(
        event,
        client_id=client.client_id,
        source=source_address(request.scope),
        actor=client.client_id,
        detail=f"oneup_user_id={user.oneup_user_id}",
    )


@router.post("/user")
async def create_user(request: Request) -> Response:
    """Create a user of the application; the answer carries a first authorization code."""
    params = await _params(request)
    services, client = await _application(request, params)
    app_user_id = params.get("app_user_id")
    if app_user_id is None:
        raise UserManagementError(400, "app_user_id is required")
    try:
        user, code = await services.delegation.create_user(client, app_user_id, params.get("scope"))
    except Conflict as exc:
        raise UserManagementError(400, "this user already exists") from exc
    except (ScopeError, ValueError) as exc:
        raise UserManagementError(400, str(exc)) from exc
    await _audit(services, request, "app_user.created", client, user)
    return _with_code(user, code)


@router.get("/user")
async def list_users(request: Request) -> Response:
    """The application's users, oldest first: ``offset`` and ``limit`` (1-1000, default 100)
    page them; ``app_user_id`` and ``oneup_user_id`` filter them."""
    params = await _params(request)
    services, client = await _application(request, params)
    offset, limit = _page(params)
    number, app_user_id = _user_number(params), params.get("app_user_id")
    page = await services.delegation.users.list(
        client.client_id,
        app_user_id=app_user_id,
        oneup_user_id=number,
        offset=offset,
        limit=limit,
    )
    if not page.users and (number is not None or app_user_id is not None):
        raise UserManagementError(400, "Could not find a user matching this query")
    body: dict[str, Any] = {
        "success": True,
        "entry": [user.describe() for user in page.users],
        "total": page.total,
        "offset": offset,
        "limit": limit,
    }
    if offset + limit < page.total:
        body["next"] = _next_page(services, request, offset + limit, limit)
    return JSONResponse(body)


def _next_page(services: Services, request: Request, offset: int, limit: int) -> str:
    """The next page's URL: the same filters, never the credentials."""
    kept = [
        (name, value)
        for name, value in request.query_params.multi_items()
        if name not in (*_CREDENTIALS, "offset", "limit")
    ]
    query = urlencode([*kept, ("offset", offset), ("limit", limit)])
    return services.settings.url(f"{router.prefix}/user?{query}")


def _page(params: dict[str, str]) -> tuple[int, int]:
    offset, limit = params.get("offset", "0"), params.get("limit", "100")
    if not (_NUMBER.fullmatch(offset) and _NUMBER.fullmatch(limit)):
        raise UserManagementError(400, "offset and limit must be numbers")
    if not 1 <= int(limit) <= MAX_PAGE:
        raise UserManagementError(400, f"limit must be between 1 and {MAX_PAGE}")
    return int(offset), int(limit)


@router.put("/user")
async def update_user(request: Request) -> Response:
    """Change a user's ``app_user_id`` and/or (fhirgate) ``active``; by ``oneup_user_id``."""
    params = await _params(request)
    services, client = await _application(request, params)
    number = _user_number(params)
    if number is None:
        raise UserManagementError(400, "oneup_user_id is required")
    new_id, active = params.get("app_user_id"), params.get("active")
    if new_id is None and active is None:
        raise UserManagementError(400, "give app_user_id or active to change")
    if active is not None and active not in ("true", "false"):
        raise UserManagementError(400, "active must be true or false")
    delegation = services.delegation
    try:
        user = await delegation.users.get(client.client_id, oneup_user_id=number)
        if new_id is not None and new_id != user.app_user_id:
            user = await delegation.users.rename(client.client_id, number, new_id)
            await _audit(services, request, "app_user.renamed", client, user)
        if active is not None and (active == "true") != user.active:
            user = await delegation.set_active(client, number, active == "true")
            event = "app_user.activated" if user.active else "app_user.deactivated"
            await _audit(services, request, event, client, user)
    except NotFound as exc:
        raise UserManagementError(400, str(exc)) from exc
    except Conflict as exc:
        raise UserManagementError(400, "this user already exists") from exc
    except ValueError as exc:
        raise UserManagementError(400, str(exc)) from exc
    return JSONResponse({"oneUpUserId": user.oneup_user_id, "success": True})


@router.post("/user/auth-code")
async def auth_code(request: Request) -> Response:
    """A new authorization code for a user, by ``app_user_id`` or ``oneup_user_id``, with an
    optional ``scope`` (default ``user/*.*``; ``openid`` adds an id_token to the tokens)."""
    params = await _params(request)
    services, client = await _application(request, params)
    user = await _user(services.delegation, client, params)
    try:
        code = await services.delegation.issue_code(client, user, params.get("scope"))
    except (ScopeError, UserInactive) as exc:
        raise UserManagementError(400, str(exc)) from exc
    return _with_code(user, code)


@router.post("/user/revoke")
async def revoke_user_grant(request: Request) -> Response:
    """(fhirgate) End the application's grant for a user: its unused codes and every token
    issued for it stop working at once; the user stays active."""
    params = await _params(request)
    services, client = await _application(request, params)
    user = await _user(services.delegation, client, params)
    await services.delegation.revoke(client, user.oneup_user_id)
    await _audit(services, request, "app_user.grant_revoked", client, user)
    return JSONResponse({"success": True, **user.describe()})
