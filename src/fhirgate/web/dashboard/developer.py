"""The Developer page (environment switcher; API Keys and DevTools tabs), an API key's Settings
page, user-level API keys and the Postman downloads.

Every change goes through :class:`~fhirgate.dashboard.api_keys.ApiKeys`, which checks the
person's roles on the server (the pages only hide what the server would refuse anyway). Key
pairs generated in the browser never reach the server: only the public JWK is posted
(static/app.js).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Request
from starlette.responses import JSONResponse, Response

from fhirgate.dashboard import postman
from fhirgate.dashboard.api_keys import (
    ApiKeys,
    ApiKeyView,
    CreatedKey,
    Forbidden,
    KeyChangeError,
)
from fhirgate.dashboard.sessions import Session
from fhirgate.domain.clients import AuthMethod
from fhirgate.domain.errors import NotFound
from fhirgate.domain.organizations import EnvironmentKind
from fhirgate.web.dashboard.common import (
    DashboardRoute,
    Page,
    PageError,
    check_csrf,
    first_submission,
    membership,
    not_found,
    redirect,
    render,
    require_session,
    services_of,
)

__all__ = ["router"]

router = APIRouter(route_class=DashboardRoute)

METHODS = {
    AuthMethod.PRIVATE_KEY_JWT.value: "OAuth API key (signed JWT)",
    AuthMethod.CLIENT_SECRET_BASIC.value: "Client secret (HTTP Basic)",
    AuthMethod.CLIENT_SECRET_POST.value: "Client secret (form body)",
    AuthMethod.LEGACY_API_KEY.value: "Legacy API key",
}
_ALG_OF_KTY = {"RSA": "RS384", "EC": "ES384"}
#: ``?resent=1``: where a form sent again (a reload) lands instead of acting twice.
_RESENT = {
    "keys": "That form was already sent: the API key it created is in the list below. A secret "
    "is shown only once; if it was not kept, create a new secret on the key's page.",
    "user-keys": "That form was already sent: the API key it created is in the list below.",
    "secret": "That form was already sent: the secret was replaced then and is not shown "
    "again. If it was not kept, create a new secret.",
}
_Once = Annotated[str, Form(max_length=64)]


def _resent(request: Request, kind: str) -> str | None:
    return _RESENT[kind] if request.query_params.get("resent") == "1" else None


_Session = Annotated[Session, Depends(require_session)]
_Changing = Annotated[Session, Depends(check_csrf)]


def _api_keys(request: Request) -> ApiKeys:
    return services_of(request).api_keys


def _wants_json(request: Request) -> bool:
    return "application/json" in request.headers.get("accept", "")


async def _guarded(call: Awaitable[Any]) -> Any:
    """Run a service call, turning its refusals into the pages' answers."""
    try:
        return await call
    except NotFound:
        not_found()
    except Forbidden as exc:
        raise PageError(403, "Not allowed", f"You can see this but not change it: {exc}.") from exc


def _env_kind(env: str) -> str:
    if env not in {kind.value for kind in EnvironmentKind}:
        not_found()
    return env


async def _environment_page(
    request: Request, session: Session, slug: str, env: str
) -> tuple[Page, Any]:
    org = await membership(request, session, slug)
    environments = await _api_keys(request).environments(session.user.id)
    for access in environments:
        if access.organization_id == org.organization_id and access.kind == _env_kind(env):
            return Page("developer", org, env), access
    not_found()


@router.get("/orgs/{slug}/{env}/developer")
async def developer(request: Request, slug: str, env: str, session: _Session) -> Response:
    """The API Keys tab: every key of the environment, and (engineers, owners, admins) the
    form to create one."""
    page, access = await _environment_page(request, session, slug, env)
    keys = await _guarded(_api_keys(request).list_keys(session.user.id, access.id))
    context = {"access": access, "keys": keys, "methods": METHODS, "tab": "keys"}
    return render(request, "developer.html", {**context, "notice": _resent(request, "keys")},
                  page=page)  # fmt: skip


