"""Platform API test helpers: organizations, people with roles, user-level keys and tokens."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any

import httpx

from fhirgate.dashboard.passwords import hash_password
from fhirgate.domain.organizations import Environment, EnvironmentRole, OrganizationRole
from fhirgate.oauth.jose import jwk_from_public_key
from fhirgate.services import Services
from tests.support import BASE, SigningClient, private_key

PASSWORD = "correct horse battery staple"


@functools.cache
def _password_hash() -> str:
    """One argon2id hash shared by every test person (hashing costs ~50 ms each)."""
    return hash_password(PASSWORD, "nobody@example.org")


@dataclass
class Org:
    id: str
    slug: str
    environments: dict[str, Environment]

    @property
    def dev(self) -> Environment:
        return self.environments["development"]

    @property
    def prod(self) -> Environment:
        return self.environments["production"]


async def organization(services: Services, slug: str) -> Org:
    org_id = await services.organizations.create(slug, slug.title())
    environments = {}
    for kind in ("development", "staging", "production"):
        env = await services.organizations.environment_of(org_id, kind)
        assert env is not None
        environments[kind] = env
    return Org(org_id, slug, environments)


async def person(
    services: Services,
    email: str,
    org: Org,
    role: OrganizationRole = OrganizationRole.MEMBER,
    **env_roles: EnvironmentRole,
) -> str:
    """A dashboard user of ``org`` with ``role``; keyword arguments give environment roles
    (``development=EnvironmentRole.ENGINEER``). Returns the user id."""
    user = await services.accounts.create(email, _password_hash(), org.id, role)
    for kind, env_role in env_roles.items():
        await services.accounts.set_environment_role(user.id, org.environments[kind].id, env_role)
    return user.id


async def user_key(services: Services, user_id: str, slot: int = 0) -> SigningClient:
    """A user-level API key of the person, with one ES384 public key registered."""
    view = await services.api_keys.create_user_key(user_id, "automation")
    key = private_key("ES384", slot)
    kid = f"platform-{slot}"
    jwk = jwk_from_public_key(key.public_key(), kid, "ES384")
    await services.api_keys.add_public_key(user_id, view.client_id, json.dumps(jwk))
    return SigningClient(view.client_id, key, kid, "ES384")


async def token(
    http: httpx.AsyncClient, client: SigningClient, path: str = "/oauth2/token", **form: str
) -> str:
    """An access token for ``client`` (scope ``platform`` unless told) at ``path``."""
    client.token_url = f"{BASE}{path}"
    body = client.form(scope=form.pop("scope", "platform"))
    response = await http.post(path, data={**body, **form})
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


@dataclass
class Caller:
    """A person calling the Platform API with their user-level key's token."""

    http: httpx.AsyncClient
    user_id: str
    token: str

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    async def get(self, path: str) -> httpx.Response:
        return await self.http.get(path, headers=self._headers())

    async def post(self, path: str, body: Any) -> httpx.Response:
        return await self.http.post(path, json=body, headers=self._headers())

    async def patch(self, path: str, body: Any) -> httpx.Response:
        return await self.http.patch(path, json=body, headers=self._headers())

    async def delete(self, path: str) -> httpx.Response:
        return await self.http.delete(path, headers=self._headers())

    async def send(self, method: str, path: str, **options: Any) -> httpx.Response:
        headers = {**self._headers(), **options.pop("headers", {})}
        return await self.http.request(method, path, headers=headers, **options)


async def caller(
    services: Services, http: httpx.AsyncClient, user_id: str, slot: int = 0
) -> Caller:
    return Caller(http, user_id, await token(http, await user_key(services, user_id, slot)))


def apikeys_path(env: Environment) -> str:
    return f"/platform/v1/environments/{env.id}/apikeys"


def public_jwk(kid: str = "k1", alg: str = "ES384", slot: int = 3) -> dict[str, str]:
    return jwk_from_public_key(private_key(alg, slot).public_key(), kid, alg)


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    """The response is a Platform API error: ``{"meta": {"version"}, "errors": [...]}``."""
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["meta"] == {"version": "1.0.0"}, body
    assert "payload" not in body
    assert body["errors"], body
    for item in body["errors"]:
        assert set(item) <= {"code", "message", "field"}, item
        assert isinstance(item["message"], str) and item["message"], item
    if code is not None:
        assert body["errors"][0]["code"] == code, body
    return body
