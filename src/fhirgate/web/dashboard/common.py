"""What every dashboard page shares: templates, security headers, the session, CSRF checks and
the HTML error pages.

* **Headers** (OWASP Secure Headers): a Content Security Policy with no ``unsafe-inline`` and
  ``frame-ancestors 'none'`` (scripts and styles come only from ``/dashboard/static``),
  ``X-Frame-Options: DENY`` for old browsers, ``nosniff``, ``Referrer-Policy: same-origin``,
  and ``Cache-Control: no-store`` on pages (they can show a secret once).
* **Session cookie**: ``HttpOnly``, ``SameSite=Lax``, ``Path=/``; behind https (the public URL)
  also ``Secure`` with the ``__Host-`` prefix, so no other subdomain can set it.
* **CSRF** (OWASP CSRF Prevention Cheat Sheet): every state-changing request must carry the
  session's CSRF token (form field ``csrf_token`` or header ``X-CSRF-Token``) and, when the
  browser says where it comes from (``Origin``, ``Sec-Fetch-Site``), come from this site. Before
  sign-in, a double-submit cookie stands in for the session.
* **Forms that show a secret once** (create a key, replace its secret) carry a single-use
  ``once`` field: reloading the page their POST answered sends the form again, and must not
  create a second key or replace the secret just shown (:func:`first_submission`).
* Templates autoescape everything: a key named ``<script>`` is shown as text.
"""

from __future__ import annotations

import hmac
import re
import secrets
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, NoReturn
from urllib.parse import quote, urlsplit

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.datastructures import MutableHeaders
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fhirgate.dashboard.sessions import ABSOLUTE_TIMEOUT, Session, SessionStore
from fhirgate.domain.stores import digest
from fhirgate.services import Services
from fhirgate.storage.accounts import Membership
from fhirgate.storage.opaque_tokens import new_token

__all__ = [
    "CSP",
    "DashboardRoute",
    "Page",
    "PageError",
    "SecurityHeaders",
    "SignInRequired",
    "check_csrf",
    "check_signin_csrf",
    "cookie_name",
    "first_submission",
    "membership",
    "render",
    "require_session",
    "services_of",
    "session_of",
    "set_session_cookie",
    "signin_csrf",
]

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
_SIGNIN_COOKIE = "fhirgate_signin"
_STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})

