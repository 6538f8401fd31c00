"""Helpers for the per-user delegation tests: an application, its users, codes and tokens."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx

from fhirgate.config import Settings
from fhirgate.oauth.jose import b64url_decode
from fhirgate.services import Services
from tests.support import Running, register_secret_client, start

__all__ = [
    "Application",
    "assert_oauth_error",
    "claims_of",
    "register_application",
    "started",
    "whoami",
]

USER_MANAGEMENT = "/user-management/v1"


@dataclass
class Application:
    """A registered application (a client_secret_post client allowed user scopes)."""

    http: httpx.AsyncClient
    client_id: str
    secret: str

    @property
    def credentials(self) -> dict[str, str]:
        return {"client_id": self.client_id, "client_secret": self.secret}

    async def create_user(self, app_user_id: str, **extra: str) -> httpx.Response:
        return await self.http.post(
            f"{USER_MANAGEMENT}/user",
            data={"app_user_id": app_user_id, **extra},
            headers=self.credentials,
        )

    async def auth_code(self, **params: str) -> httpx.Response:
        return await self.http.post(
            f"{USER_MANAGEMENT}/user/auth-code", data=params, headers=self.credentials
        )

    async def token(self, **form: str) -> httpx.Response:
        return await self.http.post("/oauth2/token", data={**form, **self.credentials})

    async def exchange(self, code: str) -> httpx.Response:
        return await self.token(grant_type="authorization_code", code=code)

    async def refresh(self, refresh_token: str, **extra: str) -> httpx.Response:
        return await self.token(grant_type="refresh_token", refresh_token=refresh_token, **extra)

    async def user_tokens(self, app_user_id: str, **extra: str) -> dict[str, Any]:
        """Create a user and exchange its first code: the token response."""
        created = await self.create_user(app_user_id, **extra)
        assert created.status_code == 200, created.text
        response = await self.exchange(created.json()["code"])
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        body["oneup_user_id"] = created.json()["oneup_user_id"]
        return body


async def register_application(
    services: Services, http: httpx.AsyncClient, scope: str = "user/*.* system/*.rs"
) -> Application:
    client_id, secret = await register_secret_client(services, "client_secret_post", scope=scope)
    return Application(http, client_id, secret)


@contextlib.asynccontextmanager
async def started(settings: Settings) -> AsyncIterator[Running]:
    running, stack = await start(settings)
    try:
        yield running
    finally:
        await stack.aclose()


def claims_of(token: str) -> dict[str, Any]:
    claims: dict[str, Any] = json.loads(b64url_decode(token.split(".")[1]))
    return claims


async def whoami(http: httpx.AsyncClient, token: str) -> httpx.Response:
    return await http.get("/whoami", headers={"Authorization": f"Bearer {token}"})


def assert_oauth_error(response: httpx.Response, status: int, error: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"] == error, response.text
    assert response.headers["cache-control"] == "no-store"
