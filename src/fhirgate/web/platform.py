"""The Platform API: API keys managed by program, in Redox's Platform API shapes
(docs/platform-api.md).

* Authentication: ``Authorization: Bearer <token>`` (RFC 6750 §2.1) where the token comes from
  a **user-level** API key (Redox R8) through the ordinary client-credentials flow with a
  signed assertion (RFC 7523) at ``/oauth2/token`` or ``/v2/auth/token``. The token is checked
  by the resource guard, then its client must be a user-level key whose owner is active, and
  its scope must hold ``platform``. Every call acts as that owner, with the owner's roles
  (:mod:`fhirgate.dashboard.api_keys` enforces them, as for the dashboard).
* Success: ``{"meta": {"version": "1.0.0"}, "payload": {...}}``. Errors:
  ``{"meta": {"version": "1.0.0"}, "errors": [{"code", "message", "field"?}]}`` (plus
  ``requestId`` on a 5xx) — the same envelope, with Redox's ``Meta.Errors[]`` idea in
  place of the payload. 400 malformed JSON; 401 no/invalid token (with an RFC 6750
  challenge); 403 role or scope; 404 unknown or foreign id; 405; 409 concurrent change; 415
  not JSON; 422 well-formed but invalid input; 429; 503 storage down; 500 with a request id.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Mapping
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from fastapi.security import HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response
from starlette.routing import Match

from fhirgate.dashboard.api_keys import (
    PLATFORM_SCOPE,
    UNSET,
    ApiKeys,
    ApiKeyView,
    ConcurrentChange,
    Forbidden,
    KeyChangeError,
    NotFound,
    Unset,
)
from fhirgate.domain.clients import AuthMethod
from fhirgate.oauth.errors import InsufficientScope, InvalidToken, TooManyAttempts
from fhirgate.services import Services
from fhirgate.web.failures import (
    PLATFORM_PREFIX,
    PLATFORM_VERSION,
    STORAGE_ERRORS,
    platform_body,
    platform_item,
    storage_unavailable,
    unexpected_error,
)
from fhirgate.web.guard import BearerError, authenticate, bearer_error_parts

__all__ = ["PlatformError", "router"]


PREFIX = f"{PLATFORM_PREFIX}v1"
_FIELDS = {"jwk_set": "jwkSet", "jwks_url": "jwksURL", "auth_method": "authMethod"}
_MAX_ERRORS = 20


class PlatformError(Exception):
    """An error answered in the Platform API's shape."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        field: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field
        self.headers = dict(headers or {})


# -- shapes ---------------------------------------------------------------------------------


class Meta(BaseModel):
    version: str = PLATFORM_VERSION


class JWK(BaseModel):
    """A public JSON Web Key (RFC 7517 §4): ``kid`` and ``kty`` required, other members kept.
    Private members (``d``, ``p``, ``q``, ``dp``, ``dq``, ``qi``, ``oth``, ``k``) are refused."""

    model_config = ConfigDict(extra="allow")
    kid: str = Field(min_length=1, max_length=200)
    kty: str = Field(min_length=1, description="RSA or EC")


class JWKSet(BaseModel):
    model_config = ConfigDict(extra="forbid")
    keys: list[JWK] = Field(max_length=20)


