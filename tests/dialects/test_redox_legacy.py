"""Redox legacy API keys: ``POST /auth/authenticate`` and ``POST /auth/refreshToken`` over the
real app, on every storage backend (SQLite; PostgreSQL; PostgreSQL + Redis)."""

from __future__ import annotations

import asyncio
import re
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text
from tests.support import Running, pin_window, register_secret_client, start

from fhirgate.config import Settings
from fhirgate.storage.db import sqlite_path
from fhirgate.storage.opaque_tokens import REUSE_GRACE, hash_token

AUTHENTICATE = "/auth/authenticate"
REFRESH = "/auth/refreshToken"
AUTH_FAILED = b"Invalid source secret"
REFRESH_FAILED = b"Invalid refresh token"
PAIR_KEYS = {"accessToken", "expires", "refreshToken"}
EXPIRES_SHAPE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.000Z")
DAY = 86_400


async def legacy_client(server: Running) -> tuple[str, str]:
    return await register_secret_client(server.services, "legacy_api_key")


async def authenticate(http: httpx.AsyncClient, api_key: str, secret: str) -> httpx.Response:
    return await http.post(AUTHENTICATE, json={"apiKey": api_key, "secret": secret})


async def refresh(http: httpx.AsyncClient, api_key: str, token: str) -> httpx.Response:
    return await http.post(REFRESH, json={"apiKey": api_key, "refreshToken": token})


async def pair(http: httpx.AsyncClient, api_key: str, secret: str) -> dict[str, str]:
    response = await authenticate(http, api_key, secret)
    assert response.status_code == 200, response.text
    body: dict[str, str] = response.json()
    return body


async def whoami(http: httpx.AsyncClient, token: str) -> httpx.Response:
    return await http.get("/whoami", headers={"Authorization": f"Bearer {token}"})


