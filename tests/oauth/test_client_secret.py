"""Client secrets at the token endpoints: ``client_secret_basic`` and ``client_secret_post``
(RFC 6749 §2.3.1), the Pattern Health dialect, rotation, brute-force throttling with its audit
trail, and that a plaintext secret is never stored, logged or printed.

Real HTTP through the ASGI app (the leak test through uvicorn over TCP) on every backend:
SQLite, PostgreSQL, PostgreSQL + Redis. Request-parsing checks that never reach storage run on
SQLite only.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import logging
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import httpx
import pytest
import uvicorn
from click.testing import CliRunner, Result
from sqlalchemy import update
from tests.support import (
    BASE,
    Running,
    SigningClient,
    pin_window,
    private_key,
    register_client,
    register_secret_client,
    start,
)

from fhirgate.app import create_app
from fhirgate.cli.main import cli
from fhirgate.config import Settings
from fhirgate.domain.clients import new_client_id
from fhirgate.domain.errors import NotFound
from fhirgate.domain.stores import digest
from fhirgate.oauth.client_auth import SecretHasher
from fhirgate.server_secret import server_secret
from fhirgate.services import Services
from fhirgate.storage.db import sqlite_path, upgrade_async
from fhirgate.storage.models import ClientRow

TOKEN = "/oauth2/token"
PATTERN = "/api/auth/token"
CHALLENGE = 'Basic realm="fhirgate", charset="UTF-8"'
BASIC, POST = "client_secret_basic", "client_secret_post"
GRANT = {"grant_type": "client_credentials"}
SCOPED = {**GRANT, "scope": "system/*.rs"}  # /oauth2/token requires a scope
INVALID_CLIENT = {"error": "invalid_client", "error_description": "client authentication failed"}

#: RFC 6749 §2.3.1 must survive: form-urlencoding reserves ``:`` ``%`` ``+`` and space.
ODD_SECRET = "a:b%c+d é 日本"
ODD_ID = "id:50%+x é 日本"


def basic(client_id: str, secret: str, *, encode: bool = True) -> dict[str, str]:
    """``Authorization: Basic``, each part form-urlencoded first (RFC 6749 §2.3.1) unless
    ``encode`` is false (a client that skips that step)."""
    if encode:
        client_id, secret = quote_plus(client_id), quote_plus(secret)
    raw = f"{client_id}:{secret}".encode()
    return {"Authorization": "Basic " + base64.b64encode(raw).decode("ascii")}


async def request_token(
    http: httpx.AsyncClient,
    client_id: str,
    secret: str,
    method: str = BASIC,
    *,
    path: str = TOKEN,
    scope: str | None = "system/*.rs",
) -> httpx.Response:
    """A client_credentials grant authenticated with ``method`` (Basic or the form)."""
    form = dict(GRANT)
    if scope is not None:
        form["scope"] = scope
    if method == POST:
        form.update(client_id=client_id, client_secret=secret)
        return await http.post(path, data=form)
    return await http.post(path, data=form, headers=basic(client_id, secret))


def fingerprint(response: httpx.Response) -> tuple[int, bytes, list[tuple[str, str]]]:
    """What a client can observe of an answer: status, body bytes, headers but ``date``."""
    headers = sorted((k.lower(), v) for k, v in response.headers.multi_items() if k != "date")
    return response.status_code, response.content, headers


def assert_invalid_client(response: httpx.Response, *, challenge: bool) -> None:
    assert response.status_code == 401, response.text
    assert response.json()["error"] == "invalid_client"
    assert response.headers["cache-control"] == "no-store"
    if challenge:
        assert response.headers["www-authenticate"] == CHALLENGE
    else:
        assert "www-authenticate" not in response.headers


def assert_invalid_request(response: httpx.Response) -> None:
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_request"
    assert "www-authenticate" not in response.headers


async def whoami(http: httpx.AsyncClient, token: str) -> httpx.Response:
    return await http.get("/whoami", headers={"Authorization": f"Bearer {token}"})


async def set_client_id(services: Services, old: str, new: str) -> None:
    """Give a client an id that ``new_client_id`` never generates."""
    async with services.engine.begin() as conn:
        await conn.execute(
            update(ClientRow).where(ClientRow.client_id == old).values(client_id=new)
        )
    services.directory.forget(old)


# --- both methods at /oauth2/token ----------------------------------------------------------


@pytest.mark.parametrize("method", [BASIC, POST])
async def test_secret_client_gets_a_one_hour_bearer_token_that_works_on_whoami(
    server: Running, method: str
) -> None:
    client_id, secret = await register_secret_client(
        server.services, method, scope="system/Patient.rs system/Observation.rs"
    )
    response = await request_token(
        server.http, client_id, secret, method, scope="system/Patient.rs"
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"access_token", "token_type", "expires_in", "scope"}
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 3600  # FHIRGATE_SECRET_TOKEN_TTL's default
    assert body["scope"] == "system/Patient.rs"
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["pragma"] == "no-cache"
    me = await whoami(server.http, body["access_token"])
    assert me.status_code == 200, me.text
    assert me.json()["client_id"] == client_id
    assert me.json()["scope"] == "system/Patient.rs"
    assert me.json()["exp"] - me.json()["iat"] == 3600


# --- RFC 6749 §2.3.1: form-urlencoded, then base64 --------------------------------------------


@pytest.mark.parametrize(
    ("odd_id", "odd_secret"),
    [(False, True), (True, False), (True, True)],
    ids=["odd-secret", "odd-id", "odd-both"],
)
async def test_reserved_and_non_ascii_characters_survive_basic_when_form_urlencoded(
    server: Running, odd_id: bool, odd_secret: bool
) -> None:
    services = server.services
    secret = ODD_SECRET if odd_secret else None
    client_id, secret = await register_secret_client(services, BASIC, secret=secret)
    if odd_id:
        await set_client_id(services, client_id, ODD_ID)
        client_id = ODD_ID
    assert basic(client_id, secret) != basic(client_id, secret, encode=False)
    response = await request_token(server.http, client_id, secret)
    assert response.status_code == 200, response.text
    assert (await whoami(server.http, response.json()["access_token"])).json()[
        "client_id"
    ] == client_id


async def test_reserved_and_non_ascii_characters_survive_client_secret_post(
    server: Running,
) -> None:
    client_id, _ = await register_secret_client(server.services, POST, secret=ODD_SECRET)
    await set_client_id(server.services, client_id, ODD_ID)
    response = await request_token(server.http, ODD_ID, ODD_SECRET, POST)
    assert response.status_code == 200, response.text


async def test_a_raw_plus_in_basic_credentials_is_decoded_as_a_space(server: Running) -> None:
    """RFC 6749 §2.3.1 form-urlencodes each part before base64, so the server form-decodes it:
    a ``+`` a client sends unencoded arrives as a space. Such a client fails if its secret has
    a ``+`` (generated secrets are base64url and never do)."""
    plus_id, _ = await register_secret_client(server.services, secret="a+b")
    raw = await server.http.post(TOKEN, data=SCOPED, headers=basic(plus_id, "a+b", encode=False))
    assert_invalid_client(raw, challenge=True)
    encoded = await server.http.post(TOKEN, data=SCOPED, headers=basic(plus_id, "a+b"))
    assert encoded.status_code == 200, encoded.text
    space_id, _ = await register_secret_client(server.services, secret="a b")
    as_space = await server.http.post(
        TOKEN, data=SCOPED, headers=basic(space_id, "a+b", encode=False)
    )
    assert as_space.status_code == 200, as_space.text


# --- one answer for every failure -------------------------------------------------------------


@pytest.mark.parametrize("method", [BASIC, POST])
async def test_wrong_secret_and_unknown_client_get_byte_identical_answers(
    server: Running, method: str
) -> None:
    client_id, secret = await register_secret_client(server.services, method)
    wrong = await request_token(server.http, client_id, SecretHasher.generate(), method)
    unknown = await request_token(server.http, new_client_id(), secret, method)
    overlong = await request_token(server.http, "x" * 600, secret, method)
    assert_invalid_client(wrong, challenge=method == BASIC)
    assert wrong.json() == INVALID_CLIENT
    assert fingerprint(wrong) == fingerprint(unknown) == fingerprint(overlong)


@pytest.mark.parametrize(
    ("registered", "used"),
    [
        (BASIC, POST),
        (POST, BASIC),
        ("private_key_jwt", BASIC),
        ("private_key_jwt", POST),
        ("legacy_api_key", BASIC),
        ("legacy_api_key", POST),
    ],
)
async def test_a_method_the_client_did_not_register_is_invalid_client_like_a_wrong_secret(
    server: Running, registered: str, used: str
) -> None:
    services, http = server.services, server.http
    reference_id, _ = await register_secret_client(services, used)
    wrong = await request_token(http, reference_id, SecretHasher.generate(), used)
    if registered == "private_key_jwt":
        client_id, secret = (await register_client(services)).client_id, SecretHasher.generate()
    else:
        client_id, secret = await register_secret_client(services, registered)
    response = await request_token(http, client_id, secret, used)
    assert_invalid_client(response, challenge=used == BASIC)
    assert fingerprint(response) == fingerprint(wrong)


async def test_a_secret_client_presenting_an_assertion_is_invalid_client_like_a_wrong_secret(
    server: Running,
) -> None:
    services, http = server.services, server.http
    client_id, _ = await register_secret_client(services, POST)
    wrong = await request_token(http, client_id, SecretHasher.generate(), POST)
    forger = SigningClient(client_id, private_key("RS384"), "rs384-0", "RS384")
    response = await http.post(TOKEN, data=forger.form())
    assert_invalid_client(response, challenge=False)
    assert fingerprint(response) == fingerprint(wrong)


async def test_a_revoked_client_is_invalid_client_like_an_unknown_one(server: Running) -> None:
    services, http = server.services, server.http
    client_id, secret = await register_secret_client(services)
    issued = await request_token(http, client_id, secret)
    assert issued.status_code == 200, issued.text
    await services.clients.revoke(client_id)
    services.directory.forget(client_id)  # else this process trusts its cache for ≤ 5 s
    revoked = await request_token(http, client_id, secret)
    unknown = await request_token(http, new_client_id(), secret)
    assert_invalid_client(revoked, challenge=True)
    assert fingerprint(revoked) == fingerprint(unknown)
    assert (await whoami(http, issued.json()["access_token"])).status_code == 401


# --- malformed requests: invalid_request (SQLite: they never reach storage) -------------------


async def test_basic_and_a_form_secret_together_are_invalid_request(running: Running) -> None:
    client_id, secret = await register_secret_client(running.services)
    form = {**SCOPED, "client_secret": secret}
    response = await running.http.post(TOKEN, data=form, headers=basic(client_id, secret))
    assert_invalid_request(response)


async def test_basic_and_an_assertion_together_are_invalid_request(running: Running) -> None:
    signer = await register_client(running.services)
    client_id, secret = await register_secret_client(running.services)
    response = await running.http.post(TOKEN, data=signer.form(), headers=basic(client_id, secret))
    assert_invalid_request(response)


async def test_a_form_secret_and_an_assertion_together_are_invalid_request(
    running: Running,
) -> None:
    signer = await register_client(running.services)
    form = {**signer.form(), "client_id": signer.client_id, "client_secret": "x"}
    assert_invalid_request(await running.http.post(TOKEN, data=form))


async def test_basic_with_a_different_form_client_id_is_invalid_request(
    running: Running,
) -> None:
    client_id, secret = await register_secret_client(running.services)
    other_id, _ = await register_secret_client(running.services)
    headers = basic(client_id, secret)
    form = dict(SCOPED)
    other = await running.http.post(TOKEN, data={**form, "client_id": other_id}, headers=headers)
    assert_invalid_request(other)
    same = await running.http.post(TOKEN, data={**form, "client_id": client_id}, headers=headers)
    assert same.status_code == 200, same.text  # repeating the same id is allowed


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


@pytest.mark.parametrize(
    "authorization",
    [
        "Basic !!!not-base64!!!",
        "Basic " + _b64(b"no-colon-here"),
        "Basic " + _b64(b"id:\xff\xfe"),  # not UTF-8
        "Basic " + _b64(b"id:%C3"),  # a percent-escape that is not UTF-8
        "Basic ",
        "Basic",  # the scheme alone (servers strip the trailing space)
        "Basic\t" + _b64(b"no-colon-here"),
        "bASIC " + _b64(b"no-colon-here"),  # the scheme name is case-insensitive
    ],
    ids=["bad-base64", "no-colon", "not-utf8", "bad-escape", "empty", "bare", "tab", "scheme-case"],
)
async def test_malformed_basic_credentials_are_invalid_request(
    running: Running, authorization: str
) -> None:
    headers = {"Authorization": authorization}
    response = await running.http.post(TOKEN, data=SCOPED, headers=headers)
    assert_invalid_request(response)


@pytest.mark.parametrize("authorization", ["Bearer abc", "Digest username=x", "Token abc"])
async def test_an_authorization_header_of_another_scheme_is_not_client_authentication(
    running: Running, authorization: str
) -> None:
    """Only ``Authorization: Basic`` authenticates a client; any other scheme is ignored, so
    the request has no client authentication at all (no Basic challenge: none was tried)."""
    headers = {"Authorization": authorization}
    response = await running.http.post(TOKEN, data=SCOPED, headers=headers)
    assert_invalid_client(response, challenge=False)
    assert response.json()["error_description"] == "client authentication is required"


async def test_an_assertion_with_a_bearer_authorization_header_is_accepted(
    running: Running,
) -> None:
    """A ``Bearer`` header is not a second client authentication method: the assertion alone
    authenticates the client."""
    signer = await register_client(running.services)
    headers = {"Authorization": "Bearer x"}
    response = await running.http.post(TOKEN, data=signer.form(), headers=headers)
    assert response.status_code == 200, response.text
    me = await whoami(running.http, response.json()["access_token"])
    assert me.json()["client_id"] == signer.client_id


async def test_post_secret_with_a_bearer_authorization_header_is_accepted(
    running: Running,
) -> None:
    client_id, secret = await register_secret_client(running.services, POST)
    form = {**SCOPED, "client_id": client_id, "client_secret": secret}
    response = await running.http.post(TOKEN, data=form, headers={"Authorization": "Bearer x"})
    assert response.status_code == 200, response.text


async def test_a_form_secret_without_client_id_is_invalid_request(running: Running) -> None:
    _, secret = await register_secret_client(running.services, POST)
    form = {**SCOPED, "client_secret": secret}
    assert_invalid_request(await running.http.post(TOKEN, data=form))


# --- the Pattern Health dialect: POST /api/auth/token -----------------------------------------


async def test_pattern_counts_an_empty_scope_as_none(running: Running) -> None:
    """``scope`` is optional on Pattern's path: ``scope=`` is its omission there, not the
    ``invalid_scope`` of ``/oauth2/token``."""
    client_id, secret = await register_secret_client(running.services, scope="system/Patient.rs")
    response = await request_token(running.http, client_id, secret, path=PATTERN, scope="")
    assert response.status_code == 200, response.text
    me = await whoami(running.http, response.json()["access_token"])
    assert me.json()["scope"] == "system/Patient.rs"
    standard = await request_token(running.http, client_id, secret, scope="")
    assert standard.status_code == 400, standard.text
    assert standard.json()["error"] == "invalid_scope"


async def test_pattern_basic_gets_milliseconds_and_a_lower_case_bearer(server: Running) -> None:
    client_id, secret = await register_secret_client(server.services, scope="system/Patient.rs")
    response = await request_token(server.http, client_id, secret, path=PATTERN, scope=None)
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"access_token", "expires_in", "token_type"}
    assert body["expires_in"] == 3_600_000
    assert body["token_type"] == "bearer"
    assert response.headers["cache-control"] == "no-store"
    me = await whoami(server.http, body["access_token"])
    assert me.status_code == 200, me.text
    assert me.json()["client_id"] == client_id
    assert me.json()["scope"] == "system/Patient.rs"  # no scope asked: the allowed one


async def test_pattern_expires_in_follows_the_clients_token_lifetime(server: Running) -> None:
    client_id, secret = await register_secret_client(server.services, token_lifetime=120)
    response = await request_token(server.http, client_id, secret, path=PATTERN, scope=None)
    assert response.status_code == 200, response.text
    assert response.json()["expires_in"] == 120_000
    standard = await request_token(server.http, client_id, secret)
    assert standard.json()["expires_in"] == 120


async def test_pattern_refuses_client_secret_post_with_the_basic_challenge(
    server: Running,
) -> None:
    client_id, secret = await register_secret_client(server.services, POST)
    response = await request_token(server.http, client_id, secret, POST, path=PATTERN, scope=None)
    assert_invalid_client(response, challenge=True)
    basic_id, basic_secret = await register_secret_client(server.services, BASIC)
    as_form = await request_token(server.http, basic_id, basic_secret, POST, path=PATTERN)
    assert_invalid_client(as_form, challenge=True)  # Basic only, even for a Basic client


async def test_pattern_without_credentials_is_401_with_the_basic_challenge(
    server: Running,
) -> None:
    response = await server.http.post(PATTERN, data=GRANT)
    assert_invalid_client(response, challenge=True)


async def test_pattern_with_only_a_bearer_header_is_401_basic_required(running: Running) -> None:
    """A ``Bearer`` header is no client authentication: Basic is required there."""
    response = await running.http.post(PATTERN, data=GRANT, headers={"Authorization": "Bearer x"})
    assert_invalid_client(response, challenge=True)
    assert response.json()["error_description"] == "HTTP Basic client authentication is required"


async def test_pattern_wrong_secret_is_401_with_the_basic_challenge(server: Running) -> None:
    client_id, _ = await register_secret_client(server.services)
    response = await request_token(
        server.http, client_id, SecretHasher.generate(), path=PATTERN, scope=None
    )
    assert_invalid_client(response, challenge=True)
    assert response.json() == INVALID_CLIENT


async def test_pattern_wrong_grant_type_is_unsupported_grant_type(server: Running) -> None:
    client_id, secret = await register_secret_client(server.services)
    response = await server.http.post(
        PATTERN, data={"grant_type": "password"}, headers=basic(client_id, secret)
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "unsupported_grant_type"


async def test_an_expired_secret_client_token_is_refused_by_whoami(server: Running) -> None:
    """The one real wait of this module: a one-second token, checked 2.1 s later."""
    client_id, secret = await register_secret_client(server.services, token_lifetime=1)
    # ``exp`` is the whole second ``iat`` + 1: start in the first half of a second so that the
    # token is still valid when checked right away
    if time.time() % 1 > 0.5:
        await asyncio.sleep(1.02 - time.time() % 1)
    response = await request_token(server.http, client_id, secret, path=PATTERN, scope=None)
    assert response.status_code == 200, response.text
    assert response.json()["expires_in"] == 1000
    token = response.json()["access_token"]
    assert (await whoami(server.http, token)).status_code == 200
    await asyncio.sleep(2.1)
    expired = await whoami(server.http, token)
    assert expired.status_code == 401, expired.text
    assert expired.json()["error"] == "invalid_token"
    assert 'error="invalid_token"' in expired.headers["www-authenticate"]


# --- rotation ---------------------------------------------------------------------------------
#
# The token endpoint reads clients through a per-process cache (ClientDirectory, at most
# client_cache_ttl = 5 s). A rotation made elsewhere (the CLI, another replica) is therefore
# seen within 5 s; these tests rotate through the repository and call ``directory.forget`` so
# that this process sees it at once instead of sleeping through the cache's lifetime.


async def rotate(services: Services, client_id: str, grace: int) -> str:
    new = SecretHasher.generate()
    await services.clients.rotate_secret(client_id, services.hasher.hash(new), grace)
    services.directory.forget(client_id)
    return new


async def status(server: Running, client_id: str, secret: str) -> int:
    return (await request_token(server.http, client_id, secret)).status_code


async def test_rotation_without_grace_retires_the_old_secret_at_once(server: Running) -> None:
    client_id, old = await register_secret_client(server.services)
    assert await status(server, client_id, old) == 200  # the client is now cached
    new = await rotate(server.services, client_id, grace=0)
    assert await status(server, client_id, old) == 401
    assert await status(server, client_id, new) == 200


async def test_rotation_with_grace_keeps_both_secrets_working(server: Running) -> None:
    client_id, old = await register_secret_client(server.services)
    new = await rotate(server.services, client_id, grace=60)
    assert await status(server, client_id, old) == 200
    assert await status(server, client_id, new) == 200
    stored = await server.services.clients.get(client_id)
    assert stored is not None and stored.previous_secret_expires_at is not None
    assert 55 <= stored.previous_secret_expires_at - time.time() <= 60


async def test_the_old_secret_fails_once_its_grace_period_is_over(server: Running) -> None:
    services = server.services
    client_id, old = await register_secret_client(services)
    new = await rotate(services, client_id, grace=60)
    async with services.engine.begin() as conn:  # the grace period ended a second ago
        await conn.execute(
            update(ClientRow)
            .where(ClientRow.client_id == client_id)
            .values(previous_secret_expires_at=int(time.time()) - 1)
        )
    services.directory.forget(client_id)
    assert await status(server, client_id, old) == 401
    assert await status(server, client_id, new) == 200


async def test_a_second_rotation_retires_the_first_secret_even_in_grace(server: Running) -> None:
    client_id, first = await register_secret_client(server.services)
    second = await rotate(server.services, client_id, grace=60)
    third = await rotate(server.services, client_id, grace=60)
    assert await status(server, client_id, first) == 401  # only one previous secret is kept
    assert await status(server, client_id, second) == 200
    assert await status(server, client_id, third) == 200


async def test_a_private_key_jwt_client_has_no_secret_to_rotate(server: Running) -> None:
    signer = await register_client(server.services)
    with pytest.raises(NotFound):
        await server.services.clients.rotate_secret(signer.client_id, "0" * 64, 0)
    stored = await server.services.clients.get(signer.client_id)
    assert stored is not None and stored.secret_hash is None


# --- brute force: throttled per (client id, address) and per address, and audited ------------


async def throttled_server(settings: Settings, stack: contextlib.AsyncExitStack) -> Running:
    """The app with ``auth_failure_limit`` = 3 (so 15 for an address alone), its throttle's
    clock pinned one second into the current minute: counters live per one-minute window, and
    a test that crossed a window boundary would see them restart (the throttle's own tests
    fake its clock the same way)."""
    running, app_stack = await start(settings.model_copy(update={"auth_failure_limit": 3}))
    stack.push_async_callback(app_stack.aclose)
    pin_window(running.services.authenticator._limiter)
    return running


async def peer(
    stack: contextlib.AsyncExitStack, running: Running, address: str
) -> httpx.AsyncClient:
    """An HTTP client whose requests come from ``address``."""
    transport = httpx.ASGITransport(app=running.app, client=(address, 123))
    client: httpx.AsyncClient = await stack.enter_async_context(
        httpx.AsyncClient(transport=transport, base_url=BASE)
    )
    return client


def assert_throttled(response: httpx.Response) -> None:
    assert response.status_code == 429, response.text
    assert 1 <= int(response.headers["retry-after"]) <= 60
    body = response.json()
    assert body["error"] == "temporarily_unavailable"
    assert body["error_description"]
    assert response.headers["cache-control"] == "no-store"


async def test_wrong_secrets_reaching_the_limit_are_throttled_per_address_and_audited(
    backend_settings: Settings,
) -> None:
    """``auth_failure_limit`` = 3: a (client id, address) may fail 3 times a minute. Each of
    the 3 is evaluated and answered 401; the 3rd reaches the limit and blocks the key, so from
    then on that address is answered 429 for that id before anything is checked, even with the
    right secret (FailureLimiter: "blocks a key ... once it has ``limit`` failures")."""
    async with contextlib.AsyncExitStack() as stack:
        running = await throttled_server(backend_settings, stack)
        services = running.services
        client_id, secret = await register_secret_client(services)
        neighbour_id, neighbour_secret = await register_secret_client(services)
        attacker = await peer(stack, running, "10.0.0.1")
        owner = await peer(stack, running, "10.0.0.2")
        guesses = [SecretHasher.generate() for _ in range(5)]
        answers = [await request_token(attacker, client_id, guess) for guess in guesses[:3]]
        assert [r.status_code for r in answers] == [401, 401, 401]
        for answer in answers:
            assert_invalid_client(answer, challenge=True)
        assert_throttled(await request_token(attacker, client_id, secret))  # even the right one
        for guess in guesses[3:]:
            assert_throttled(await request_token(attacker, client_id, guess))
        assert (await request_token(owner, client_id, secret)).status_code == 200
        # the address is not blocked (it may fail 5 x 3 times): other clients behind it work
        assert (await request_token(attacker, neighbour_id, neighbour_secret)).status_code == 200

        await services.audit.flush()
        events = await services.audit.recent(client_id)
        failures = [e for e in events if e.event == "client_auth.failure"]
        assert len(failures) == 3  # one per evaluated failure; 429s are refused unevaluated
        assert {(e.client_id, e.source, e.detail) for e in failures} == {
            (client_id, "10.0.0.1", "wrong_secret")
        }
        for event in events:
            for value in map(str, dataclasses.astuple(event)):
                assert secret not in value
                assert all(guess not in value for guess in guesses)
        neighbour = await services.audit.recent(neighbour_id)
        assert [e for e in neighbour if e.event == "client_auth.failure"] == []


async def test_an_address_cycling_client_ids_is_blocked_at_five_times_the_limit(
    backend_settings: Settings,
) -> None:
    """The address alone may fail 5 x 3 = 15 times a minute: the 15th failure (each with a new,
    unknown id) reaches the limit and the 16th request is refused. Unknown ids are audited as
    digests only, with no client id."""
    async with contextlib.AsyncExitStack() as stack:
        running = await throttled_server(backend_settings, stack)
        client_id, secret = await register_secret_client(running.services)
        attacker = await peer(stack, running, "10.0.0.3")
        owner = await peer(stack, running, "10.0.0.4")
        guessed_ids = [new_client_id() for _ in range(16)]
        answers = [
            await request_token(attacker, guessed, SecretHasher.generate())
            for guessed in guessed_ids
        ]
        assert [r.status_code for r in answers] == [401] * 15 + [429]
        assert_throttled(await request_token(attacker, client_id, secret))
        assert (await request_token(owner, client_id, secret)).status_code == 200
        await running.services.audit.flush()
        failures = [e for e in await running.services.audit.recent() if e.event.endswith("failure")]
        assert [e.source for e in failures] == ["10.0.0.3"] * 15
        assert {e.client_id for e in failures} == {None}
        expected = {
            f"unknown_client unknown_id={unknown_id(running.services, i)}" for i in guessed_ids[:15]
        }
        assert {e.detail for e in failures} == expected
        for event in failures:
            assert all(guessed not in str(event) for guessed in guessed_ids)


def unknown_id(services: Services, claimed: str) -> str:
    """How the audit log names a claimed client id that names no client: 16 hex characters of
    its HMAC under a server-derived key (the id may be a secret pasted into the wrong field;
    without the server key the digest confirms no guess)."""
    fingerprint = services.hasher.fingerprint(claimed)
    assert fingerprint != digest("id", claimed)[:16]  # keyed, not a plain digest
    return fingerprint


async def test_a_secret_in_the_client_id_field_never_reaches_the_audit_log(
    backend_settings: Settings,
) -> None:
    """Basic with id and secret swapped (``secret:client_id``): the claimed id names no client,
    so the failure is audited with no client id and a digest of the claimed id only."""
    running, stack = await start(backend_settings)
    try:
        services = running.services
        client_id, secret = await register_secret_client(services)
        response = await running.http.post(TOKEN, data=SCOPED, headers=basic(secret, client_id))
        assert_invalid_client(response, challenge=True)
        assert response.json() == INVALID_CLIENT

        await services.audit.flush()
        events = await services.audit.recent()
        failures = [e for e in events if e.event == "client_auth.failure"]
        assert len(failures) == 1
        assert failures[0].client_id is None
        assert failures[0].source == "127.0.0.1"
        assert failures[0].detail == f"unknown_client unknown_id={unknown_id(services, secret)}"
        assert re.fullmatch(r"unknown_client unknown_id=[0-9a-f]{16}", failures[0].detail)
        for event in events:
            for value in map(str, dataclasses.astuple(event)):
                assert secret not in value
        if backend_settings.is_sqlite:  # every file of the database, its WAL included
            stored = sqlite_files(backend_settings)
            assert stored
            assert all(secret.encode() not in content for content in stored.values())
        else:
            assert secret not in await postgres_rows(backend_settings)
    finally:
        await stack.aclose()


async def test_a_known_client_id_is_audited_as_itself(running: Running) -> None:
    client_id, _ = await register_secret_client(running.services)
    response = await request_token(running.http, client_id, SecretHasher.generate())
    assert_invalid_client(response, challenge=True)
    await running.services.audit.flush()
    failures = [
        e for e in await running.services.audit.recent() if e.event == "client_auth.failure"
    ]
    assert [(e.client_id, e.detail) for e in failures] == [(client_id, "wrong_secret")]


# --- the plaintext secret is never stored, logged or printed ---------------------------------


def cli_env(settings: Settings) -> dict[str, str]:
    env = {
        "FHIRGATE_DATABASE_URL": settings.database_url,
        "FHIRGATE_VAR_DIR": str(settings.var_dir),
        "FHIRGATE_PUBLIC_URL": settings.public_url,
    }
    if settings.secret_key:
        env["FHIRGATE_SECRET_KEY"] = settings.secret_key
    return env


def invoke(settings: Settings, *args: str) -> Result:
    result = CliRunner().invoke(cli, list(args), env=cli_env(settings), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


class Uvicorn:
    """The real app served by uvicorn on 127.0.0.1 in a thread (its own event loop)."""

    def __init__(self, settings: Settings) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        config = uvicorn.Config(
            create_app(settings),
            log_config=None,  # keep the test's logging: records reach caplog
            log_level="debug",
            access_log=True,
            lifespan="on",
            loop="asyncio",
            ws="none",
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"

    async def __aenter__(self) -> Uvicorn:
        self._thread.start()
        deadline = time.monotonic() + 15
        while not self._server.started:
            assert self._thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            await asyncio.sleep(0.02)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.should_exit = True
        await asyncio.to_thread(self._thread.join, 15)
        self._sock.close()


def sqlite_files(settings: Settings) -> dict[str, bytes]:
    """Every file next to the SQLite database (the database, its -wal and -shm, var/)."""
    root = Path(sqlite_path(settings.database_url)).parent
    return {str(p): p.read_bytes() for p in root.rglob("*") if p.is_file()}


async def postgres_rows(settings: Settings) -> str:
    """Every row of every table, as PostgreSQL prints it."""
    import asyncpg

    conn = await asyncpg.connect(settings.database_url.replace("+asyncpg", ""))
    try:
        tables = await conn.fetch(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_schema = 'public' AND table_type = 'BASE TABLE'"
        )
        assert {"clients", "audit_events"} <= {t["table_name"] for t in tables}
        rows = []
        for table in tables:
            name = table["table_name"].replace('"', '""')
            rows += [r[0] for r in await conn.fetch(f'SELECT t::text FROM "{name}" t')]  # noqa: S608 (catalog names)
        return "\n".join(rows)
    finally:
        await conn.close()


async def redis_contents(url: str) -> str:
    from redis.asyncio import Redis

    redis = Redis.from_url(url)
    try:
        parts = []
        async for key in redis.scan_iter(count=1000):
            parts.append(repr(key))
            if await redis.type(key) == b"string":
                parts.append(repr(await redis.get(key)))
        return "\n".join(parts)
    finally:
        await redis.aclose()


@pytest.fixture
def all_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Every record at DEBUG, fhirgate's and uvicorn's included even if they stop propagating."""
    caplog.set_level(logging.DEBUG)
    added = []
    for name in ["fhirgate", "uvicorn", "uvicorn.error", "uvicorn.access", "sqlalchemy.engine"]:
        caplog.set_level(logging.DEBUG, logger=name)
        logger = logging.getLogger(name)
        if not logger.propagate and caplog.handler not in logger.handlers:
            logger.addHandler(caplog.handler)
            added.append(logger)
    yield caplog
    for logger in added:
        logger.removeHandler(caplog.handler)


