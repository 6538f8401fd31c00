"""``create_app(settings)``: the ASGI application, with everything built in its lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import FastAPI
from starlette.exceptions import HTTPException
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from fhirgate import __version__
from fhirgate.config import Settings
from fhirgate.dialects import oneup, redox_legacy
from fhirgate.dialects.pattern import PATTERN
from fhirgate.dialects.redox import REDOX
from fhirgate.logs import lean_records
from fhirgate.services import Services
from fhirgate.web import dashboard, discovery, fhir
from fhirgate.web.failures import (
    STORAGE_ERRORS,
    BodyLimitMiddleware,
    http_error,
    storage_unavailable,
    unexpected_error,
)
from fhirgate.web.guard import BearerError, CurrentPrincipal, bearer_error_response
from fhirgate.web.platform import router as platform_router
from fhirgate.web.token import STANDARD, token_app
from fhirgate.web.token_management import (
    INTROSPECTION_PATH,
    REVOCATION_PATH,
    introspection_app,
    revocation_app,
)

__all__ = ["FhirgateApp", "create_app", "create_app_from_env"]

log = logging.getLogger("fhirgate")


async def _every(seconds: float, job: Callable[[], Awaitable[object]]) -> None:
    while True:
        await asyncio.sleep(seconds)
        try:
            await job()
        except Exception:  # a maintenance job must never stop the server
            log.exception("background job failed")


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    services = Services.build(settings)
    app.state.services = services
    await services.keyring.ensure()
    await services.refresh_statistics()
    jobs = [asyncio.create_task(_every(*job)) for job in services.background_jobs()]
    try:
        yield
    finally:
        for job in jobs:
            job.cancel()
        # a job stopped mid-transaction rolls back before the last audit rows are written
        await asyncio.gather(*jobs, return_exceptions=True)
        await services.aclose()


def _whoami_routes(app: FastAPI) -> None:
    @app.get("/whoami", tags=["resource"])
    async def whoami(principal: CurrentPrincipal) -> dict[str, Any]:
        """The caller as its access token describes it."""
        return {
            "client_id": principal.client_id,
            "sub": principal.subject,
            "scope": str(principal.scopes),
            "exp": principal.expires_at,
            "iat": principal.issued_at,
            "organization": principal.organization_id,
            "environment": principal.environment,
            "oneup_user_id": principal.user_id,
            "all_users": principal.all_users,
        }

    @app.get("/healthz", tags=["operations"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}


class FhirgateApp(FastAPI):
    """FastAPI, except that a ``POST`` to a token, introspection or revocation URL goes
    straight to its raw ASGI endpoint, and every request under a FHIR base to the FHIR API
    (:class:`~fhirgate.web.fhir.FhirApi`).

    Those are the hot paths (docs/benchmarks.md): skipping FastAPI's middleware stack there
    saves a measurable share of each request. Other methods on the token paths still go through
    the router, which answers 405.
    """

    token_endpoints: dict[str, ASGIApp]
    fhir: fhir.FhirApi

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            endpoint = self.token_endpoints.get(path) if scope["method"] == "POST" else None
            if endpoint is not None:
                scope["app"] = self
                await endpoint(scope, receive, send)
                return
            found = self.fhir.base_of(path)  # matched once, then served
            if found is not None:
                scope["app"] = self
                await self.fhir.serve(found, scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def create_app(settings: Settings | None = None) -> FhirgateApp:
    """Build the fhirgate ASGI app. Storage and keys are opened in the lifespan."""
    settings = settings or Settings()
    app = FhirgateApp(title="fhirgate", version=__version__, lifespan=_lifespan)
    app.state.settings = settings
    app.token_endpoints = {
        path: token_app(dialect, settings)
        for path, dialect in (
            ("/oauth2/token", STANDARD),
            ("/v2/auth/token", REDOX),
            ("/api/auth/token", PATTERN),
        )
    }
    app.token_endpoints[INTROSPECTION_PATH] = introspection_app(settings)
    app.token_endpoints[REVOCATION_PATH] = revocation_app(settings)
    for path, endpoint in app.token_endpoints.items():
        app.router.routes.append(Route(path, endpoint, methods=["POST"]))
    app.include_router(discovery.router)
    app.include_router(oneup.router)
    app.include_router(platform_router)
    app.fhir = fhir.FhirApi(settings.request_body_limit)
    app.add_exception_handler(oneup.UserManagementError, oneup.error_response)
    if settings.legacy_api_keys:
        app.include_router(redox_legacy.router)
    _whoami_routes(app)
    dashboard.install(app)
    app.add_exception_handler(BearerError, lambda _r, e: bearer_error_response(e))
    app.add_exception_handler(HTTPException, http_error)
    for exc_type in STORAGE_ERRORS:
        app.add_exception_handler(exc_type, storage_unavailable)
    app.add_exception_handler(Exception, unexpected_error)
    app.add_middleware(BodyLimitMiddleware, limit=settings.request_body_limit)
    return app


def create_app_from_env() -> FhirgateApp:
    """Factory for ``uvicorn --factory`` (used by ``fhirgate serve --workers N``)."""
    lean_records()
    return create_app(Settings())
