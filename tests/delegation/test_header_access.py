"""1upHealth's system-level access at the resource guard: the application's ``client_id`` and
``client_secret`` headers with ``x-oneup-user-id`` (a user's number, or ``client`` for all of the
application's users, reads only) or ``x-app-user-id``, instead of a bearer token."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from fhirgate.config import Settings
from fhirgate.oauth.client_auth import SecretHasher
from fhirgate.web.guard import CurrentPrincipal
from tests.delegation.support import Application, register_application
from tests.support import Running, pin_window, register_client, register_secret_client, start

WRITE = "/test-write"


async def new_app(running: Running) -> Application:
    return await register_application(running.services, running.http)


async def new_user(app: Application, app_user_id: str) -> int:
    created = await app.create_user(app_user_id)
    assert created.status_code == 200, created.text
    number: int = created.json()["oneup_user_id"]
    return number


async def whoami(running: Running, headers: dict[str, str]) -> httpx.Response:
    return await running.http.get("/whoami", headers=headers)


def add_write_route(running: Running) -> None:
    """A protected ``POST`` route, for this test's app only (there is none in the product)."""

    @running.app.post(WRITE)
    async def write(principal: CurrentPrincipal) -> dict[str, Any]:
        return {"oneup_user_id": principal.user_id, "all_users": principal.all_users}