class ApiKeyCreate(BaseModel):
    """A new API key (``private_key_jwt``); with neither keys nor URL it cannot authenticate
    until keys are added."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=100)
    jwksURL: str | None = Field(default=None, description="https URL serving the JWK Set")
    jwkSet: JWKSet | None = None


class ApiKeyUpdate(BaseModel):
    """Any of the fields; ``jwkSet`` replaces the whole set; ``jwksURL: null`` removes it."""

    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(default=None, min_length=1, max_length=100)
    jwksURL: str | None = None
    jwkSet: JWKSet | None = None


class EnvironmentRef(BaseModel):
    id: str
    environmentFlag: Literal["Development", "Staging", "Production"]


class ApiKey(BaseModel):
    id: str = Field(description="The client id")
    name: str
    jwksURL: str | None
    jwkSet: JWKSet
    environment: EnvironmentRef
    authMethod: str
    status: Literal["active", "revoked"]
    createdAt: datetime
    updatedAt: datetime
    lastUsedAt: datetime | None = Field(description="When it was last issued a token")


class ApiKeysPayload(BaseModel):
    apikeys: list[ApiKey]


class ApiKeysResponse(BaseModel):
    meta: Meta
    payload: ApiKeysPayload


class ApiKeyPayload(BaseModel):
    apikey: ApiKey


class ApiKeyResponse(BaseModel):
    meta: Meta
    payload: ApiKeyPayload


class MessagePayload(BaseModel):
    message: str


class MessageResponse(BaseModel):
    meta: Meta
    payload: MessagePayload


class Organization(BaseModel):
    id: str
    slug: str


class EnvironmentInfo(EnvironmentRef):
    organization: Organization
    canManageApiKeys: bool


class EnvironmentsPayload(BaseModel):
    environments: list[EnvironmentInfo]


class EnvironmentsResponse(BaseModel):
    meta: Meta
    payload: EnvironmentsPayload


class ErrorItem(BaseModel):
    code: str
    message: str
    field: str | None = None


class ErrorResponse(BaseModel):
    meta: Meta
    errors: list[ErrorItem]
    requestId: str | None = None


def _apikey(view: ApiKeyView) -> ApiKey:
    return ApiKey(
        id=view.client_id,
        name=view.name,
        jwksURL=view.jwks_url,
        jwkSet=JWKSet(keys=[JWK.model_validate(dict(jwk)) for jwk in view.public_jwks]),
        environment=EnvironmentRef(
            id=view.environment_id,
            environmentFlag=view.environment_kind.capitalize(),  # type: ignore[arg-type]
        ),
        authMethod=view.auth_method,
        status=view.status,  # type: ignore[arg-type]
        createdAt=view.created_at,
        updatedAt=view.updated_at,
        lastUsedAt=view.last_used,
    )


# -- errors ---------------------------------------------------------------------------------


def _validation(exc: RequestValidationError) -> PlatformError | JSONResponse:
    errors = list(exc.errors())
    if any(e.get("type") == "json_invalid" for e in errors):
        return PlatformError(400, "invalid_request", "the body is not valid JSON")
    if any(isinstance(e.get("input"), bytes) for e in errors):
        return PlatformError(415, "unsupported_media_type", "send the body as application/json")
    items = []
    for error in errors[:_MAX_ERRORS]:
        loc = [str(part) for part in error.get("loc", ()) if part != "body"]
        items.append(
            platform_item("invalid_value", str(error.get("msg", "invalid")), ".".join(loc))
        )
    return JSONResponse(platform_body(items), status_code=422)


def _allowed_methods(request: Request) -> set[str]:
    """Methods of this router's routes matching the path (for a 405's ``Allow``)."""
    allowed: set[str] = set()
    for route in router.routes:
        if isinstance(route, APIRoute) and route.include_in_schema:
            match, _ = route.matches({**request.scope, "method": "\x00"})
            if match is Match.PARTIAL:
                allowed |= route.methods or set()
    return allowed


def _as_platform_error(exc: Exception) -> PlatformError | JSONResponse:
    if isinstance(exc, PlatformError):
        return exc
    if isinstance(exc, BearerError):
        error, headers = bearer_error_parts(exc)
        if isinstance(error, TooManyAttempts):
            return PlatformError(429, error.error, error.description, headers=headers)
        return PlatformError(error.status_code, error.error, error.description, headers=headers)
    if isinstance(exc, RequestValidationError):
        return _validation(exc)
    if isinstance(exc, NotFound):
        return PlatformError(404, "not_found", str(exc))
    if isinstance(exc, Forbidden):
        return PlatformError(403, "forbidden", str(exc))
    if isinstance(exc, ConcurrentChange):
        return PlatformError(409, "conflict", str(exc))
    if isinstance(exc, KeyChangeError):
        field = _FIELDS.get(exc.field or "", exc.field)
        return PlatformError(422, "invalid_value", str(exc), field)
    if isinstance(exc, HTTPException):
        return PlatformError(exc.status_code, "invalid_request", str(exc.detail).lower())
    raise exc


async def _error_response(request: Request, exc: Exception) -> Response:
    try:
        found = _as_platform_error(exc)
    except STORAGE_ERRORS as storage:
        return await storage_unavailable(request, storage)
    except Exception as unexpected:
        return await unexpected_error(request, unexpected)
    if isinstance(found, JSONResponse):
        return found
    body = platform_body([platform_item(found.code, found.message, found.field)])
    headers = {"Cache-Control": "no-store", **found.headers}
    return JSONResponse(body, status_code=found.status, headers=headers)


# -- authentication -------------------------------------------------------------------------


async def _platform_user(request: Request) -> str:
    """The dashboard user the request acts for: the owner of the user-level key whose token
    it carries (RFC 6750 challenge on every refusal)."""
    services: Services = request.app.state.services
    principal = await authenticate(request)
    registered = await services.directory.get(principal.client_id)
    owner = None if registered is None else registered.client.owner_user_id
    if owner is None:
        raise BearerError(
            InvalidToken(
                "the Platform API takes the access tokens of user-level API keys",
                check="not_user_level",
            )
        )
    if PLATFORM_SCOPE not in principal.scopes.other_scopes:
        missing = InsufficientScope("the token lacks the platform scope", check="scope")
        raise BearerError(missing, scope=PLATFORM_SCOPE)
    try:
        await services.api_keys.actor(owner)
    except Forbidden:
        raise BearerError(
            InvalidToken("the API key's owner is deactivated", check="owner_inactive")
        ) from None
    return owner


class PlatformRoute(APIRoute):
    """Authenticates before anything else (body parsing included) and answers every error,
    from any layer, in the Platform API's shape."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def platform_handler(request: Request) -> Response:
            try:
                request.state.platform_user = await _platform_user(request)
                return await handler(request)
            except Exception as exc:
                return await _error_response(request, exc)

        return platform_handler


