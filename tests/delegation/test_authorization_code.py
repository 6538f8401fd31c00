"""``grant_type=authorization_code`` at ``POST /oauth2/token`` (RFC 6749 §4.1.3, §5.1): the
response, the access token, single use, binding to the application, expiry, the user's state,
client authentication, the dialects' token URLs and single use under concurrency."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

import pytest
from sqlalchemy import update

from fhirgate.config import Settings
from fhirgate.oauth.jose import b64url_decode
from fhirgate.storage.models import AuthorizationCodeRow
from fhirgate.storage.opaque_tokens import hash_token
from tests.delegation.support import (
    Application,
    assert_oauth_error,
    claims_of,
    register_application,
    started,
    whoami,
)
from tests.support import Running, register_secret_client

USER_MANAGEMENT = "/user-management/v1"
TOKEN_KEYS = {"access_token", "token_type", "expires_in", "refresh_token", "scope"}


# --------------------------------------------------------------------------- helpers


async def new_code(app: Application, app_user_id: str, **extra: str) -> tuple[str, int]:
    """Create a user; its first code and its ``oneup_user_id``."""
    created = await app.create_user(app_user_id, **extra)
    assert created.status_code == 200, created.text
    return created.json()["code"], created.json()["oneup_user_id"]


# --------------------------------------------------------------------------- the response


async def test_success_response_shape_and_no_store(running: Running) -> None:
    app = await register_application(running.services, running.http)
    code, _ = await new_code(app, "alice")
    response = await app.exchange(code)
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == TOKEN_KEYS
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 7200
    assert body["scope"] == "user/*.*"
    assert isinstance(body["access_token"], str) and body["access_token"]
    assert isinstance(body["refresh_token"], str) and body["refresh_token"]


async def test_no_id_token_without_openid(running: Running) -> None:
    app = await register_application(running.services, running.http)
    code, _ = await new_code(app, "alice", scope="user/*.rs")
    response = await app.exchange(code)
    assert response.status_code == 200, response.text
    assert "id_token" not in response.json()
    assert response.json()["scope"] == "user/*.rs"


async def test_expires_in_follows_the_configured_user_token_ttl(
    sqlite_settings: Settings,
) -> None:
    async with started(sqlite_settings.model_copy(update={"user_token_ttl": 900})) as running:
        app = await register_application(running.services, running.http)
        code, _ = await new_code(app, "alice")
        response = await app.exchange(code)
        assert response.status_code == 200, response.text
        assert response.json()["expires_in"] == 900
        claims = claims_of(response.json()["access_token"])
        assert claims["exp"] - claims["iat"] == 900


async def test_access_token_is_a_jwt_for_the_user(running: Running) -> None:
    app = await register_application(running.services, running.http)
    code, oneup_user_id = await new_code(app, "alice")
    before = int(time.time())
    response = await app.exchange(code)
    assert response.status_code == 200, response.text
    token = response.json()["access_token"]
    header = json.loads(b64url_decode(token.split(".")[0]))
    assert header["typ"] == "at+jwt"
    claims = claims_of(token)
    assert claims["sub"] == str(oneup_user_id)
    assert claims["oneup_user_id"] == oneup_user_id
    assert claims["client_id"] == app.client_id
    assert isinstance(claims["grant_id"], str) and claims["grant_id"]
    assert claims["scope"] == "user/*.*"
    assert before <= claims["iat"] <= int(time.time())
    who = await whoami(running.http, token)
    assert who.status_code == 200, who.text
    assert who.json()["sub"] == str(oneup_user_id)


# --------------------------------------------------------------------------- single use


async def test_second_exchange_is_invalid_grant_and_revokes_the_first_tokens(
    running: Running,
) -> None:
    app = await register_application(running.services, running.http)
    code, _ = await new_code(app, "alice")
    first = await app.exchange(code)
    assert first.status_code == 200, first.text
    tokens = first.json()
    assert (await whoami(running.http, tokens["access_token"])).status_code == 200

    assert_oauth_error(await app.exchange(code), 400, "invalid_grant")

    who = await whoami(running.http, tokens["access_token"])
    assert who.status_code == 401, who.text
    assert who.json()["error"] == "invalid_token"
    assert_oauth_error(await app.refresh(tokens["refresh_token"]), 400, "invalid_grant")


async def test_code_is_bound_to_its_application_and_a_foreign_attempt_does_not_burn_it(
    running: Running,
) -> None:
    owner = await register_application(running.services, running.http)
    other = await register_application(running.services, running.http)
    code, oneup_user_id = await new_code(owner, "alice")

    assert_oauth_error(await other.exchange(code), 400, "invalid_grant")

    response = await owner.exchange(code)
    assert response.status_code == 200, response.text
    assert claims_of(response.json()["access_token"])["oneup_user_id"] == oneup_user_id
    assert (await whoami(running.http, response.json()["access_token"])).status_code == 200


async def test_expired_code_is_invalid_grant(running: Running) -> None:
    app = await register_application(running.services, running.http)
    code, _ = await new_code(app, "alice")
    async with running.services.engine.begin() as conn:
        await conn.execute(
            update(AuthorizationCodeRow)
            .where(AuthorizationCodeRow.code_hash == hash_token(code))
            .values(expires_at=int(time.time()) - 1)
        )
    assert_oauth_error(await app.exchange(code), 400, "invalid_grant")


async def test_code_of_a_deactivated_user_is_invalid_grant(running: Running) -> None:
    app = await register_application(running.services, running.http)
    code, oneup_user_id = await new_code(app, "alice")
    deactivated = await running.http.put(
        f"{USER_MANAGEMENT}/user",
        data={"oneup_user_id": str(oneup_user_id), "active": "false"},
        headers=app.credentials,
    )
    assert deactivated.status_code == 200, deactivated.text
    assert_oauth_error(await app.exchange(code), 400, "invalid_grant")


# --------------------------------------------------------------------------- request checks


async def test_missing_code_is_invalid_request(running: Running) -> None:
    app = await register_application(running.services, running.http)
    assert_oauth_error(await app.token(grant_type="authorization_code"), 400, "invalid_request")


async def test_unknown_code_is_invalid_grant(running: Running) -> None:
    app = await register_application(running.services, running.http)
    await new_code(app, "alice")
    assert_oauth_error(await app.exchange("not-a-code-" + "x" * 32), 400, "invalid_grant")


async def test_exchange_without_client_authentication_is_401_and_keeps_the_code(
    running: Running,
) -> None:
    app = await register_application(running.services, running.http)
    code, _ = await new_code(app, "alice")
    response = await running.http.post(
        "/oauth2/token", data={"grant_type": "authorization_code", "code": code}
    )
    assert_oauth_error(response, 401, "invalid_client")
    assert (await app.exchange(code)).status_code == 200


async def test_exchange_with_a_wrong_secret_is_401_and_keeps_the_code(running: Running) -> None:
    app = await register_application(running.services, running.http)
    code, _ = await new_code(app, "alice")
    wrong = Application(running.http, app.client_id, app.secret + "x")
    assert_oauth_error(await wrong.exchange(code), 401, "invalid_client")
    assert (await app.exchange(code)).status_code == 200


async def test_basic_auth_works_for_a_client_secret_basic_application(running: Running) -> None:
    client_id, secret = await register_secret_client(
        running.services, "client_secret_basic", scope="user/*.*"
    )
    created = await running.http.post(
        f"{USER_MANAGEMENT}/user",
        data={"app_user_id": "alice"},
        headers={"client_id": client_id, "client_secret": secret},
    )
    assert created.status_code == 200, created.text
    response = await running.http.post(
        "/oauth2/token",
        data={"grant_type": "authorization_code", "code": created.json()["code"]},
        auth=(client_id, secret),
    )
    assert response.status_code == 200, response.text
    claims = claims_of(response.json()["access_token"])
    assert claims["client_id"] == client_id
    assert claims["sub"] == str(created.json()["oneup_user_id"])


async def test_pattern_token_url_answers_unsupported_grant_type_and_keeps_the_code(
    running: Running,
) -> None:
    app = await register_application(running.services, running.http)
    code, _ = await new_code(app, "alice")
    response = await running.http.post(
        "/api/auth/token",
        data={"grant_type": "authorization_code", "code": code},
        auth=(app.client_id, app.secret),
    )
    assert_oauth_error(response, 400, "unsupported_grant_type")
    assert (await app.exchange(code)).status_code == 200


async def test_redox_token_url_refuses_the_grant_type_in_redox_shape_and_keeps_the_code(
    running: Running,
) -> None:
    """Redox's dialect renders every error as ``invalid_request`` with Redox's documented
    descriptions; an unsupported grant type is its "should equal 'client_credentials'"."""
    app = await register_application(running.services, running.http)
    code, _ = await new_code(app, "alice")
    response = await running.http.post(
        "/v2/auth/token",
        data={"grant_type": "authorization_code", "code": code, **app.credentials},
    )
    assert_oauth_error(response, 400, "invalid_request")
    assert (
        response.json()["error_description"]
        == "The grant_type parameter should equal 'client_credentials'"
    )
    assert (await app.exchange(code)).status_code == 200


# --------------------------------------------------------------------------- concurrency


@pytest.mark.parametrize("backend_settings", ["sqlite", "postgres+redis"], indirect=True)
async def test_twenty_parallel_exchanges_of_one_code_yield_exactly_one_token(
    backend_settings: Settings,
) -> None:
    """SQLite: one instance; PostgreSQL + Redis: two instances sharing the store."""
    count = 1 if backend_settings.is_sqlite else 2
    async with contextlib.AsyncExitStack() as stack:
        instances = [await stack.enter_async_context(started(backend_settings))]
        for _ in range(count - 1):
            instances.append(await stack.enter_async_context(started(backend_settings)))
        first = await register_application(instances[0].services, instances[0].http)
        apps = [Application(i.http, first.client_id, first.secret) for i in instances]
        code, _ = await new_code(first, "alice")

        responses = await asyncio.gather(*(apps[n % count].exchange(code) for n in range(20)))

        statuses = sorted(r.status_code for r in responses)
        assert statuses.count(200) == 1, statuses
        assert statuses.count(400) == 19, statuses
        assert all(r.json()["error"] == "invalid_grant" for r in responses if r.status_code != 200)


async def test_a_reused_code_is_audited(running: Running) -> None:
    app = await register_application(running.services, running.http)
    code, _ = await new_code(app, "audited")
    assert (await app.exchange(code)).status_code == 200
    assert (await app.exchange(code)).status_code == 400
    await running.services.audit.flush()
    events = await running.services.audit.recent(app.client_id)
    failures = [event for event in events if event.event == "grant.failure"]
    assert [event.detail for event in failures] == ["code_invalid"]
    assert all(code not in event.detail for event in events)  # the code itself is never kept
