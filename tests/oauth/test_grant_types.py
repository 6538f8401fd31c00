"""Which client may use which grant type at ``POST /oauth2/token`` (RFC 6749 §5.2
``unauthorized_client``): a ``private_key_jwt`` client (SMART Backend Services) uses
``client_credentials`` only; a secret client (a 1upHealth application) may also exchange its
users' codes and refresh tokens. The refusal comes after client authentication and before any
code or refresh token is looked up, so they stay their rightful client's."""

from __future__ import annotations

from typing import Any

import httpx
from tests.delegation.support import Application, assert_oauth_error, register_application
from tests.support import Running, SigningClient, register_client

TOKEN = "/oauth2/token"


async def code_for(app: Application, app_user_id: str) -> str:
    created = await app.create_user(app_user_id)
    assert created.status_code == 200, created.text
    code: str = created.json()["code"]
    return code


def backend_form(client: SigningClient, **grant: str) -> dict[str, str]:
    """A backend-services client's authenticated form for another grant type."""
    form = client.form(scope=None)
    form.update(grant)
    return form


async def test_a_backend_services_client_presenting_a_code_is_unauthorized_client(
    server: Running,
) -> None:
    app = await register_application(server.services, server.http)
    backend = await register_client(server.services, scope="system/*.rs user/*.*")
    code = await code_for(app, "alice")
    form = backend_form(backend, grant_type="authorization_code", code=code)
    response = await server.http.post(TOKEN, data=form)
    assert_oauth_error(response, 400, "unauthorized_client")
    assert "access_token" not in response.json()
    exchanged = await app.exchange(code)  # the code was not touched: still the app's to spend
    assert exchanged.status_code == 200, exchanged.text


async def test_a_backend_services_client_presenting_a_refresh_token_is_unauthorized_client(
    server: Running,
) -> None:
    app = await register_application(server.services, server.http)
    backend = await register_client(server.services, scope="system/*.rs user/*.*")
    tokens: dict[str, Any] = await app.user_tokens("bob")
    for scope in (None, "user/*.*"):  # with a scope, the token is not even read for narrowing
        form = backend_form(
            backend, grant_type="refresh_token", refresh_token=tokens["refresh_token"]
        )
        if scope is not None:
            form["scope"] = scope
        response = await server.http.post(TOKEN, data=form)
        assert_oauth_error(response, 400, "unauthorized_client")
    refreshed = await app.refresh(tokens["refresh_token"])  # neither spent nor revoked
    assert refreshed.status_code == 200, refreshed.text
    me = await server.http.get(
        "/whoami", headers={"Authorization": f"Bearer {refreshed.json()['access_token']}"}
    )
    assert me.status_code == 200, me.text


async def test_the_grant_type_is_judged_only_after_client_authentication(
    running: Running,
) -> None:
    """An unauthenticated caller learns nothing about the client from the grant type."""
    backend = await register_client(running.services)
    form = backend_form(backend, grant_type="refresh_token", refresh_token="x" * 43)
    form["client_assertion"] = backend.assertion(aud="https://elsewhere.example/token")
    response = await running.http.post(TOKEN, data=form)
    assert_oauth_error(response, 401, "invalid_client")


async def test_secret_clients_keep_every_grant_type(running: Running) -> None:
    app = await register_application(running.services, running.http)
    granted = await app.token(grant_type="client_credentials", scope="system/*.rs")
    assert granted.status_code == 200, granted.text
    tokens = await app.user_tokens("carol")
    assert (await app.refresh(tokens["refresh_token"])).status_code == 200


async def test_backend_services_clients_keep_client_credentials(
    http: httpx.AsyncClient, running: Running
) -> None:
    backend = await register_client(running.services)
    response = await http.post(TOKEN, data=backend.form())
    assert response.status_code == 200, response.text