@router.get("/orgs/{slug}/{env}/developer/devtools")
async def devtools(request: Request, slug: str, env: str, session: _Session) -> Response:
    """The DevTools tab: the Postman collection and environment of each signed-JWT key."""
    page, access = await _environment_page(request, session, slug, env)
    keys = await _guarded(_api_keys(request).list_keys(session.user.id, access.id))
    usable = [key for key in keys if key.auth_method == AuthMethod.PRIVATE_KEY_JWT]
    context = {"access": access, "keys": usable, "tab": "devtools"}
    return render(request, "devtools.html", context, page=page)


@router.post("/orgs/{slug}/{env}/api-keys")
async def create(
    request: Request,
    slug: str,
    env: str,
    session: _Changing,
    name: Annotated[str, Form(max_length=1000)],
    auth_method: Annotated[str, Form(max_length=40)] = AuthMethod.PRIVATE_KEY_JWT.value,
    once: _Once = "",
) -> Response:
    page, access = await _environment_page(request, session, slug, env)
    if not await first_submission(request, session, once):
        return redirect(f"/dashboard/orgs/{slug}/{env}/developer?resent=1")
    try:
        created = await _guarded(
            _api_keys(request).create(session.user.id, access.id, name, auth_method)
        )
    except KeyChangeError as exc:
        keys = await _api_keys(request).list_keys(session.user.id, access.id)
        context = {"access": access, "keys": keys, "methods": METHODS, "tab": "keys"}
        return render(
            request, "developer.html", {**context, "error": str(exc)}, page=page, status=400
        )
    if created.secret is None:
        return redirect(f"/dashboard/keys/{created.key.client_id}")
    return await _settings_page(request, session, created.key, created=created)


# The Settings page of one key -----------------------------------------------------------------


async def _settings_page(
    request: Request,
    session: Session,
    key: ApiKeyView,
    *,
    created: CreatedKey | None = None,
    error: str | None = None,
    notice: str | None = None,
) -> Response:
    api_keys = _api_keys(request)
    activity = await api_keys.activity(session.user.id, key.client_id)
    org = None
    if not key.user_level:
        org = await membership(request, session, key.organization_slug)
    can_manage = key.user_level or any(
        access.id == key.environment_id and access.can_manage
        for access in await api_keys.environments(session.user.id)
    )
    settings = services_of(request).settings
    context = {
        "key": key,
        "methods": METHODS,
        "can_manage": can_manage,
        "active": key.status == "active",
        "activity": activity,
        "chart": _chart(activity.tokens_per_day),
        "secret": created.secret if created else None,
        "token_url": settings.url("/oauth2/token"),
        "redox_token_url": settings.url("/v2/auth/token"),
        "error": error,
        "notice": notice,
    }
    section = "user-keys" if key.user_level else "developer"
    page = Page(section, org, key.environment_kind if org else None)
    return render(request, "api_key.html", context, page=page, status=400 if error else 200)


def _chart(days: Any) -> dict[str, Any]:
    """Bar geometry of the tokens-per-day chart (an inline SVG, no script)."""
    counts = [day.tokens for day in days]
    top = max(counts, default=0) or 1
    width, height, gap = 40, 120, 8
    bars = [
        {
            "x": index * (width + gap),
            "height": round(height * day.tokens / top),
            "y": height - round(height * day.tokens / top),
            "label": day.day.strftime("%d"),
            "title": f"{day.day.isoformat()}: {day.tokens} tokens",
        }
        for index, day in enumerate(days)
    ]
    return {"bars": bars, "width": len(bars) * (width + gap), "height": height, "bar": width}


async def _key_or_404(request: Request, session: Session, client_id: str) -> ApiKeyView:
    key: ApiKeyView = await _guarded(_api_keys(request).get(session.user.id, client_id))
    return key


@router.get("/keys/{client_id}")
async def settings(request: Request, client_id: str, session: _Session) -> Response:
    key = await _key_or_404(request, session, client_id)
    return await _settings_page(request, session, key, notice=_resent(request, "secret"))


KeyChange = Callable[[ApiKeys, str], Awaitable[Any]]


