"""``POST /oauth2/introspect`` (RFC 7662) and ``POST /oauth2/revoke`` (RFC 7009) over the real
app, on every storage backend (SQLite; PostgreSQL; PostgreSQL + Redis)."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from tests.support import (
    BASE,
    Running,
    SigningClient,
    pin_window,
    register_client,
    register_secret_client,
    start,
)

from fhirgate.config import Settings
from fhirgate.oauth.client_auth import JWT_BEARER
from fhirgate.oauth.jose import b64url_decode

INTROSPECT = "/oauth2/introspect"
REVOKE = "/oauth2/revoke"
INACTIVE = {"active": False}
ACTIVE_KEYS = {"active", "scope", "client_id", "exp", "iat", "sub", "iss", "token_type"}
TOKEN = "/oauth2/token"
FORM = "application/x-www-form-urlencoded"


# --------------------------------------------------------------------------- helpers


async def basic_token(
    http: httpx.AsyncClient, client_id: str, secret: str, scope: str = "system/*.rs"
) -> str:
    response = await http.post(
        "/oauth2/token",
        data={"grant_type": "client_credentials", "scope": scope},
        auth=(client_id, secret),
    )
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


async def jwt_token(http: httpx.AsyncClient, client: SigningClient) -> str:
    response = await http.post("/oauth2/token", data=client.form())
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


def claims_of(token: str) -> dict[str, Any]:
    claims: dict[str, Any] = json.loads(b64url_decode(token.split(".")[1]))
    return claims


def assertion_form(
    client: SigningClient, token: str, path: str = INTROSPECT, **claims: Any
) -> dict[str, str]:
    claims.setdefault("aud", f"{BASE}{path}")
    return {
        "token": token,
        "client_assertion_type": JWT_BEARER,
        "client_assertion": client.assertion(**claims),
    }


async def introspect(http: httpx.AsyncClient, token: str, auth: tuple[str, str]) -> httpx.Response:
    return await http.post(INTROSPECT, data={"token": token}, auth=auth)


async def introspected(http: httpx.AsyncClient, token: str, auth: tuple[str, str]) -> Any:
    response = await introspect(http, token, auth)
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    return response.json()


async def revoke(http: httpx.AsyncClient, token: str, auth: tuple[str, str]) -> httpx.Response:
    return await http.post(REVOKE, data={"token": token}, auth=auth)


async def whoami(http: httpx.AsyncClient, token: str) -> httpx.Response:
    return await http.get("/whoami", headers={"Authorization": f"Bearer {token}"})


def assert_invalid_token(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    assert response.json()["error"] == "invalid_token"


def assert_oauth_error(response: httpx.Response, status: int, error: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"] == error
    assert response.headers["cache-control"] == "no-store"


async def legacy_pair(server: Running) -> tuple[str, str, dict[str, str]]:
    api_key, secret = await register_secret_client(server.services, "legacy_api_key")
    response = await server.http.post(
        "/auth/authenticate", json={"apiKey": api_key, "secret": secret}
    )
    assert response.status_code == 200, response.text
    return api_key, secret, response.json()


# --------------------------------------------------------------------------- 1. introspection


async def test_introspect_own_jwt_from_client_secret_basic_is_active_with_its_claims(
    server: Running,
) -> None:
    client_id, secret = await register_secret_client(server.services, "client_secret_basic")
    token = await basic_token(server.http, client_id, secret)
    claims = claims_of(token)
    body = await introspected(server.http, token, (client_id, secret))
    assert set(body) == ACTIVE_KEYS
    assert body == {
        "active": True,
        "scope": "system/*.rs",
        "client_id": client_id,
        "exp": claims["exp"],
        "iat": claims["iat"],
        "sub": client_id,
        "iss": BASE,
        "token_type": "Bearer",
    }
    assert body["exp"] - body["iat"] == server.services.settings.secret_token_ttl


async def test_introspect_own_jwt_with_a_private_key_jwt_assertion(server: Running) -> None:
    client = await register_client(server.services, "ES384", scope="system/*.rs")
    token = await jwt_token(server.http, client)
    claims = claims_of(token)
    for aud in (f"{BASE}{INTROSPECT}", BASE):  # the endpoint's URL or the issuer
        response = await server.http.post(INTROSPECT, data=assertion_form(client, token, aud=aud))
        assert response.status_code == 200, (aud, response.text)
        assert response.json() == {
            "active": True,
            "scope": "system/*.rs",
            "client_id": client.client_id,
            "exp": claims["exp"],
            "iat": claims["iat"],
            "sub": client.client_id,
            "iss": BASE,
            "token_type": "Bearer",
        }
    assert claims["exp"] - claims["iat"] == server.services.settings.access_token_ttl
    # An assertion made for another endpoint (the token endpoint) is not accepted here.
    wrong_aud = assertion_form(client, token, aud=f"{BASE}/oauth2/token")
    assert_oauth_error(await server.http.post(INTROSPECT, data=wrong_aud), 401, "invalid_client")


async def test_introspect_another_clients_token_is_exactly_inactive(server: Running) -> None:
    owner_id, owner_secret = await register_secret_client(server.services, "client_secret_basic")
    other_id, other_secret = await register_secret_client(server.services, "client_secret_post")
    signer = await register_client(server.services, "ES384")
    token = await basic_token(server.http, owner_id, owner_secret)
    _, _, legacy = await legacy_pair(server)

    for foreign in (token, legacy["accessToken"], legacy["refreshToken"]):
        response = await server.http.post(
            INTROSPECT,
            data={"token": foreign, "client_id": other_id, "client_secret": other_secret},
        )
        assert response.status_code == 200, response.text
        assert response.json() == INACTIVE
        response = await server.http.post(INTROSPECT, data=assertion_form(signer, foreign))
        assert response.status_code == 200, response.text
        assert response.json() == INACTIVE
    # ... while its owner sees it active.
    assert (await introspected(server.http, token, (owner_id, owner_secret)))["active"] is True


async def test_introspect_unknown_garbage_and_expired_tokens_is_exactly_inactive(
    server: Running,
) -> None:
    client_id, secret = await register_secret_client(server.services, "client_secret_basic")
    short_id, short_secret = await register_secret_client(
        server.services, "client_secret_basic", token_lifetime=1
    )
    live = await basic_token(server.http, client_id, secret)
    header, payload, signature = live.split(".")
    flipped = signature[:5] + ("A" if signature[5] != "A" else "B") + signature[6:]
    garbage = [
        secrets.token_urlsafe(32),  # an unknown opaque token
        "garbage",
        "a.b",
        "a.b.c",
        "....",
        f"{header}.{payload}.{flipped}",  # a tampered signature
        f"{header}.{payload}.",  # no signature
        live + "x",
        "x" * 9000,  # longer than any token
        "é.ü.ö",
    ]
    for token in garbage:
        assert await introspected(server.http, token, (client_id, secret)) == INACTIVE, token

    expiring = await basic_token(server.http, short_id, short_secret)
    assert (await introspected(server.http, expiring, (short_id, short_secret)))["active"]
    await asyncio.sleep(2.1)
    assert await introspected(server.http, expiring, (short_id, short_secret)) == INACTIVE


async def test_introspect_legacy_tokens_by_their_owner_over_http(server: Running) -> None:
    api_key, secret, pair = await legacy_pair(server)
    settings = server.services.settings
    as_post = {"client_id": api_key, "client_secret": secret}

    # The apiKey and secret authenticate by HTTP Basic or as client_id/client_secret fields.
    access = await introspected(server.http, pair["accessToken"], (api_key, secret))
    by_post = await server.http.post(INTROSPECT, data={"token": pair["refreshToken"], **as_post})
    assert by_post.status_code == 200, by_post.text
    refresh = by_post.json()
    assert set(access) == ACTIVE_KEYS and set(refresh) == ACTIVE_KEYS
    assert access["active"] is True and refresh["active"] is True
    assert access["token_type"] == "Bearer"
    assert refresh["token_type"] == "refresh_token"
    assert access["client_id"] == access["sub"] == refresh["client_id"] == api_key
    assert access["iss"] == BASE and access["scope"] == "system/*.rs"
    assert access["exp"] - access["iat"] == settings.legacy_token_ttl
    assert refresh["exp"] - refresh["iat"] == settings.legacy_refresh_ttl

    # A wrong secret is invalid_client, by either method.
    wrong = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    refused = await introspect(server.http, pair["accessToken"], (api_key, wrong))
    assert_oauth_error(refused, 401, "invalid_client")
    assert refused.headers["www-authenticate"].startswith("Basic ")
    refused = await server.http.post(
        INTROSPECT,
        data={"token": pair["accessToken"], "client_id": api_key, "client_secret": wrong},
    )
    assert_oauth_error(refused, 401, "invalid_client")

    # Another legacy client sees neither token.
    other_key, other_secret, _ = await legacy_pair(server)
    for token in (pair["accessToken"], pair["refreshToken"]):
        assert await introspected(server.http, token, (other_key, other_secret)) == INACTIVE

    # A spent refresh token is no longer active; the one that replaced it is.
    rotated = await server.http.post(
        "/auth/refreshToken", json={"apiKey": api_key, "refreshToken": pair["refreshToken"]}
    )
    assert rotated.status_code == 200, rotated.text
    assert await introspected(server.http, pair["refreshToken"], (api_key, secret)) == INACTIVE
    renewed = rotated.json()["refreshToken"]
    assert (await introspected(server.http, renewed, (api_key, secret)))["active"] is True


async def test_legacy_credentials_still_get_no_token_at_the_token_endpoint(
    server: Running,
) -> None:
    """Basic and post are accepted from a legacy API key only to manage its own tokens."""
    api_key, secret, _ = await legacy_pair(server)
    form = {"grant_type": "client_credentials", "scope": "system/*.rs"}
    by_basic = await server.http.post(TOKEN, data=form, auth=(api_key, secret))
    assert_oauth_error(by_basic, 401, "invalid_client")
    by_post = await server.http.post(
        TOKEN, data={**form, "client_id": api_key, "client_secret": secret}
    )
    assert_oauth_error(by_post, 401, "invalid_client")
    assert "access_token" not in by_basic.text + by_post.text


# --------------------------------------------------------------------------- 2. authentication


@pytest.mark.parametrize("path", [INTROSPECT, REVOKE])
async def test_both_endpoints_require_client_authentication(server: Running, path: str) -> None:
    client_id, secret = await register_secret_client(server.services, "client_secret_basic")
    post_id, post_secret = await register_secret_client(server.services, "client_secret_post")
    token = await basic_token(server.http, client_id, secret)

    wrong_basic = await server.http.post(path, data={"token": token}, auth=(client_id, "wrong"))
    assert_oauth_error(wrong_basic, 401, "invalid_client")
    assert wrong_basic.headers["www-authenticate"].startswith("Basic ")

    wrong_post = await server.http.post(
        path, data={"token": token, "client_id": post_id, "client_secret": "wrong"}
    )
    assert_oauth_error(wrong_post, 401, "invalid_client")
    assert "www-authenticate" not in wrong_post.headers

    # The right secret by the wrong method (post client over Basic) fails too.
    wrong_method = await server.http.post(path, data={"token": token}, auth=(post_id, post_secret))
    assert_oauth_error(wrong_method, 401, "invalid_client")

    # The client is authenticated first: a missing token is then invalid_request.
    missing = await server.http.post(path, data={"scope": "x"}, auth=(client_id, secret))
    assert_oauth_error(missing, 400, "invalid_request")
    empty = await server.http.post(path, data={"token": ""}, auth=(client_id, secret))
    assert_oauth_error(empty, 400, "invalid_request")
    by_post = await server.http.post(
        path, data={"client_id": post_id, "client_secret": post_secret}
    )
    assert_oauth_error(by_post, 400, "invalid_request")

    # None of the failed attempts revoked the token.
    assert (await whoami(server.http, token)).status_code == 200


@pytest.mark.parametrize("path", [INTROSPECT, REVOKE, TOKEN])
async def test_no_client_authentication_is_401_invalid_client(
    server: Running, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    client_id, secret = await register_secret_client(server.services, "client_secret_basic")
    token = await basic_token(server.http, client_id, secret)
    if path == TOKEN:
        grant = {"grant_type": "client_credentials", "scope": "system/*.rs"}
        forms = [grant, {**grant, "client_id": client_id}]
    else:
        forms = [
            {"token": token},
            {"token": token, "client_id": client_id},  # an id alone is not authentication
            {},  # no token either: the client is authenticated before the token is looked at
        ]
    for form in forms:
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="fhirgate.token"):
            response = await server.http.post(  # a form even when empty (data={} sends none)
                path, content=urlencode(form), headers={"Content-Type": FORM}
            )
        assert_oauth_error(response, 401, "invalid_client")
        assert "active" not in response.text and "access_token" not in response.text
        checks = [getattr(r, "check", None) for r in caplog.records if r.name == "fhirgate.token"]
        assert checks == ["credentials_missing"], (form, checks)
    # None of those requests revoked the token.
    assert (await whoami(server.http, token)).status_code == 200


@pytest.mark.parametrize("path", [INTROSPECT, REVOKE])
async def test_a_bearer_authorization_header_is_not_client_authentication(
    server: Running, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Only ``Authorization: Basic`` authenticates a client. A ``Bearer`` header (a resource
    server sending its own token, say) is ignored: alone it is no authentication at all (401,
    no Basic challenge), and beside an assertion it is not a second method."""
    client = await register_client(server.services, "ES384")
    token = await jwt_token(server.http, client)
    bearer = {"Authorization": f"Bearer {token}"}
    with caplog.at_level(logging.INFO, logger="fhirgate.token"):
        alone = await server.http.post(path, data={"token": token}, headers=bearer)
    assert_oauth_error(alone, 401, "invalid_client")
    assert "www-authenticate" not in alone.headers
    checks = [getattr(r, "check", None) for r in caplog.records if r.name == "fhirgate.token"]
    assert checks == ["credentials_missing"]

    with_assertion = await server.http.post(
        path, data=assertion_form(client, token, path), headers=bearer
    )
    assert with_assertion.status_code == 200, with_assertion.text
    if path == INTROSPECT:
        assert with_assertion.json()["active"] is True
        assert with_assertion.json()["client_id"] == client.client_id
    else:
        assert_invalid_token(await whoami(server.http, token))