async def test_plaintext_secrets_never_reach_storage_logs_or_cli_output(
    backend_settings: Settings, all_logs: pytest.LogCaptureFixture
) -> None:
    settings = backend_settings.model_copy(update={"client_cache_ttl": 0.0})
    await upgrade_async(settings.database_url)
    created = json.loads(
        (
            await asyncio.to_thread(
                invoke, settings, "clients", "create", "--auth", BASIC, "--name", "b", "--json"
            )
        ).stdout
    )
    basic_id, first_secret = created["client_id"], created["client_secret"]
    services = Services.build(settings)
    try:
        post_id, post_secret = await register_secret_client(services, POST)
    finally:
        await services.aclose()
    wrong = [SecretHasher.generate(), SecretHasher.generate()]  # plausible, never registered
    sent_headers: list[str] = []

    async with Uvicorn(settings) as server, httpx.AsyncClient(base_url=server.url) as http:

        async def send(client_id: str, secret: str, method: str = BASIC, **kw: Any) -> int:
            if method == BASIC:
                sent_headers.append(basic(client_id, secret)["Authorization"])
            return (await request_token(http, client_id, secret, method, **kw)).status_code

        assert await send(basic_id, first_secret) == 200
        assert await send(basic_id, first_secret, path=PATTERN, scope=None) == 200
        assert await send(basic_id, wrong[0]) == 401
        assert await send(basic_id, wrong[0], path=PATTERN, scope=None) == 401
        assert await send(basic_id, first_secret, POST) == 401  # unregistered method
        assert await send(post_id, post_secret, POST) == 200
        assert await send(post_id, wrong[1], POST) == 401
        assert await send(post_id, post_secret) == 401  # unregistered method, via Basic
        both = await http.post(
            TOKEN,
            data={**SCOPED, "client_secret": first_secret},
            headers=basic(basic_id, first_secret),
        )
        assert both.status_code == 400
        half_escape = {"Authorization": "Basic " + _b64(f"{basic_id}:{first_secret}%C3".encode())}
        sent_headers.append(half_escape["Authorization"])
        assert (await http.post(TOKEN, data=SCOPED, headers=half_escape)).status_code == 400

        rotated = json.loads(
            (
                await asyncio.to_thread(
                    invoke,
                    settings,
                    "clients",
                    "rotate-secret",
                    basic_id,
                    "--grace",
                    "60",
                    "--json",
                )
            ).stdout
        )
        new_secret = rotated["client_secret"]
        assert await send(basic_id, new_secret) == 200
        assert await send(basic_id, first_secret) == 200  # in its grace period
        token = (await request_token(http, basic_id, new_secret)).json()["access_token"]
        assert (await whoami(http, token)).status_code == 200
        stored_while_running = sqlite_files(settings) if settings.is_sqlite else {}

    secrets_ = [first_secret, new_secret, post_secret, *wrong]
    hashes = [SecretHasher(server_secret(settings)).hash(s) for s in secrets_[:3]]
    needles = {*secrets_, *(quote_plus(s) for s in secrets_)}
    needles |= {header.removeprefix("Basic ") for header in sent_headers}
    needles |= {base64.urlsafe_b64encode(s.encode()).decode().rstrip("=") for s in secrets_}

    # storage: a positive control (the current hash is there) proves each dump is read
    if settings.is_sqlite:
        stored = {**stored_while_running, **sqlite_files(settings)}
        assert any(name.endswith("-wal") for name in stored_while_running)
        for name, content in stored.items():
            for needle in needles:
                assert needle.encode() not in content, f"{needle!r} in {name}"
        assert any(hashes[1].encode() in content for content in stored.values())
    else:
        dump = await postgres_rows(settings)
        for needle in needles:
            assert needle not in dump
        assert hashes[1] in dump
        if settings.redis_url:
            # the throttle's counters, keyed by digests (no positive control: a Redis shared
            # with other test runs may have been flushed since)
            contents = await redis_contents(settings.redis_url)
            for needle in needles:
                assert needle not in contents

    # logs: every record, with its extra fields (what the key=value formatter prints)
    records = all_logs.records
    assert any(
        r.name == "fhirgate.token" and r.getMessage().startswith("token issued ") for r in records
    )
    assert any(r.name == "uvicorn.access" for r in records)
    for record in records:
        text = f"{record.getMessage()} {vars(record)!r}"
        for needle in needles:
            assert needle not in text, f"{needle!r} logged by {record.name}"

    # the CLI shows clients without their secrets or hashes
    shown = (
        await asyncio.to_thread(invoke, settings, "clients", "show", basic_id, "--json")
    ).stdout
    listed = (await asyncio.to_thread(invoke, settings, "clients", "list", "--json")).stdout
    text_shown = (await asyncio.to_thread(invoke, settings, "clients", "show", basic_id)).stdout
    assert json.loads(shown)["client_id"] == basic_id
    assert {c["client_id"] for c in json.loads(listed)} == {basic_id, post_id}
    for output in (shown, listed, text_shown):
        assert "secret_hash" not in output
        for value in [*needles, *hashes]:
            assert value not in output
