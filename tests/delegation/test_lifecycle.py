"""The end of a user's tokens, on every replica at once: deactivation, the application's grant
revoked (``POST /user-management/v1/user/revoke``), RFC 7009 revocation, and what RFC 7662
introspection says about user tokens before and after.

Each test runs on every backend (SQLite file; PostgreSQL; PostgreSQL + Redis) with two app
instances sharing it: tokens are used on both first (so each has verified and cached them),
then ended through one, and must fail on both.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from fhirgate.config import Settings
from tests.delegation.support import Application, claims_of, register_application, whoami
from tests.support import BASE, Running, start

USER_MANAGEMENT = "/user-management/v1"
INACTIVE = {"active": False}
ACTIVE_KEYS = {"active", "scope", "client_id", "exp", "iat", "sub", "iss", "token_type"}


# --------------------------------------------------------------------------- helpers


@dataclass
class Replicas:
    """Two app instances sharing one backend, and one application seen through each."""

    first: Running
    second: Running
    app: Application  # through the first instance
    app_b: Application  # the same application through the second instance

    @property
    def instances(self) -> tuple[Running, Running]:
        return self.first, self.second


@pytest.fixture
async def replicas(server: Running, backend_settings: Settings) -> AsyncIterator[Replicas]:
    second, stack = await start(backend_settings)
    try:
        app = await register_application(server.services, server.http)
        yield Replicas(server, second, app, Application(second.http, app.client_id, app.secret))
    finally:
        await stack.aclose()


async def assert_works_everywhere(replicas: Replicas, access_token: str) -> None:
    for instance in replicas.instances:
        who = await whoami(instance.http, access_token)
        assert who.status_code == 200, who.text


async def assert_refused_everywhere(replicas: Replicas, access_token: str) -> None:
    for instance in replicas.instances:
        who = await whoami(instance.http, access_token)
        assert who.status_code == 401, who.text
        assert who.json()["error"] == "invalid_token"


def assert_invalid_grant(response: httpx.Response) -> None:
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_grant"


async def introspect(http: httpx.AsyncClient, app: Application, token: str) -> dict[str, Any]:
    response = await http.post("/oauth2/introspect", data={"token": token, **app.credentials})
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body: dict[str, Any] = response.json()
    return body


async def revoke_token(http: httpx.AsyncClient, app: Application, token: str) -> None:
    """RFC 7009, the application authenticating with form fields."""
    response = await http.post("/oauth2/revoke", data={"token": token, **app.credentials})
    assert response.status_code == 200, response.text


async def deactivate(http: httpx.AsyncClient, app: Application, oneup_user_id: int) -> None:
    response = await http.put(
        f"{USER_MANAGEMENT}/user",
        data={"oneup_user_id": str(oneup_user_id), "active": "false"},
        headers=app.credentials,
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"oneUpUserId": oneup_user_id, "success": True}


async def revoke_user(http: httpx.AsyncClient, app: Application, oneup_user_id: int) -> None:
    response = await http.post(
        f"{USER_MANAGEMENT}/user/revoke",
        data={"oneup_user_id": str(oneup_user_id)},
        headers=app.credentials,
    )
    assert response.status_code == 200, response.text
    assert response.json()["success"] is True


async def warmed_tokens(replicas: Replicas, app_user_id: str) -> dict[str, Any]:
    """A user's tokens, already used (and cached) on both instances."""
    tokens = await replicas.app.user_tokens(app_user_id)
    await assert_works_everywhere(replicas, tokens["access_token"])
    return tokens


# --------------------------------------------------------------------------- deactivation


async def test_deactivating_a_user_ends_its_tokens_on_both_instances(replicas: Replicas) -> None:
    tokens = await warmed_tokens(replicas, "alice")
    await deactivate(replicas.first.http, replicas.app, tokens["oneup_user_id"])

    await assert_refused_everywhere(replicas, tokens["access_token"])
    assert_invalid_grant(await replicas.app_b.refresh(tokens["refresh_token"]))
    assert_invalid_grant(await replicas.app.refresh(tokens["refresh_token"]))