@pytest.mark.parametrize("path", [INTROSPECT, REVOKE])
async def test_basic_and_an_assertion_together_are_invalid_request(
    server: Running, path: str
) -> None:
    client = await register_client(server.services, "ES384")
    basic_id, basic_secret = await register_secret_client(server.services, "client_secret_basic")
    token = await jwt_token(server.http, client)
    both = await server.http.post(
        path, data=assertion_form(client, token, path), auth=(basic_id, basic_secret)
    )
    assert_oauth_error(both, 400, "invalid_request")
    assert (await whoami(server.http, token)).status_code == 200


@pytest.mark.parametrize("path", [INTROSPECT, REVOKE])
async def test_wrong_secrets_are_throttled_at_the_limit(
    backend_settings: Settings, path: str
) -> None:
    """``auth_failure_limit`` = 3 here as at the token endpoint: three wrong secrets are
    evaluated (401), the third reaches the limit, and the next request from that address for
    that client id is refused (429) even with the right secret."""
    settings = backend_settings.model_copy(update={"auth_failure_limit": 3})
    running, stack = await start(settings)
    pin_window(running.services.authenticator._limiter)
    try:
        client_id, secret = await register_secret_client(running.services, "client_secret_basic")
        token = await basic_token(running.http, client_id, secret)
        statuses = []
        for _ in range(3):
            wrong = await running.http.post(path, data={"token": token}, auth=(client_id, "x"))
            assert_oauth_error(wrong, 401, "invalid_client")
            statuses.append(wrong.status_code)
        blocked = await running.http.post(path, data={"token": token}, auth=(client_id, secret))
        statuses.append(blocked.status_code)
        assert statuses == [401, 401, 401, 429]
        assert_oauth_error(blocked, 429, "temporarily_unavailable")
        assert 1 <= int(blocked.headers["retry-after"]) <= 60
        assert (await whoami(running.http, token)).status_code == 200  # nothing was revoked
    finally:
        await stack.aclose()


