"""The developer dashboard: server-rendered pages under ``/dashboard`` (Jinja2, no front-end
build step), their static files, security headers and error pages. docs/dashboard.md."""

from __future__ import annotations

from urllib.parse import quote

from fastapi import FastAPI, Request
from starlette.responses import Response
from starlette.staticfiles import StaticFiles

from fhirgate.web.dashboard import developer, people
from fhirgate.web.dashboard.common import (
    PageError,
    SecurityHeaders,
    SignInRequired,
    not_found,
    redirect,
    render,
)

__all__ = ["install"]


async def _page_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, PageError)
    context = {"heading": exc.heading, "message": exc.message}
    return render(request, "message.html", context, status=exc.status)


async def _sign_in_required(request: Request, exc: Exception) -> Response:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    if request.method != "GET":
        target = "/dashboard/"
    return redirect(f"/dashboard/sign-in?next={quote(target, safe='')}")


async def _unknown(path: str) -> Response:
    """Any other dashboard path: the HTML 404 page."""
    not_found()


def install(app: FastAPI) -> None:
    """Add the dashboard's routes, static files, headers and error pages to ``app``."""
    app.mount(
        "/dashboard/static",
        StaticFiles(packages=[("fhirgate.dashboard", "static")]),
        name="dashboard-static",
    )
    app.include_router(people.router, prefix="/dashboard", include_in_schema=False)
    app.include_router(developer.router, prefix="/dashboard", include_in_schema=False)
    app.add_api_route("/dashboard/{path:path}", _unknown, methods=["GET"], include_in_schema=False)
    app.add_exception_handler(PageError, _page_error)
    app.add_exception_handler(SignInRequired, _sign_in_required)
    app.add_middleware(SecurityHeaders)