async def test_deactivating_one_user_leaves_the_others_tokens_working(
    replicas: Replicas,
) -> None:
    alice = await warmed_tokens(replicas, "alice")
    bob = await warmed_tokens(replicas, "bob")
    await deactivate(replicas.second.http, replicas.app_b, alice["oneup_user_id"])

    await assert_refused_everywhere(replicas, alice["access_token"])
    await assert_works_everywhere(replicas, bob["access_token"])
    refreshed = await replicas.app_b.refresh(bob["refresh_token"])
    assert refreshed.status_code == 200, refreshed.text


async def test_reactivating_a_user_does_not_revive_its_old_tokens(replicas: Replicas) -> None:
    tokens = await warmed_tokens(replicas, "alice")
    oneup_user_id = tokens["oneup_user_id"]
    await deactivate(replicas.first.http, replicas.app, oneup_user_id)
    reactivated = await replicas.second.http.put(
        f"{USER_MANAGEMENT}/user",
        data={"oneup_user_id": str(oneup_user_id), "active": "true"},
        headers=replicas.app.credentials,
    )
    assert reactivated.status_code == 200, reactivated.text

    await assert_refused_everywhere(replicas, tokens["access_token"])
    assert_invalid_grant(await replicas.app_b.refresh(tokens["refresh_token"]))
    issued = await replicas.app.auth_code(oneup_user_id=str(oneup_user_id))
    assert issued.status_code == 200, issued.text
    exchanged = await replicas.app_b.exchange(issued.json()["code"])
    assert exchanged.status_code == 200, exchanged.text
    await assert_works_everywhere(replicas, exchanged.json()["access_token"])


# --------------------------------------------------------------------------- grant revoked


async def test_revoking_the_users_grant_ends_its_tokens_on_both_instances(
    replicas: Replicas,
) -> None:
    tokens = await warmed_tokens(replicas, "alice")
    await revoke_user(replicas.first.http, replicas.app, tokens["oneup_user_id"])

    await assert_refused_everywhere(replicas, tokens["access_token"])
    assert_invalid_grant(await replicas.app_b.refresh(tokens["refresh_token"]))


async def test_after_grant_revocation_the_user_stays_active_and_a_new_code_works(
    replicas: Replicas,
) -> None:
    tokens = await warmed_tokens(replicas, "alice")
    oneup_user_id = tokens["oneup_user_id"]
    await revoke_user(replicas.first.http, replicas.app, oneup_user_id)

    listed = await replicas.second.http.get(
        f"{USER_MANAGEMENT}/user",
        params={"oneup_user_id": str(oneup_user_id)},
        headers=replicas.app.credentials,
    )
    assert listed.status_code == 200, listed.text
    assert listed.json()["entry"] == [
        {"oneup_user_id": oneup_user_id, "app_user_id": "alice", "active": True}
    ]

    issued = await replicas.app_b.auth_code(oneup_user_id=str(oneup_user_id))
    assert issued.status_code == 200, issued.text
    exchanged = await replicas.app.exchange(issued.json()["code"])
    assert exchanged.status_code == 200, exchanged.text
    fresh = exchanged.json()
    assert claims_of(fresh["access_token"])["sub"] == str(oneup_user_id)
    await assert_works_everywhere(replicas, fresh["access_token"])
    await assert_refused_everywhere(replicas, tokens["access_token"])
    refreshed = await replicas.app_b.refresh(fresh["refresh_token"])
    assert refreshed.status_code == 200, refreshed.text


async def test_grant_revocation_also_ends_codes_not_yet_exchanged(replicas: Replicas) -> None:
    created = await replicas.app.create_user("alice")
    assert created.status_code == 200, created.text
    await revoke_user(replicas.first.http, replicas.app, created.json()["oneup_user_id"])
    assert_invalid_grant(await replicas.app_b.exchange(created.json()["code"]))


# --------------------------------------------------------------------------- RFC 7009


async def test_revoking_a_refresh_token_revokes_its_family_on_both_instances(
    replicas: Replicas,
) -> None:
    first = await warmed_tokens(replicas, "alice")
    refreshed = await replicas.app.refresh(first["refresh_token"])
    assert refreshed.status_code == 200, refreshed.text
    second = refreshed.json()
    await assert_works_everywhere(replicas, second["access_token"])

    await revoke_token(replicas.second.http, replicas.app_b, second["refresh_token"])

    await assert_refused_everywhere(replicas, first["access_token"])
    await assert_refused_everywhere(replicas, second["access_token"])
    assert_invalid_grant(await replicas.app.refresh(second["refresh_token"]))