@pytest.mark.parametrize("path", [INTROSPECT, REVOKE])
async def test_a_replayed_assertion_is_refused(server: Running, path: str) -> None:
    client = await register_client(server.services, "ES384")
    token = await jwt_token(server.http, client)
    form = assertion_form(client, "unknown-token", path)
    first = await server.http.post(path, data=form)
    assert first.status_code == 200, first.text
    replayed = await server.http.post(path, data={**form, "token": token})
    assert_oauth_error(replayed, 401, "invalid_client")
    assert (await whoami(server.http, token)).status_code == 200  # the replay revoked nothing


# --------------------------------------------------------------------------- 3. revocation


async def test_revoke_own_jwt_kills_it_everywhere(server: Running) -> None:
    client_id, secret = await register_secret_client(server.services, "client_secret_basic")
    token = await basic_token(server.http, client_id, secret)
    assert (await whoami(server.http, token)).status_code == 200
    revoked = await revoke(server.http, token, (client_id, secret))
    assert revoked.status_code == 200
    assert revoked.content == b""
    assert_invalid_token(await whoami(server.http, token))
    assert await introspected(server.http, token, (client_id, secret)) == INACTIVE
    # Revoking it again is still a plain 200.
    again = await revoke(server.http, token, (client_id, secret))
    assert (again.status_code, again.content) == (200, b"")