def assert_invalid_token(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    assert response.json()["error"] == "invalid_token"
    assert 'error="invalid_token"' in response.headers["www-authenticate"]


def assert_plain_401(response: httpx.Response, text_: bytes) -> None:
    assert response.status_code == 401, response.text
    assert response.content == text_
    assert response.headers["content-type"].startswith("text/plain")
    assert response.headers["cache-control"] == "no-store"


# --------------------------------------------------------------------------- 1. authenticate


async def test_authenticate_issues_a_24_hour_pair_whose_access_token_works_on_whoami(
    server: Running,
) -> None:
    api_key, secret = await legacy_client(server)
    before = time.time()
    response = await authenticate(server.http, api_key, secret)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert set(body) == PAIR_KEYS
    assert EXPIRES_SHAPE.fullmatch(body["expires"]), body["expires"]
    expires = datetime.fromisoformat(body["expires"]).timestamp()
    assert abs(expires - (before + DAY)) <= 60, (body["expires"], before)
    assert len(body["accessToken"]) >= 43 and len(body["refreshToken"]) >= 43
    assert body["accessToken"] != body["refreshToken"]
    assert "." not in body["accessToken"]  # opaque, not a JWT

    me = await whoami(server.http, body["accessToken"])
    assert me.status_code == 200, me.text
    assert me.json()["client_id"] == api_key
    assert me.json()["sub"] == api_key
    assert me.json()["scope"] == "system/*.rs"
    assert abs(me.json()["exp"] - expires) <= 1

    token = body["accessToken"]
    for tampered in (
        token[:-1] + ("A" if token[-1] != "A" else "B"),
        token[:10] + ("x" if token[10] != "x" else "y") + token[11:],
        token + "A",
    ):
        assert_invalid_token(await whoami(server.http, tampered))


async def test_every_authenticate_failure_is_the_same_401_text(server: Running) -> None:
    api_key, secret = await legacy_client(server)
    basic_id, basic_secret = await register_secret_client(server.services, "client_secret_basic")
    revoked_key, revoked_secret = await legacy_client(server)
    assert (await authenticate(server.http, revoked_key, revoked_secret)).status_code == 200
    await server.services.clients.revoke(revoked_key)
    server.services.directory.forget(revoked_key)

    attempts = {
        "wrong secret": (api_key, secret[:-1] + ("A" if secret[-1] != "A" else "B")),
        "unknown apiKey": ("no-such-api-key", secret),
        "client_secret_basic client": (basic_id, basic_secret),
        "revoked legacy client": (revoked_key, revoked_secret),
    }
    answers = {}
    for case, (key, value) in attempts.items():
        response = await authenticate(server.http, key, value)
        assert_plain_401(response, AUTH_FAILED)
        answers[case] = (response.status_code, response.content, dict(response.headers))
    assert len(set(map(repr, answers.values()))) == 1, answers
    # The right credentials still work: the failures above were about the credentials.
    assert (await authenticate(server.http, api_key, secret)).status_code == 200


MALFORMED: list[tuple[str, bytes]] = [
    ("not JSON", b"apiKey=a&secret=b"),
    ("truncated JSON", b'{"apiKey": "a", "secret": '),
    ("JSON array", b'["a", "b"]'),
    ("JSON string", b'"a"'),
    ("missing field", b'{"apiKey": "a"}'),
    ("non-string field", b'{"apiKey": "a", "%s": 12345}'),
    ("null field", b'{"apiKey": null, "%s": "b"}'),
    ("empty string", b'{"apiKey": "", "%s": "b"}'),
    ("empty body", b""),
    ("invalid UTF-8", b'{"apiKey": "\xff", "%s": "b"}'),
    ("nested too deep", b"[" * 20_000),
    ("integer beyond Python's 4,300 digits", b'{"apiKey": ' + b"1" * 5000 + b', "%s": "b"}'),
]


async def test_malformed_bodies_get_400_text_plain_on_both_endpoints(server: Running) -> None:
    api_key, secret = await legacy_client(server)
    for path, field in ((AUTHENTICATE, b"secret"), (REFRESH, b"refreshToken")):
        for case, raw in MALFORMED:
            body = raw.replace(b"%s", field)
            response = await server.http.post(
                path, content=body, headers={"Content-Type": "application/json"}
            )
            assert response.status_code == 400, (path, case, response.text)
            assert response.headers["content-type"].startswith("text/plain"), (path, case)
            assert "accessToken" not in response.text
    # No malformed body counted as a credential failure: the real credentials still work.
    assert (await authenticate(server.http, api_key, secret)).status_code == 200


async def test_authenticate_failures_are_throttled_with_429_and_retry_after(
    backend_settings: Settings,
) -> None:
    """``auth_failure_limit`` = 2: two wrong secrets are evaluated (401); the second reaches
    the limit, so the third attempt from that address is refused (429) unevaluated."""
    settings = backend_settings.model_copy(update={"auth_failure_limit": 2})
    running, stack = await start(settings)
    pin_window(running.services.authenticator._limiter)
    try:
        api_key, secret = await legacy_client(running)
        statuses = [
            (await authenticate(running.http, api_key, "wrong")).status_code for _ in range(4)
        ]
        assert statuses == [401, 401, 429, 429], statuses
        blocked = await authenticate(running.http, api_key, secret)  # even the right secret
        assert blocked.status_code == 429, blocked.text
        assert int(blocked.headers["retry-after"]) > 0
        assert blocked.headers["content-type"].startswith("text/plain")
    finally:
        await stack.aclose()


# --------------------------------------------------------------------------- 3. refresh


async def test_refresh_rotates_and_reuse_of_the_spent_token_revokes_the_family(
    server: Running,
) -> None:
    api_key, secret = await legacy_client(server)
    first = await pair(server.http, api_key, secret)

    rotated = await refresh(server.http, api_key, first["refreshToken"])
    assert rotated.status_code == 200, rotated.text
    assert rotated.headers["cache-control"] == "no-store"
    second = rotated.json()
    assert set(second) == PAIR_KEYS
    assert EXPIRES_SHAPE.fullmatch(second["expires"])
    assert second["accessToken"] not in (first["accessToken"], first["refreshToken"])
    assert second["refreshToken"] not in (first["accessToken"], first["refreshToken"])
    assert (await whoami(server.http, second["accessToken"])).status_code == 200

    # Past the grace period, presenting the spent refresh token is reuse (it was stolen):
    # refused, and its whole family is revoked — the new pair included.
    await asyncio.sleep(REUSE_GRACE + 1.1)
    assert (await whoami(server.http, second["accessToken"])).status_code == 200
    assert_plain_401(await refresh(server.http, api_key, first["refreshToken"]), REFRESH_FAILED)
    assert_invalid_token(await whoami(server.http, second["accessToken"]))
    assert_invalid_token(await whoami(server.http, first["accessToken"]))
    assert_plain_401(await refresh(server.http, api_key, second["refreshToken"]), REFRESH_FAILED)

    # Other families of the same client are untouched; a fresh authenticate still works.
    third = await pair(server.http, api_key, secret)
    assert (await whoami(server.http, third["accessToken"])).status_code == 200


async def test_a_retry_within_the_grace_period_is_refused_but_the_family_lives(
    server: Running,
) -> None:
    api_key, secret = await legacy_client(server)
    first = await pair(server.http, api_key, secret)
    rotated = await refresh(server.http, api_key, first["refreshToken"])
    assert rotated.status_code == 200, rotated.text
    second = rotated.json()

    # The same client retrying at once (a lost response, a duplicate request): refused, and
    # nothing revoked — however often it retries.
    for _ in range(3):
        retry = await refresh(server.http, api_key, first["refreshToken"])
        assert_plain_401(retry, REFRESH_FAILED)
    assert (await whoami(server.http, first["accessToken"])).status_code == 200
    me = await whoami(server.http, second["accessToken"])
    assert me.status_code == 200, me.text
    assert me.json()["client_id"] == api_key
    third = await refresh(server.http, api_key, second["refreshToken"])
    assert third.status_code == 200, third.text
    assert (await whoami(server.http, third.json()["accessToken"])).status_code == 200


async def test_refresh_token_of_another_client_or_under_another_key_is_refused(
    server: Running,
) -> None:
    mine_key, mine_secret = await legacy_client(server)
    theirs_key, theirs_secret = await legacy_client(server)
    basic_id, _ = await register_secret_client(server.services, "client_secret_basic")
    theirs = await pair(server.http, theirs_key, theirs_secret)
    mine = await pair(server.http, mine_key, mine_secret)

    assert_plain_401(await refresh(server.http, mine_key, theirs["refreshToken"]), REFRESH_FAILED)
    assert_plain_401(await refresh(server.http, basic_id, theirs["refreshToken"]), REFRESH_FAILED)
    assert_plain_401(await refresh(server.http, "unknown", theirs["refreshToken"]), REFRESH_FAILED)
    assert_plain_401(await refresh(server.http, mine_key, "x" * 43), REFRESH_FAILED)
    assert_plain_401(await refresh(server.http, mine_key, mine["accessToken"]), REFRESH_FAILED)
    assert_plain_401(await refresh(server.http, mine_key, "x" * 600), REFRESH_FAILED)

    # Those refusals neither spent nor revoked anything of theirs (nor of mine).
    assert (await whoami(server.http, theirs["accessToken"])).status_code == 200
    assert (await whoami(server.http, mine["accessToken"])).status_code == 200
    assert (await refresh(server.http, theirs_key, theirs["refreshToken"])).status_code == 200
    assert (await refresh(server.http, mine_key, mine["refreshToken"])).status_code == 200


async def test_refresh_of_a_revoked_legacy_client_is_refused(server: Running) -> None:
    api_key, secret = await legacy_client(server)
    issued = await pair(server.http, api_key, secret)
    await server.services.clients.revoke(api_key)
    server.services.directory.forget(api_key)
    assert_plain_401(await refresh(server.http, api_key, issued["refreshToken"]), REFRESH_FAILED)
    assert_invalid_token(await whoami(server.http, issued["accessToken"]))


async def test_refresh_token_is_not_a_bearer_token(server: Running) -> None:
    api_key, secret = await legacy_client(server)
    issued = await pair(server.http, api_key, secret)
    assert_invalid_token(await whoami(server.http, issued["refreshToken"]))
    # ... and that attempt did not spend it.
    assert (await refresh(server.http, api_key, issued["refreshToken"])).status_code == 200


# --------------------------------------------------------------------------- 4. concurrency


def no_throttle(settings: Settings) -> Settings:
    """``auth_failure_limit=0`` disables the failure throttle: the 49 losing refreshes are
    credential failures from one address and would otherwise turn into 429s past the limit,
    which would hide whether they lost the race or were merely throttled."""
    return settings.model_copy(update={"auth_failure_limit": 0})


def assert_exactly_one_winner(responses: list[httpx.Response]) -> httpx.Response:
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(200) == 1, statuses
    assert statuses.count(401) == len(responses) - 1, statuses
    assert all(r.content == REFRESH_FAILED for r in responses if r.status_code == 401)
    (winner,) = [r for r in responses if r.status_code == 200]
    return winner


async def assert_winner_pair_works(
    http: httpx.AsyncClient, api_key: str, winner: httpx.Response
) -> None:
    """The losers were refused within the grace period: nothing was revoked, so the winner's
    new pair works — its access token on /whoami, its refresh token for the next rotation."""
    won = winner.json()
    assert set(won) == PAIR_KEYS
    me = await whoami(http, won["accessToken"])
    assert me.status_code == 200, me.text
    assert me.json()["client_id"] == api_key
    following = await refresh(http, api_key, won["refreshToken"])
    assert following.status_code == 200, following.text
    assert (await whoami(http, following.json()["accessToken"])).status_code == 200


async def test_fifty_parallel_refreshes_on_one_instance_have_exactly_one_winner(
    backend_settings: Settings,
) -> None:
    running, stack = await start(no_throttle(backend_settings))
    try:
        api_key, secret = await legacy_client(running)
        token = (await pair(running.http, api_key, secret))["refreshToken"]
        responses = await asyncio.gather(
            *(refresh(running.http, api_key, token) for _ in range(50))
        )
        winner = assert_exactly_one_winner(list(responses))
        await assert_winner_pair_works(running.http, api_key, winner)
    finally:
        await stack.aclose()


async def test_fifty_parallel_refreshes_over_two_instances_have_exactly_one_winner(
    backend_settings: Settings,
) -> None:
    settings = no_throttle(backend_settings)
    first, first_stack = await start(settings)
    second, second_stack = await start(settings)
    try:
        api_key, secret = await legacy_client(first)
        token = (await pair(first.http, api_key, secret))["refreshToken"]
        instances = [first.http, second.http]
        responses = await asyncio.gather(
            *(refresh(instances[i % 2], api_key, token) for i in range(50))
        )
        winner = assert_exactly_one_winner(list(responses))
        # Whichever instance the winner hit, the other one honours its new pair.
        won_at = next(i for i, response in enumerate(responses) if response is winner)
        other = instances[(won_at + 1) % 2]
        await assert_winner_pair_works(other, api_key, winner)
    finally:
        await first_stack.aclose()
        await second_stack.aclose()


# --------------------------------------------------------------------------- 5. storage


async def stored_text(server: Running, settings: Settings) -> bytes:
    """Everything the deployment's storage holds, as bytes to search."""
    if settings.is_sqlite:
        database = Path(sqlite_path(settings.database_url))
        roots = (database.parent, Path(settings.var_dir))
        files = sorted({p for root in roots for p in root.rglob("*") if p.is_file()})
        names = {p.name for p in files}
        assert database.name in names and f"{database.name}-wal" in names, names
        return b"\n".join(p.read_bytes() for p in files)
    chunks: list[bytes] = []
    async with server.services.engine.connect() as conn:
        tables = (
            await conn.execute(
                text("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
            )
        ).scalars()
        for table in list(tables):
            rows = await conn.execute(text(f'SELECT CAST(t AS TEXT) FROM "{table}" t'))  # noqa: S608
            chunks.extend(str(row[0]).encode() for row in rows)
    assert any(b"legacy_api_key" in chunk for chunk in chunks)  # the clients table was read
    if server.services.redis is not None:
        redis: Any = server.services.redis
        async for key in redis.scan_iter():
            chunks.append(key)
            if await redis.type(key) == b"string":
                chunks.append(await redis.get(key) or b"")
    return b"\n".join(chunks)


async def test_plaintext_tokens_are_never_stored(
    server: Running, backend_settings: Settings
) -> None:
    api_key, secret = await legacy_client(server)
    first = await pair(server.http, api_key, secret)
    rotated = await refresh(server.http, api_key, first["refreshToken"])
    assert rotated.status_code == 200, rotated.text
    second = rotated.json()
    tokens = [first["accessToken"], first["refreshToken"]]
    tokens += [second["accessToken"], second["refreshToken"]]
    await server.services.audit.flush()

    stored = await stored_text(server, backend_settings)
    for token in tokens:
        assert token.encode() not in stored
        # The search looked where the tokens live: their SHA-256 hashes are there.
        assert hash_token(token).encode() in stored
    assert secret.encode() not in stored


# --------------------------------------------------------------------------- 6. switched off


async def test_legacy_routes_are_absent_when_legacy_api_keys_is_off(
    sqlite_settings: Settings,
) -> None:
    running, stack = await start(sqlite_settings.model_copy(update={"legacy_api_keys": False}))
    try:
        api_key, secret = await legacy_client(running)
        for path, body in (
            (AUTHENTICATE, {"apiKey": api_key, "secret": secret}),
            (REFRESH, {"apiKey": api_key, "refreshToken": "x" * 43}),
        ):
            response = await running.http.post(path, json=body)
            assert response.status_code in (404, 405), (path, response.status_code)
            assert "accessToken" not in response.text
    finally:
        await stack.aclose()
