"""Who may call the Platform API: only a user-level key's token with the platform scope, of an
active person; every refusal in the API's error shape with an RFC 6750 challenge."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import update

from fhirgate.dashboard.api_keys import Forbidden
from fhirgate.domain.organizations import OrganizationRole
from fhirgate.oauth.jose import jwk_from_public_key
from fhirgate.storage.models import DashboardUserRow
from tests.platform.support import (
    Caller,
    Org,
    apikeys_path,
    assert_error,
    caller,
    organization,
    person,
    token,
    user_key,
)
from tests.support import (
    Running,
    SigningClient,
    private_key,
    register_client,
    register_secret_client,
)


@pytest.fixture
async def acme(running: Running) -> tuple[Org, str]:
    org = await organization(running.services, "acme")
    return org, await person(running.services, "owner@acme.example", org, OrganizationRole.OWNER)


def assert_challenge(response: httpx.Response, error: str | None = "invalid_token") -> None:
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith('Bearer realm="fhirgate"'), challenge
    if error is not None:
        assert f'error="{error}"' in challenge, challenge


async def test_without_a_valid_bearer_token_the_answer_is_401(
    running: Running, acme: tuple[Org, str]
) -> None:
    org, _ = acme
    path = apikeys_path(org.dev)
    missing = await running.http.get(path)
    assert_error(missing, 401, "invalid_token")
    assert missing.headers["www-authenticate"] == 'Bearer realm="fhirgate"'
    for header in ("Bearer not.a.token", "Bearer opaque-legacy-token", "Basic dXNlcjpwdw=="):
        refused = await running.http.get(path, headers={"Authorization": header})
        assert_error(refused, 401)
        assert_challenge(refused, None)
    # the body is not even read before the token is checked
    malformed = await running.http.post(
        path, content=b"{oops", headers={"Content-Type": "application/json"}
    )
    assert_error(malformed, 401, "invalid_token")


async def test_an_environment_api_keys_token_is_refused(
    running: Running, acme: tuple[Org, str]
) -> None:
    services, http = running.services, running.http
    org, _ = acme
    environment_key = await register_client(services, "ES384")
    refused = await http.get(
        apikeys_path(org.dev),
        headers={
            "Authorization": f"Bearer {await token(http, environment_key, scope='system/*.rs')}"
        },
    )
    body = assert_error(refused, 401, "invalid_token")
    assert "user-level" in body["errors"][0]["message"]
    assert_challenge(refused)

    # even one given the platform scope (by the CLI, say): ownership is what counts
    with_scope = await register_client(services, "ES384", scope="system/*.rs platform", slot=1)
    scoped = await token(http, with_scope, scope="platform")
    assert_error(await Caller(http, "", scoped).get("/platform/v1/environments"), 401)

    # and 1upHealth-style client_id/client_secret headers of an application
    client_id, secret = await register_secret_client(
        services, "client_secret_post", scope="user/*.rs"
    )
    headers = {"client_id": client_id, "client_secret": secret, "x-oneup-user-id": "client"}
    assert_error(await http.get("/platform/v1/environments", headers=headers), 401)


async def test_a_user_key_token_without_the_platform_scope_is_403(
    running: Running, acme: tuple[Org, str]
) -> None:
    services, http = running.services, running.http
    org, owner = acme
    key = private_key("ES384", 2)
    created = await services.clients.create(
        environment=org.dev,
        name="odd user key",
        auth_method="private_key_jwt",
        scope="system/*.rs",
        jwks={"keys": [jwk_from_public_key(key.public_key(), "odd", "ES384")]},
        owner_user_id=owner,
    )
    signing = SigningClient(created.client_id, key, "odd", "ES384")
    refused = await Caller(http, owner, await token(http, signing, scope="system/*.rs")).get(
        apikeys_path(org.dev)
    )
    assert_error(refused, 403, "insufficient_scope")
    assert_challenge(refused, "insufficient_scope")
    assert 'scope="platform"' in refused.headers["www-authenticate"]


async def test_a_platform_token_reads_no_fhir_data(running: Running, acme: tuple[Org, str]) -> None:
    _, owner = acme
    me = await caller(running.services, running.http, owner)
    assert (await me.get("/fhir/R4/Patient")).status_code == 403


async def test_revoked_or_deleted_user_keys_and_their_tokens_are_refused(
    running: Running, acme: tuple[Org, str]
) -> None:
    services, http = running.services, running.http
    org, owner = acme
    for action in ("revoke", "delete"):
        key = await user_key(services, owner)
        me = Caller(http, owner, await token(http, key))
        assert (await me.get(apikeys_path(org.dev))).status_code == 200
        await getattr(services.api_keys, action)(owner, key.client_id)
        assert_error(await me.get(apikeys_path(org.dev)), 401, "invalid_token")
        again = await http.post("/oauth2/token", data=key.form(scope="platform"))
        assert again.status_code == 401, again.text
        assert again.json()["error"] == "invalid_client"


async def test_a_deactivated_owner_is_refused(running: Running, acme: tuple[Org, str]) -> None:
    services, http = running.services, running.http
    org, owner = acme
    me = await caller(services, http, owner)
    assert (await me.get(apikeys_path(org.dev))).status_code == 200
    async with services.engine.begin() as conn:
        await conn.execute(
            update(DashboardUserRow).where(DashboardUserRow.id == owner).values(active=False)
        )
    refused = await me.get(apikeys_path(org.dev))
    body = assert_error(refused, 401, "invalid_token")
    assert "deactivated" in body["errors"][0]["message"]
    assert_challenge(refused)
    with pytest.raises(Forbidden):
        await services.api_keys.list_keys(owner, org.dev.id)


async def test_a_deactivated_owners_keys_get_no_tokens(
    running: Running, acme: tuple[Org, str]
) -> None:
    """Deactivating a person disables their user-level keys at the token endpoint and the guard
    too (once the client cache has let go, within ``client_cache_ttl``)."""
    services, http = running.services, running.http
    _org, owner = acme
    key = await user_key(services, owner)
    issued = await token(http, key)
    async with services.engine.begin() as conn:
        await conn.execute(
            update(DashboardUserRow).where(DashboardUserRow.id == owner).values(active=False)
        )
    services.directory.forget(key.client_id)
    refused = await http.post("/oauth2/token", data=key.form(scope="platform"))
    assert refused.status_code == 401 and refused.json()["error"] == "invalid_client"
    whoami = await http.get("/whoami", headers={"Authorization": f"Bearer {issued}"})
    assert whoami.status_code == 401
    async with services.engine.begin() as conn:
        await conn.execute(
            update(DashboardUserRow).where(DashboardUserRow.id == owner).values(active=True)
        )
    services.directory.forget(key.client_id)
    assert (await http.post("/oauth2/token", data=key.form(scope="platform"))).status_code == 200