async def test_revoking_an_access_token_kills_only_that_token(replicas: Replicas) -> None:
    first = await warmed_tokens(replicas, "alice")
    refreshed = await replicas.app.refresh(first["refresh_token"])
    assert refreshed.status_code == 200, refreshed.text
    second = refreshed.json()
    await assert_works_everywhere(replicas, second["access_token"])

    await revoke_token(replicas.first.http, replicas.app, first["access_token"])

    await assert_refused_everywhere(replicas, first["access_token"])
    await assert_works_everywhere(replicas, second["access_token"])
    third = await replicas.app_b.refresh(second["refresh_token"])
    assert third.status_code == 200, third.text
    await assert_works_everywhere(replicas, third.json()["access_token"])


# --------------------------------------------------------------------------- RFC 7662


async def test_introspection_of_a_user_access_token_is_active_with_its_claims(
    replicas: Replicas,
) -> None:
    tokens = await warmed_tokens(replicas, "alice")
    claims = claims_of(tokens["access_token"])
    for instance in replicas.instances:
        body = await introspect(instance.http, replicas.app, tokens["access_token"])
        assert set(body) == ACTIVE_KEYS
        assert body == {
            "active": True,
            "scope": "user/*.*",
            "client_id": replicas.app.client_id,
            "exp": claims["exp"],
            "iat": claims["iat"],
            "sub": str(tokens["oneup_user_id"]),
            "iss": BASE,
            "token_type": "Bearer",
        }


async def test_introspection_of_a_user_refresh_token_is_active(replicas: Replicas) -> None:
    tokens = await warmed_tokens(replicas, "alice")
    for instance in replicas.instances:
        body = await introspect(instance.http, replicas.app, tokens["refresh_token"])
        assert set(body) == ACTIVE_KEYS
        assert body["active"] is True
        assert body["token_type"] == "refresh_token"
        assert body["sub"] == str(tokens["oneup_user_id"])
        assert body["client_id"] == replicas.app.client_id
        assert body["scope"] == "user/*.*"
        assert body["exp"] > body["iat"]


@pytest.mark.parametrize("ending", ["deactivate", "revoke_user", "revoke_refresh_token"])
async def test_introspection_after_the_tokens_end_is_exactly_inactive(
    replicas: Replicas, ending: str
) -> None:
    tokens = await warmed_tokens(replicas, "alice")
    for token in (tokens["access_token"], tokens["refresh_token"]):
        assert (await introspect(replicas.second.http, replicas.app, token))["active"] is True

    if ending == "deactivate":
        await deactivate(replicas.first.http, replicas.app, tokens["oneup_user_id"])
    elif ending == "revoke_user":
        await revoke_user(replicas.first.http, replicas.app, tokens["oneup_user_id"])
    else:
        await revoke_token(replicas.first.http, replicas.app, tokens["refresh_token"])

    for instance in replicas.instances:
        for token in (tokens["access_token"], tokens["refresh_token"]):
            assert await introspect(instance.http, replicas.app, token) == INACTIVE


async def test_introspection_of_a_revoked_access_token_is_exactly_inactive(
    replicas: Replicas,
) -> None:
    tokens = await warmed_tokens(replicas, "alice")
    await revoke_token(replicas.first.http, replicas.app, tokens["access_token"])
    for instance in replicas.instances:
        assert await introspect(instance.http, replicas.app, tokens["access_token"]) == INACTIVE
        body = await introspect(instance.http, replicas.app, tokens["refresh_token"])
        assert body["active"] is True


async def test_another_application_introspecting_user_tokens_sees_exactly_inactive(
    replicas: Replicas,
) -> None:
    tokens = await warmed_tokens(replicas, "alice")
    other = await register_application(replicas.second.services, replicas.second.http)
    for instance in replicas.instances:
        foreign = Application(instance.http, other.client_id, other.secret)
        for token in (tokens["access_token"], tokens["refresh_token"]):
            assert await introspect(instance.http, foreign, token) == INACTIVE
            assert (await introspect(instance.http, replicas.app, token))["active"] is True
