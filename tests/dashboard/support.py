"""Dashboard test helpers: people, and a browser-like client that signs in through the form."""

from __future__ import annotations

import re
from dataclasses import dataclass

import httpx

from fhirgate.dashboard.passwords import hash_password
from fhirgate.domain.organizations import EnvironmentRole, OrganizationRole
from fhirgate.services import Services
from fhirgate.storage.accounts import DashboardUser
from tests.support import BASE

PASSWORD = "correct horse battery staple"
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


async def person(
    services: Services,
    email: str,
    role: OrganizationRole = OrganizationRole.OWNER,
    *,
    organization_id: str | None = None,
    env_roles: dict[str, EnvironmentRole] | None = None,
) -> DashboardUser:
    """A dashboard user in the default organization (or ``organization_id``)."""
    if organization_id is None:
        organization_id = (await services.organizations.default_environment()).organization_id
    user = await services.accounts.create(
        email, hash_password(PASSWORD, email), organization_id, role
    )
    for kind, env_role in (env_roles or {}).items():
        env = await services.organizations.environment_of(organization_id, kind)
        assert env is not None
        await services.accounts.set_environment_role(user.id, env.id, env_role)
    return user


def csrf_of(page: httpx.Response) -> str:
    found = _CSRF.search(page.text)
    assert found is not None, f"no CSRF token on {page.request.url}"
    return found.group(1)


@dataclass
class Browser:
    """An httpx client that keeps cookies, as a browser would, for one person."""

    http: httpx.AsyncClient

    async def sign_in(self, email: str, password: str = PASSWORD) -> httpx.Response:
        form = await self.http.get("/dashboard/sign-in")
        # Signed in already, the page redirects; its form's token is still the cookie's.
        token = csrf_of(form) if form.status_code == 200 else self.http.cookies["fhirgate_signin"]
        return await self.http.post(
            "/dashboard/sign-in", data={"csrf_token": token, "email": email, "password": password}
        )

    async def csrf(self, path: str = "/dashboard/account") -> str:
        page = await self.http.get(path)
        assert page.status_code == 200, page.text
        return csrf_of(page)

    async def post(self, path: str, data: dict[str, str] | None = None) -> httpx.Response:
        """A form POST from one of the dashboard's own pages (with its CSRF token)."""
        return await self.http.post(path, data={"csrf_token": await self.csrf(), **(data or {})})


def browser_for(app: object) -> Browser:
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    return Browser(httpx.AsyncClient(transport=transport, base_url=BASE))