async def test_revoke_own_jwt_with_a_private_key_jwt_assertion(server: Running) -> None:
    client = await register_client(server.services, "ES384")
    token = await jwt_token(server.http, client)
    response = await server.http.post(REVOKE, data=assertion_form(client, token, REVOKE))
    assert (response.status_code, response.content) == (200, b"")
    assert_invalid_token(await whoami(server.http, token))


async def test_another_clients_revocation_is_a_silent_no_op(server: Running) -> None:
    owner_id, owner_secret = await register_secret_client(server.services, "client_secret_basic")
    other_id, other_secret = await register_secret_client(server.services, "client_secret_basic")
    signer = await register_client(server.services, "ES384")
    token = await basic_token(server.http, owner_id, owner_secret)

    foreign = await revoke(server.http, token, (other_id, other_secret))
    unknown = await revoke(server.http, secrets.token_urlsafe(32), (other_id, other_secret))
    tampered = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    unknown_jwt = await revoke(server.http, tampered, (other_id, other_secret))
    signed = await server.http.post(REVOKE, data=assertion_form(signer, token, REVOKE))

    def raw(response: httpx.Response) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        return response.status_code, response.content, response.headers.raw

    assert foreign.status_code == 200 and foreign.content == b""
    assert raw(foreign) == raw(unknown) == raw(unknown_jwt) == raw(signed)
    me = await whoami(server.http, token)
    assert me.status_code == 200, me.text
    assert me.json()["client_id"] == owner_id
    assert (await introspected(server.http, token, (owner_id, owner_secret)))["active"] is True