_TEMPLATES = Environment(
    loader=PackageLoader("fhirgate.dashboard", "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    trim_blocks=True,
    lstrip_blocks=True,
)
_TEMPLATES.globals["static"] = lambda name: f"/dashboard/static/{quote(name)}"
_TEMPLATES.globals["once"] = new_token  # a fresh form's ``once``
_ONCE = re.compile(r"[A-Za-z0-9_-]{43}")
#: How long a form's ``once`` is remembered: as long as the session that rendered it can live.
_ONCE_SECONDS = int(ABSOLUTE_TIMEOUT.total_seconds())


class PageError(Exception):
    """Answer with an HTML page: ``status`` and a message for the person."""

    def __init__(self, status: int, heading: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.heading = heading
        self.message = message


class SignInRequired(Exception):
    """No live session: the handler redirects to the sign-in page."""


def not_found() -> NoReturn:
    """The same answer for what does not exist and what the person may not know exists."""
    raise PageError(404, "Not found", "There is nothing here, or you do not have access to it.")


class SecurityHeaders:
    """Adds the dashboard's security headers to every response of the wrapped app."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/dashboard"):
            await self.app(scope, receive, send)
            return
        static = scope["path"].startswith("/dashboard/static/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["Content-Security-Policy"] = CSP
                headers["X-Frame-Options"] = "DENY"
                headers["X-Content-Type-Options"] = "nosniff"
                headers.setdefault("Referrer-Policy", "same-origin")
                headers["Cross-Origin-Opener-Policy"] = "same-origin"
                if not static:
                    headers["Cache-Control"] = "no-store"
            await send(message)

        await self.app(scope, receive, send_with_headers)


def services_of(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def _secure(request: Request) -> bool:
    return services_of(request).settings.public_url.startswith("https://")


def cookie_name(request: Request) -> str:
    return "__Host-fhirgate_session" if _secure(request) else "fhirgate_session"


def sessions_of(request: Request) -> SessionStore:
    return services_of(request).sessions


async def session_of(request: Request) -> Session | None:
    """The request's live session, if any (looked up once per request)."""
    if "session" not in request.scope.setdefault("fhirgate", {}):
        found = await sessions_of(request).resume(request.cookies.get(cookie_name(request)))
        request.scope["fhirgate"]["session"] = found
    session: Session | None = request.scope["fhirgate"]["session"]
    return session


async def require_session(request: Request) -> Session:
    session = await session_of(request)
    if session is None:
        raise SignInRequired
    return session


def set_session_cookie(request: Request, response: Response, token: str | None) -> None:
    """Set (or, with ``None``, clear) the session cookie."""
    name, secure = cookie_name(request), _secure(request)
    if token is None:
        response.delete_cookie(name, path="/", secure=secure, httponly=True, samesite="lax")
        return
    response.set_cookie(name, token, path="/", secure=secure, httponly=True, samesite="lax")


def _same_site(request: Request) -> bool:
    """Whether the browser says the request comes from this site (absent headers: unknown,
    left to the token check)."""
    fetch_site = request.headers.get("sec-fetch-site")
    if fetch_site is not None and fetch_site not in {"same-origin", "none"}:
        return False
    origin = request.headers.get("origin")
    if origin is None:
        return True
    ours = urlsplit(services_of(request).settings.public_url)
    theirs = urlsplit(origin)
    return (theirs.scheme, theirs.netloc) == (ours.scheme, ours.netloc)


_FORGED = PageError(
    403,
    "Request refused",
    "This form has expired or did not come from this dashboard. Go back, reload the page and "
    "try again.",
)


async def _presented_token(request: Request) -> str | None:
    header = request.headers.get("x-csrf-token")
    if header is not None:
        return header
    if request.headers.get("content-type", "").startswith(
        ("application/x-www-form-urlencoded", "multipart/form-data")
    ):
        value = (await request.form()).get("csrf_token")
        return value if isinstance(value, str) else None
    return None


async def check_csrf(request: Request) -> Session:
    """The signed-in session of a state-changing request that proves it comes from one of its
    own pages; otherwise 403."""
    session = await require_session(request)
    if request.method in _STATE_CHANGING and not (
        _same_site(request)
        and sessions_of(request).csrf_valid(session, await _presented_token(request))
    ):
        raise _FORGED
    return session


def signin_csrf(request: Request) -> str:
    """The double-submit token of the forms used before a session exists (sign-in, accepting
    an invitation): the cookie's value, or a new one the page sets."""
    existing = request.cookies.get(_SIGNIN_COOKIE)
    if existing and 20 <= len(existing) <= 64:
        return existing
    token: str = request.scope.setdefault("fhirgate", {}).setdefault(
        "signin_csrf", secrets.token_urlsafe(24)
    )
    return token


def remember_signin_csrf(request: Request, response: Response) -> None:
    token = request.scope.get("fhirgate", {}).get("signin_csrf")
    if token is not None:
        response.set_cookie(
            _SIGNIN_COOKIE, token, path="/dashboard", secure=_secure(request), httponly=True,
            samesite="strict",
        )  # fmt: skip


async def check_signin_csrf(request: Request) -> None:
    cookie = request.cookies.get(_SIGNIN_COOKIE)
    presented = await _presented_token(request)
    if not (
        _same_site(request)
        and cookie is not None
        and presented is not None
        and hmac.compare_digest(cookie, presented)
    ):
        raise _FORGED


@dataclass(frozen=True, slots=True)
class Page:
    """What the layout needs besides a template's own values."""

    section: str = ""
    org: Membership | None = None
    env: str | None = None


def render(
    request: Request,
    template: str,
    context: dict[str, Any] | None = None,
    *,
    page: Page | None = None,
    status: int = 200,
    session: Session | None = None,
) -> HTMLResponse:
    page = page or Page()
    values = {
        "session": session or request.scope.get("fhirgate", {}).get("session"),
        "section": page.section,
        "org": page.org,
        "env": page.env,
        "path": request.url.path,
        **(context or {}),
    }
    body = _TEMPLATES.get_template(template).render(values)
    response = HTMLResponse(body, status_code=status)
    remember_signin_csrf(request, response)
    return response


async def first_submission(request: Request, session: Session, once: str) -> bool:
    """Whether the form whose ``once`` field this is arrives for the first time (remembered
    with the single-use assertion ids, on every replica). A request without one (not sent from
    the page's form) is not told apart from others; a malformed one is a 400."""
    if not once:
        return True
    if not _ONCE.fullmatch(once):
        raise PageError(400, "This form is out of date", "Reload the page and try again.")
    key = digest("dashboard form", session.user.id, once)
    return await services_of(request).used_jti.add(key, int(time.time()) + _ONCE_SECONDS)


def redirect(location: str) -> RedirectResponse:
    return RedirectResponse(location, status_code=303)


def safe_next(value: str | None) -> str:
    """Where to go after sign-in: a dashboard path only (no open redirect)."""
    if (
        value
        and value.startswith("/dashboard/")
        and not value.startswith("//")
        and "\\" not in value
        and all(ch.isprintable() for ch in value)
    ):
        return value
    return "/dashboard/"


async def membership(request: Request, session: Session, slug: str) -> Membership:
    """The person's membership of the organization ``slug``; 404 if they have none."""
    for found in await services_of(request).accounts.memberships(session.user.id):
        if found.organization_slug == slug:
            return found
    not_found()


class DashboardRoute(APIRoute):
    """A dashboard route: a form with missing or malformed fields gets an HTML page (400), not
    FastAPI's JSON."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError:
                context = {
                    "heading": "Request refused",
                    "message": "Some of the form's fields are missing or not valid. Go back and "
                    "try again.",
                }
                return render(request, "message.html", context, status=400)

        return handle