def _user(request: Request) -> str:
    return str(request.state.platform_user)


def _keys(request: Request) -> ApiKeys:
    services: Services = request.app.state.services
    return services.api_keys


User = Annotated[str, Depends(_user)]
Keys = Annotated[ApiKeys, Depends(_keys)]

_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="userApiKeyToken",
    description="An access token of a user-level API key (scope `platform`), from "
    "`/oauth2/token` or `/v2/auth/token` with a signed client assertion (RFC 7523).",
)
_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in (
        (400, "Malformed JSON"),
        (401, "Missing or invalid token, or not a user-level API key's"),
        (403, "The key's owner may not do this (role), or the token lacks the platform scope"),
        (404, "No such environment or API key (or not in your organizations)"),
        (422, "Invalid input (wrong type, unknown field, unusable key, non-https URL…)"),
    )
}
router = APIRouter(
    prefix=PREFIX,
    tags=["platform"],
    route_class=PlatformRoute,
    dependencies=[Security(_bearer)],
    responses=_ERRORS,
)


def _found(view: ApiKeyView) -> ApiKeyView:
    """The Platform API manages environments' keys; user-level keys live in the dashboard."""
    if view.user_level:
        raise NotFound("no such API key")
    return view


def _envelope(payload: Mapping[str, Any]) -> dict[str, Any]:
    return {"meta": Meta(), "payload": payload}


# -- endpoints ------------------------------------------------------------------------------


@router.get(
    "/environments",
    response_model=EnvironmentsResponse,
    summary="List the environments you can see",
)
async def list_environments(user: User, keys: Keys) -> dict[str, Any]:
    """Every environment of your organizations, with whether you may manage its API keys
    (organization owner or admin, or the environment's engineer)."""
    found = await keys.environments(user)
    environments = [
        EnvironmentInfo(
            id=env.id,
            environmentFlag=env.kind.capitalize(),  # type: ignore[arg-type]
            organization=Organization(id=env.organization_id, slug=env.organization_slug),
            canManageApiKeys=env.can_manage,
        )
        for env in found
    ]
    return _envelope({"environments": environments})