async def test_revoke_unknown_and_garbage_tokens_is_200(server: Running) -> None:
    client_id, secret = await register_secret_client(server.services, "client_secret_basic")
    for token in (secrets.token_urlsafe(32), "garbage", "a.b.c", "x" * 9000):
        response = await revoke(server.http, token, (client_id, secret))
        assert (response.status_code, response.content) == (200, b""), token


# --------------------------------------------------------------------------- 4. replicas


async def test_revocation_on_one_instance_is_seen_by_another_immediately(
    backend_settings: Settings,
) -> None:
    first, first_stack = await start(backend_settings)
    second, second_stack = await start(backend_settings)
    try:
        client_id, secret = await register_secret_client(first.services, "client_secret_basic")
        token = await basic_token(first.http, client_id, secret)
        assert (await whoami(second.http, token)).status_code == 200
        assert (await introspected(second.http, token, (client_id, secret)))["active"] is True

        revoked = await revoke(first.http, token, (client_id, secret))
        assert revoked.status_code == 200
        # No sleep: the deny-list is shared storage, read on every request on every replica.
        assert_invalid_token(await whoami(second.http, token))
        assert await introspected(second.http, token, (client_id, secret)) == INACTIVE
        assert_invalid_token(await whoami(first.http, token))
    finally:
        await first_stack.aclose()
        await second_stack.aclose()