def assert_guard_error(response: httpx.Response, status: int, error: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"] == error
    assert response.headers["www-authenticate"].startswith('Bearer realm="fhirgate"')


# --------------------------------------------------------------------------- acting as a user


async def test_a_user_number_acts_as_that_user(running: Running) -> None:
    app = await new_app(running)
    await new_user(app, "alice")
    bob = await new_user(app, "bob")
    response = await whoami(running, {**app.credentials, "x-oneup-user-id": str(bob)})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["client_id"] == app.client_id
    assert body["oneup_user_id"] == bob
    assert body["sub"] == str(bob)
    assert body["all_users"] is False


async def test_an_app_user_id_selects_the_user(running: Running) -> None:
    app = await new_app(running)
    await new_user(app, "alice")
    bob = await new_user(app, "bob")
    response = await whoami(running, {**app.credentials, "x-app-user-id": "bob"})
    assert response.status_code == 200, response.text
    assert response.json()["oneup_user_id"] == bob
    assert response.json()["all_users"] is False


async def test_an_app_user_id_outside_ascii_is_read_as_utf8(running: Running) -> None:
    app = await new_app(running)
    await new_user(app, "Jose")
    jose = await new_user(app, "José Ñúñez")
    utf8 = {**app.credentials, "x-app-user-id": "José Ñúñez".encode()}
    response = await running.http.get("/whoami", headers=utf8)
    assert response.status_code == 200, response.text
    assert response.json()["oneup_user_id"] == jose
    not_utf8 = {**app.credentials, "x-app-user-id": "José".encode("latin-1")}
    response = await running.http.get("/whoami", headers=not_utf8)
    assert_guard_error(response, 400, "invalid_request")


async def test_both_headers_naming_the_same_user_are_accepted(running: Running) -> None:
    app = await new_app(running)
    alice = await new_user(app, "alice")
    headers = {**app.credentials, "x-oneup-user-id": str(alice), "x-app-user-id": "alice"}
    response = await whoami(running, headers)
    assert response.status_code == 200, response.text
    assert response.json()["oneup_user_id"] == alice


async def test_both_headers_naming_different_users_are_403(running: Running) -> None:
    app = await new_app(running)
    alice = await new_user(app, "alice")
    await new_user(app, "bob")
    headers = {**app.credentials, "x-oneup-user-id": str(alice), "x-app-user-id": "bob"}
    assert_guard_error(await whoami(running, headers), 403, "insufficient_scope")


async def test_a_user_may_write(running: Running) -> None:
    app = await new_app(running)
    alice = await new_user(app, "alice")
    add_write_route(running)
    response = await running.http.post(
        WRITE, headers={**app.credentials, "x-oneup-user-id": str(alice)}
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"oneup_user_id": alice, "all_users": False}


# --------------------------------------------------------------------------- all users


async def test_client_reads_over_all_users(running: Running) -> None:
    app = await new_app(running)
    await new_user(app, "alice")
    response = await whoami(running, {**app.credentials, "x-oneup-user-id": "client"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["all_users"] is True
    assert body["oneup_user_id"] is None
    assert body["client_id"] == app.client_id


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
async def test_client_may_not_write(running: Running, method: str) -> None:
    app = await new_app(running)
    running.app.add_api_route(WRITE, _write_any, methods=[method])
    response = await running.http.request(
        method, WRITE, headers={**app.credentials, "x-oneup-user-id": "client"}
    )
    assert_guard_error(response, 403, "insufficient_scope")


async def _write_any(principal: CurrentPrincipal) -> dict[str, Any]:
    return {"all_users": principal.all_users}


# --------------------------------------------------------------------------- bad user headers


async def test_missing_user_headers_are_400(running: Running) -> None:
    app = await new_app(running)
    await new_user(app, "alice")
    assert_guard_error(await whoami(running, app.credentials), 400, "invalid_request")


@pytest.mark.parametrize(
    "value",
    ["12a", "-1", "1" * 19, "", "+1", "1.0", "\xb2", "Client"],
    ids=["letter", "negative", "19-digits", "empty", "plus", "decimal", "superscript", "case"],
)
async def test_a_malformed_user_number_is_400(running: Running, value: str) -> None:
    """``"\xb2"`` (superscript two, as a latin-1 header byte) is a digit to ``str.isdigit``."""
    app = await new_app(running)
    await new_user(app, "alice")
    headers = [(name.encode(), secret.encode()) for name, secret in app.credentials.items()]
    headers.append((b"x-oneup-user-id", value.encode("latin-1")))
    response = await running.http.get("/whoami", headers=headers)
    assert_guard_error(response, 400, "invalid_request")


async def test_an_unknown_well_formed_user_number_is_403(server: Running) -> None:
    """Up to 18 digits is a well-formed number, on every backend: past 32 bits it is still
    just a user that does not exist."""
    app = await new_app(server)
    await new_user(app, "alice")
    for number in ("2147483648", "9" * 18):
        headers = {**app.credentials, "x-oneup-user-id": number}
        response = await whoami(server, headers)
        assert_guard_error(response, 403, "insufficient_scope")


@pytest.mark.parametrize("header", ["x-oneup-user-id", "x-app-user-id"])
async def test_another_applications_user_is_403(running: Running, header: str) -> None:
    app, other = await new_app(running), await new_app(running)
    await new_user(app, "alice")
    carol = await new_user(other, "carol")
    value = str(carol) if header == "x-oneup-user-id" else "carol"
    assert_guard_error(
        await whoami(running, {**app.credentials, header: value}), 403, "insufficient_scope"
    )
    # the owner gets through with the same header
    assert (await whoami(running, {**other.credentials, header: value})).status_code == 200


async def test_a_deactivated_user_is_403(running: Running) -> None:
    app = await new_app(running)
    alice = await new_user(app, "alice")
    off = await running.http.put(
        "/user-management/v1/user",
        data={"oneup_user_id": str(alice), "active": "false"},
        headers=app.credentials,
    )
    assert off.status_code == 200, off.text
    for headers in ({"x-oneup-user-id": str(alice)}, {"x-app-user-id": "alice"}):
        response = await whoami(running, {**app.credentials, **headers})
        assert_guard_error(response, 403, "insufficient_scope")


# --------------------------------------------------------------------------- bad credentials


async def test_a_wrong_secret_is_401(running: Running) -> None:
    app = await new_app(running)
    alice = await new_user(app, "alice")
    headers = {
        "client_id": app.client_id,
        "client_secret": SecretHasher.generate(),
        "x-oneup-user-id": str(alice),
    }
    response = await whoami(running, headers)
    assert_guard_error(response, 401, "invalid_client")
    # invalid_client is no RFC 6750 §3.1 code: the challenge stays bare
    assert response.headers["www-authenticate"] == 'Bearer realm="fhirgate"'


async def test_an_unknown_client_id_is_401_like_a_wrong_secret(running: Running) -> None:
    app = await new_app(running)
    alice = await new_user(app, "alice")
    wrong_secret = await whoami(
        running,
        {"client_id": app.client_id, "client_secret": "x", "x-oneup-user-id": str(alice)},
    )
    unknown = await whoami(
        running,
        {"client_id": "no-such-client", "client_secret": "x", "x-oneup-user-id": str(alice)},
    )
    assert_guard_error(unknown, 401, "invalid_client")
    assert unknown.content == wrong_secret.content


async def test_bearer_and_client_secret_together_are_400(running: Running) -> None:
    app = await new_app(running)
    tokens = await app.user_tokens("alice")
    headers = {
        **app.credentials,
        "x-oneup-user-id": str(tokens["oneup_user_id"]),
        "Authorization": f"Bearer {tokens['access_token']}",
    }
    assert_guard_error(await whoami(running, headers), 400, "invalid_request")
    # either alone is fine
    headers.pop("Authorization")
    assert (await whoami(running, headers)).status_code == 200
    bearer = {"Authorization": f"Bearer {tokens['access_token']}"}
    assert (await whoami(running, bearer)).status_code == 200


@pytest.mark.parametrize("present", ["client_id", "client_secret"])
async def test_one_credential_header_without_the_other_is_400(
    running: Running, present: str
) -> None:
    app = await new_app(running)
    alice = await new_user(app, "alice")
    headers = {present: app.credentials[present], "x-oneup-user-id": str(alice)}
    assert_guard_error(await whoami(running, headers), 400, "invalid_request")


@pytest.mark.parametrize("method", ["private_key_jwt", "legacy_api_key"])
async def test_clients_of_other_methods_cannot_use_the_headers(
    running: Running, method: str
) -> None:
    if method == "private_key_jwt":
        client_id = (await register_client(running.services, scope="user/*.*")).client_id
        secret = SecretHasher.generate()
    else:
        client_id, secret = await register_secret_client(
            running.services, "legacy_api_key", scope="user/*.*"
        )
    for user in ("client", "1"):
        headers = {"client_id": client_id, "client_secret": secret, "x-oneup-user-id": user}
        assert_guard_error(await whoami(running, headers), 401, "invalid_client")


async def test_repeated_wrong_secrets_are_throttled(sqlite_settings: Settings) -> None:
    running, stack = await start(sqlite_settings.model_copy(update={"auth_failure_limit": 2}))
    pin_window(running.services.authenticator._limiter)
    try:
        app = await new_app(running)
        alice = await new_user(app, "alice")
        wrong = {
            "client_id": app.client_id,
            "client_secret": SecretHasher.generate(),
            "x-oneup-user-id": str(alice),
        }
        statuses = [(await whoami(running, wrong)).status_code for _ in range(2)]
        right = {**app.credentials, "x-oneup-user-id": str(alice)}
        blocked = await whoami(running, right)
        assert statuses == [401, 401]
        assert_guard_error(blocked, 429, "temporarily_unavailable")
        assert 1 <= int(blocked.headers["retry-after"]) <= 60
    finally:
        await stack.aclose()


async def test_a_header_principal_never_holds_system_scopes(running: Running) -> None:
    app = await register_application(running.services, running.http, "user/*.rs system/*.rs")
    created = await app.create_user("scoped", scope="user/*.rs")
    headers = {**app.credentials, "x-oneup-user-id": str(created.json()["oneup_user_id"])}
    who = await running.http.get("/whoami", headers=headers)
    assert who.status_code == 200, who.text
    assert who.json()["scope"] == "user/*.rs"


async def test_an_application_without_user_scopes_cannot_use_headers(running: Running) -> None:
    client_id, secret = await register_secret_client(
        running.services, "client_secret_post", scope="system/*.rs"
    )
    headers = {"client_id": client_id, "client_secret": secret, "x-oneup-user-id": "client"}
    who = await running.http.get("/whoami", headers=headers)
    assert who.status_code == 403
    assert who.json()["error"] == "insufficient_scope"