@router.get(
    "/environments/{environmentId}/apikeys",
    response_model=ApiKeysResponse,
    summary="List the API keys of an environment",
)
async def list_apikeys(environmentId: str, user: User, keys: Keys) -> dict[str, Any]:
    """The environment's API keys (user-level keys are never listed). Any member of the
    environment's organization may read them."""
    views = await keys.list_keys(user, environmentId)
    return _envelope({"apikeys": [_apikey(view) for view in views]})


@router.post(
    "/environments/{environmentId}/apikeys",
    response_model=ApiKeyResponse,
    status_code=201,
    summary="Create an API key",
)
async def create_apikey(
    environmentId: str,
    body: ApiKeyCreate,
    user: User,
    keys: Keys,
) -> dict[str, Any]:
    """A new ``private_key_jwt`` API key with the given public keys and/or JWKS URL. Takes
    the organization owner or admin role, or the engineer role in the environment."""
    created = await keys.create(
        user,
        environmentId,
        body.name,
        AuthMethod.PRIVATE_KEY_JWT,
        jwk_set=None if body.jwkSet is None else body.jwkSet.model_dump(),
        jwks_url=body.jwksURL,
    )
    return _envelope({"apikey": _apikey(created.key)})


@router.get(
    "/apikeys/{apikeyId}",
    response_model=ApiKeyResponse,
    summary="Get an API key",
)
async def get_apikey(apikeyId: str, user: User, keys: Keys) -> dict[str, Any]:
    return _envelope({"apikey": _apikey(_found(await keys.get(user, apikeyId)))})


@router.patch(
    "/apikeys/{apikeyId}",
    response_model=ApiKeyResponse,
    summary="Update an API key",
)
async def update_apikey(
    apikeyId: str,
    body: ApiKeyUpdate,
    user: User,
    keys: Keys,
) -> dict[str, Any]:
    """Change any of ``name``, ``jwksURL`` (``null`` removes it) and ``jwkSet`` (replaces
    the whole set), in one write."""
    given = body.model_fields_set
    if "name" in given and body.name is None:
        raise PlatformError(422, "invalid_value", "the name cannot be removed", "name")
    _found(await keys.get(user, apikeyId))
    jwk_set: Mapping[str, Any] | Unset = UNSET
    if "jwkSet" in given:
        jwk_set = {"keys": []} if body.jwkSet is None else body.jwkSet.model_dump()
    jwks_url: str | Unset | None = body.jwksURL if "jwksURL" in given else UNSET
    view = await keys.update(user, apikeyId, name=body.name, jwk_set=jwk_set, jwks_url=jwks_url)
    return _envelope({"apikey": _apikey(view)})


@router.delete(
    "/apikeys/{apikeyId}",
    response_model=MessageResponse,
    summary="Delete an API key",
)
async def delete_apikey(apikeyId: str, user: User, keys: Keys) -> dict[str, Any]:
    """Deletes the key for good: it cannot be undone, and its tokens stop working."""
    _found(await keys.get(user, apikeyId))
    await keys.delete(user, apikeyId)
    return _envelope({"message": f"API key {apikeyId} deleted"})


@router.api_route(
    "/{path:path}",
    methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"],
    include_in_schema=False,
)
async def unknown(request: Request, path: str) -> Response:
    """Anything else under the prefix: 405 with ``Allow`` when the path exists, else 404."""
    allowed = _allowed_methods(request)
    if allowed:
        allow = ", ".join(sorted(allowed))
        raise PlatformError(
            405, "method_not_allowed", "method not allowed", headers={"Allow": allow}
        )
    raise PlatformError(404, "not_found", f"no endpoint {PREFIX}/{path}")