# --------------------------------------------------------------------------- 5. legacy tokens


async def test_revoke_legacy_tokens_by_their_owner_over_http(server: Running) -> None:
    api_key, secret, first = await legacy_pair(server)
    rotated = await server.http.post(
        "/auth/refreshToken", json={"apiKey": api_key, "refreshToken": first["refreshToken"]}
    )
    assert rotated.status_code == 200, rotated.text
    second = rotated.json()
    other = (
        await server.http.post("/auth/authenticate", json={"apiKey": api_key, "secret": secret})
    ).json()
    for token in (first["accessToken"], second["accessToken"], other["accessToken"]):
        assert (await whoami(server.http, token)).status_code == 200

    # Another legacy client's revocation is a silent no-op.
    stranger_key, stranger_secret, _ = await legacy_pair(server)
    for token in (second["refreshToken"], other["accessToken"]):
        ignored = await revoke(server.http, token, (stranger_key, stranger_secret))
        assert (ignored.status_code, ignored.content) == (200, b"")
    for token in (first["accessToken"], second["accessToken"], other["accessToken"]):
        assert (await whoami(server.http, token)).status_code == 200

    # Revoking the live refresh token (HTTP Basic) revokes its family: both access tokens.
    revoked = await revoke(server.http, second["refreshToken"], (api_key, secret))
    assert (revoked.status_code, revoked.content) == (200, b"")
    assert_invalid_token(await whoami(server.http, first["accessToken"]))
    assert_invalid_token(await whoami(server.http, second["accessToken"]))
    refused = await server.http.post(
        "/auth/refreshToken", json={"apiKey": api_key, "refreshToken": second["refreshToken"]}
    )
    assert refused.status_code == 401, refused.text

    # Another family is untouched, until its access token is revoked in turn (form fields).
    assert (await whoami(server.http, other["accessToken"])).status_code == 200
    revoked = await server.http.post(
        REVOKE,
        data={"token": other["accessToken"], "client_id": api_key, "client_secret": secret},
    )
    assert (revoked.status_code, revoked.content) == (200, b"")
    assert_invalid_token(await whoami(server.http, other["accessToken"]))
    # Revoking only the access token leaves its refresh token usable.
    again = await server.http.post(
        "/auth/refreshToken", json={"apiKey": api_key, "refreshToken": other["refreshToken"]}
    )
    assert again.status_code == 200, again.text
    assert (await whoami(server.http, again.json()["accessToken"])).status_code == 200


# --------------------------------------------------------------------------- 6. discovery


async def test_discovery_advertises_both_endpoints_and_their_auth_methods(
    sqlite_settings: Settings,
) -> None:
    public = "https://auth.example.org"
    running, stack = await start(sqlite_settings.model_copy(update={"public_url": public}))
    try:
        for path in ("/.well-known/oauth-authorization-server", "/.well-known/smart-configuration"):
            response = await running.http.get(path)  # Host: 127.0.0.1:8000, not the public URL
            assert response.status_code == 200, response.text
            meta = response.json()
            assert meta["revocation_endpoint"] == f"{public}{REVOKE}", path
            assert meta["introspection_endpoint"] == f"{public}{INTROSPECT}", path
            for name in ("revocation", "introspection"):
                methods = meta[f"{name}_endpoint_auth_methods_supported"]
                assert set(methods) == {
                    "private_key_jwt",
                    "client_secret_basic",
                    "client_secret_post",
                }, (path, name)
                algs = meta[f"{name}_endpoint_auth_signing_alg_values_supported"]
                assert set(algs) == set(sqlite_settings.assertion_algorithms), (path, name)

        # The advertised URL is the audience an assertion for that endpoint must carry.
        client = await register_client(running.services, "ES384")
        client.token_url = f"{public}/oauth2/token"
        token = await jwt_token(running.http, client)
        form = assertion_form(client, token, aud=meta["introspection_endpoint"])
        response = await running.http.post(INTROSPECT, data=form)
        assert response.status_code == 200, response.text
        assert response.json()["active"] is True
        assert response.json()["iss"] == public
    finally:
        await stack.aclose()