async def _change(
    request: Request, session: Session, client_id: str, change: KeyChange, notice: str
) -> Response:
    """Apply a change to a key and show its Settings page again (JSON for the page's scripts)."""
    key = await _key_or_404(request, session, client_id)
    try:
        result = await _guarded(change(_api_keys(request), session.user.id))
    except KeyChangeError as exc:
        if _wants_json(request):
            return JSONResponse({"error": str(exc)}, status_code=400)
        return await _settings_page(request, session, key, error=str(exc))
    if _wants_json(request):
        return JSONResponse(result if isinstance(result, dict) else {"ok": True})
    fresh = await _key_or_404(request, session, client_id)
    return await _settings_page(request, session, fresh, notice=notice)


@router.post("/keys/{client_id}/rename")
async def rename(
    request: Request,
    client_id: str,
    session: _Changing,
    name: Annotated[str, Form(max_length=1000)],
) -> Response:
    return await _change(
        request, session, client_id, lambda keys, me: keys.rename(me, client_id, name), "Renamed."
    )


@router.post("/keys/{client_id}/keys")
async def add_key(
    request: Request,
    client_id: str,
    session: _Changing,
    key: Annotated[str, Form(max_length=20_000)],
    kid: Annotated[str, Form(max_length=200)] = "",
) -> Response:
    """Register a public key: pasted (PEM or JWK), or generated by the page's script."""

    async def change(keys: ApiKeys, me: str) -> dict[str, Any]:
        before = {k.kid for k in (await keys.get(me, client_id)).keys}
        after = await keys.add_public_key(me, client_id, key, kid.strip() or None)
        return {"kids": [k.kid for k in after.keys if k.kid not in before]}

    return await _change(request, session, client_id, change, "Public key added.")


@router.post("/keys/{client_id}/keys/remove")
async def remove_key(
    request: Request, client_id: str, session: _Changing, kid: Annotated[str, Form(max_length=200)]
) -> Response:
    return await _change(
        request,
        session,
        client_id,
        lambda keys, me: keys.remove_public_key(me, client_id, kid),
        f"Key {kid} removed.",
    )


@router.post("/keys/{client_id}/jwks-url")
async def set_jwks_url(
    request: Request,
    client_id: str,
    session: _Changing,
    jwks_url: Annotated[str, Form(max_length=4096)] = "",
) -> Response:
    url = jwks_url.strip() or None
    return await _change(
        request,
        session,
        client_id,
        lambda keys, me: keys.set_jwks_url(me, client_id, url),
        "JWKS URL saved." if url else "JWKS URL removed.",
    )


@router.post("/keys/{client_id}/jwks-url/test")
async def test_jwks_url(
    request: Request,
    client_id: str,
    session: _Changing,
    jwks_url: Annotated[str, Form(max_length=4096)] = "",
) -> Response:
    """Fetch the URL now and list its kids (the page's "Test" button)."""

    async def check(keys: ApiKeys, me: str) -> dict[str, Any]:
        found = await keys.test_jwks_url(me, client_id, jwks_url.strip() or None)
        return {"url": found.url, "kids": list(found.kids)}

    return await _change(request, session, client_id, check, "JWKS URL tested.")


@router.post("/keys/{client_id}/secret")
async def rotate_secret(
    request: Request, client_id: str, session: _Changing, once: _Once = ""
) -> Response:
    """A new secret, shown once; the old one stops working at once."""
    await _key_or_404(request, session, client_id)
    if not await first_submission(request, session, once):
        return redirect(f"/dashboard/keys/{client_id}?resent=1")
    try:
        created = await _guarded(_api_keys(request).rotate_secret(session.user.id, client_id))
    except KeyChangeError as exc:
        key = await _key_or_404(request, session, client_id)
        return await _settings_page(request, session, key, error=str(exc))
    return await _settings_page(request, session, created.key, created=created)


_CONFIRM = {
    "revoke": (
        "Revoke this API key?",
        "It can no longer get tokens, and the tokens it holds stop working. This cannot be "
        "undone; create a new key to start again.",
        "Revoke",
    ),
    "delete": (
        "Delete this API key?",
        "The key, its public keys and its settings are removed for good, and its tokens stop "
        "working. This cannot be undone.",
        "Delete",
    ),
}


@router.get("/keys/{client_id}/{action}")
async def confirm(request: Request, client_id: str, action: str, session: _Session) -> Response:
    """The confirmation page of a revocation or a deletion."""
    if action not in _CONFIRM:
        not_found()
    key = await _key_or_404(request, session, client_id)
    heading, message, button = _CONFIRM[action]
    context = {"key": key, "heading": heading, "message": message, "button": button}
    return render(request, "confirm.html", {**context, "action": action})


@router.post("/keys/{client_id}/revoke")
async def revoke(request: Request, client_id: str, session: _Changing) -> Response:
    return await _change(
        request,
        session,
        client_id,
        lambda keys, me: keys.revoke(me, client_id),
        "The API key is revoked: its tokens are refused.",
    )


@router.post("/keys/{client_id}/delete")
async def delete(request: Request, client_id: str, session: _Changing) -> Response:
    key = await _key_or_404(request, session, client_id)
    await _guarded(_api_keys(request).delete(session.user.id, client_id))
    if key.user_level:
        return redirect("/dashboard/account/api-keys")
    return redirect(f"/dashboard/orgs/{key.organization_slug}/{key.environment_kind}/developer")


# Postman ---------------------------------------------------------------------------------------


def _download(body: dict[str, Any], filename: str) -> JSONResponse:
    return JSONResponse(body, headers={"Content-Disposition": f'attachment; filename="{filename}"'})


def _postman_alg(key: ApiKeyView, kid: str | None) -> tuple[str, str]:
    """The (kid, alg) the Postman environment signs with: ``kid`` or the key's first."""
    for info in key.keys:
        if kid in (None, info.kid) and info.kty in _ALG_OF_KTY:
            alg = info.alg if info.alg in _ALG_OF_KTY.values() else None
            return info.kid, alg or _ALG_OF_KTY[info.kty]
    return kid or "", "RS384"


@router.get("/keys/{client_id}/postman/collection.json")
async def postman_collection(request: Request, client_id: str, session: _Session) -> Response:
    key = await _key_or_404(request, session, client_id)
    _kid, alg = _postman_alg(key, None)
    body = postman.collection(name=f"fhirgate — {key.name}", client_id=key.client_id, alg=alg)
    return _download(body, "fhirgate.postman_collection.json")


@router.get("/keys/{client_id}/postman/environment.json")
async def postman_environment(
    request: Request, client_id: str, session: _Session, kid: str | None = None
) -> Response:
    """The environment without a private key (the page adds it in the browser right after
    generating a key pair; the server never has it)."""
    key = await _key_or_404(request, session, client_id)
    chosen, alg = _postman_alg(key, kid)
    settings = services_of(request).settings
    body = postman.environment(
        name=f"fhirgate — {key.name} ({key.environment_kind})",
        base_url=settings.public_url,
        token_url=settings.url("/oauth2/token"),
        client_id=key.client_id,
        kid=chosen,
        alg=alg,
        scope=key.scope,
    )
    return _download(body, "fhirgate.postman_environment.json")


# User-level API keys ----------------------------------------------------------------------------


@router.get("/account/api-keys")
async def user_keys(request: Request, session: _Session) -> Response:
    keys = await _guarded(_api_keys(request).list_user_keys(session.user.id))
    context = {"keys": keys, "notice": _resent(request, "user-keys")}
    return render(request, "user_keys.html", context, page=Page("user-keys"))


@router.post("/account/api-keys")
async def create_user_key(
    request: Request,
    session: _Changing,
    name: Annotated[str, Form(max_length=1000)],
    once: _Once = "",
) -> Response:
    if not await first_submission(request, session, once):
        return redirect("/dashboard/account/api-keys?resent=1")
    try:
        key = await _guarded(_api_keys(request).create_user_key(session.user.id, name))
    except KeyChangeError as exc:
        keys = await _api_keys(request).list_user_keys(session.user.id)
        context = {"keys": keys, "error": str(exc)}
        return render(request, "user_keys.html", context, page=Page("user-keys"), status=400)
    return redirect(f"/dashboard/keys/{key.client_id}")
