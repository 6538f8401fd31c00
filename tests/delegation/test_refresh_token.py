"""``grant_type=refresh_token`` for user grants (RFC 6749 §6, RFC 9700 §4.14): rotation, reuse
detection, concurrency, the family's absolute lifetime, scope narrowing, binding to the
application and storage of refresh tokens as hashes only."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import time
from typing import Any

import pytest
from sqlalchemy import func, select, update

from fhirgate.config import Settings
from fhirgate.services import Services
from fhirgate.storage.models import OpaqueTokenRow, UserGrantRow
from fhirgate.storage.opaque_tokens import REUSE_GRACE, hash_token
from tests.delegation.support import (
    Application,
    assert_oauth_error,
    claims_of,
    register_application,
    started,
    whoami,
)
from tests.support import Running

# --------------------------------------------------------------------------- helpers


async def refreshed(app: Application, refresh_token: str, **extra: str) -> dict[str, Any]:
    response = await app.refresh(refresh_token, **extra)
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body: dict[str, Any] = response.json()
    return body


async def live_refresh_tokens(services: Services, family_id: str) -> int:
    stmt = (
        select(func.count())
        .select_from(OpaqueTokenRow)
        .where(
            OpaqueTokenRow.family_id == family_id,
            OpaqueTokenRow.kind == "refresh",
            OpaqueTokenRow.consumed_at.is_(None),
            OpaqueTokenRow.revoked_at.is_(None),
        )
    )
    async with services.engine.connect() as conn:
        return int((await conn.execute(stmt)).scalar_one())


async def grant_expires_at(services: Services, grant_id: str) -> int:
    stmt = select(UserGrantRow.expires_at).where(UserGrantRow.grant_id == grant_id)
    async with services.engine.connect() as conn:
        return int((await conn.execute(stmt)).scalar_one())


async def refresh_expires_at(services: Services, refresh_token: str) -> int:
    stmt = select(OpaqueTokenRow.expires_at).where(
        OpaqueTokenRow.token_hash == hash_token(refresh_token)
    )
    async with services.engine.connect() as conn:
        return int((await conn.execute(stmt)).scalar_one())


# --------------------------------------------------------------------------- rotation


async def test_refresh_rotates_the_old_token_is_refused_and_the_new_one_works(
    running: Running,
) -> None:
    app = await register_application(running.services, running.http)
    first = await app.user_tokens("alice")
    second = await refreshed(app, first["refresh_token"])
    assert set(second) == {"access_token", "token_type", "expires_in", "refresh_token", "scope"}
    assert second["token_type"] == "Bearer"
    assert second["refresh_token"] != first["refresh_token"]
    assert second["access_token"] != first["access_token"]
    assert (await whoami(running.http, second["access_token"])).status_code == 200

    assert_oauth_error(await app.refresh(first["refresh_token"]), 400, "invalid_grant")

    third = await refreshed(app, second["refresh_token"])
    assert (await whoami(running.http, third["access_token"])).status_code == 200


async def test_reuse_after_the_grace_period_revokes_the_whole_family(running: Running) -> None:
    app = await register_application(running.services, running.http)
    first = await app.user_tokens("alice")
    second = await refreshed(app, first["refresh_token"])
    third = await refreshed(app, second["refresh_token"])
    # the first refresh token was spent more than REUSE_GRACE seconds ago
    async with running.services.engine.begin() as conn:
        await conn.execute(
            update(OpaqueTokenRow)
            .where(OpaqueTokenRow.token_hash == hash_token(first["refresh_token"]))
            .values(consumed_at=int(time.time()) - REUSE_GRACE - 5)
        )

    assert_oauth_error(await app.refresh(first["refresh_token"]), 400, "invalid_grant")

    assert_oauth_error(await app.refresh(third["refresh_token"]), 400, "invalid_grant")
    for tokens in (first, second, third):
        who = await whoami(running.http, tokens["access_token"])
        assert who.status_code == 401, who.text
        assert who.json()["error"] == "invalid_token"
    grant_id = claims_of(first["access_token"])["grant_id"]
    assert await live_refresh_tokens(running.services, grant_id) == 0


async def test_reuse_with_a_wider_scope_is_still_detected_and_revokes_the_family(
    running: Running,
) -> None:
    """A spent refresh token is reuse whatever ``scope`` it comes with: asking for more than it
    granted must not let a stolen token be presented without ending its family."""
    app = await register_application(running.services, running.http)
    first = await app.user_tokens("alice")
    second = await refreshed(app, first["refresh_token"])
    async with running.services.engine.begin() as conn:
        await conn.execute(
            update(OpaqueTokenRow)
            .where(OpaqueTokenRow.token_hash == hash_token(first["refresh_token"]))
            .values(consumed_at=int(time.time()) - REUSE_GRACE - 5)
        )

    reused = await app.refresh(first["refresh_token"], scope="user/*.* system/*.rs")
    assert_oauth_error(reused, 400, "invalid_grant")

    assert_oauth_error(await app.refresh(second["refresh_token"]), 400, "invalid_grant")
    who = await whoami(running.http, second["access_token"])
    assert who.status_code == 401, who.text


# --------------------------------------------------------------------------- concurrency


@pytest.mark.parametrize("backend_settings", ["sqlite", "postgres+redis"], indirect=True)
async def test_twenty_parallel_refreshes_with_one_token_yield_exactly_one_success(
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
        tokens = await first.user_tokens("alice")
        family_id = claims_of(tokens["access_token"])["grant_id"]

        responses = await asyncio.gather(
            *(apps[n % count].refresh(tokens["refresh_token"]) for n in range(20))
        )

        statuses = sorted(r.status_code for r in responses)
        assert statuses.count(200) == 1, statuses
        assert statuses.count(400) == 19, statuses
        assert all(r.json()["error"] == "invalid_grant" for r in responses if r.status_code != 200)
        assert await live_refresh_tokens(instances[0].services, family_id) == 1
        winner = next(r.json() for r in responses if r.status_code == 200)
        for instance in instances:
            assert (await whoami(instance.http, winner["access_token"])).status_code == 200


# --------------------------------------------------------------------------- absolute lifetime


async def test_tokens_never_outlive_the_grant_lifetime(sqlite_settings: Settings) -> None:
    async with started(sqlite_settings.model_copy(update={"grant_lifetime": 3600})) as running:
        app = await register_application(running.services, running.http)
        first = await app.user_tokens("alice", scope="user/*.* openid")
        grant_id = claims_of(first["access_token"])["grant_id"]
        grant_end = await grant_expires_at(running.services, grant_id)
        assert grant_end <= int(time.time()) + 3600
        second = await refreshed(app, first["refresh_token"])
        for tokens in (first, second):
            claims = claims_of(tokens["access_token"])
            assert claims["exp"] <= grant_end
            assert claims_of(tokens["id_token"])["exp"] <= grant_end
            assert tokens["expires_in"] <= 3600
            assert claims["iat"] + tokens["expires_in"] <= grant_end
            assert await refresh_expires_at(running.services, tokens["refresh_token"]) <= grant_end


async def test_refresh_after_the_grant_lifetime_is_invalid_grant_and_access_ends(
    running: Running,
) -> None:
    app = await register_application(running.services, running.http)
    tokens = await app.user_tokens("alice")
    grant_id = claims_of(tokens["access_token"])["grant_id"]
    assert (await whoami(running.http, tokens["access_token"])).status_code == 200
    async with running.services.engine.begin() as conn:
        await conn.execute(
            update(UserGrantRow)
            .where(UserGrantRow.grant_id == grant_id)
            .values(expires_at=int(time.time()) - 1)
        )

    assert_oauth_error(await app.refresh(tokens["refresh_token"]), 400, "invalid_grant")
    who = await whoami(running.http, tokens["access_token"])
    assert who.status_code == 401, who.text
    assert who.json()["error"] == "invalid_token"


# --------------------------------------------------------------------------- scope


async def test_refresh_with_a_narrower_scope_grants_that_scope(running: Running) -> None:
    app = await register_application(running.services, running.http)
    tokens = await app.user_tokens("alice")
    narrowed = await refreshed(app, tokens["refresh_token"], scope="user/Observation.rs")
    assert narrowed["scope"] == "user/Observation.rs"
    assert claims_of(narrowed["access_token"])["scope"] == "user/Observation.rs"


@pytest.mark.parametrize(
    ("original", "wider"),
    [
        ("user/*.*", "user/*.* system/*.rs"),
        ("user/*.*", "system/*.rs"),
        ("user/Observation.rs", "user/Patient.rs"),
        ("user/Observation.rs", "user/Observation.cruds"),
    ],
)
async def test_refresh_with_a_wider_scope_is_invalid_scope_and_keeps_the_token(
    running: Running, original: str, wider: str
) -> None:
    app = await register_application(running.services, running.http)
    tokens = await app.user_tokens("alice", scope=original)
    assert tokens["scope"] == original
    assert_oauth_error(
        await app.refresh(tokens["refresh_token"], scope=wider), 400, "invalid_scope"
    )
    again = await refreshed(app, tokens["refresh_token"])
    assert again["scope"] == original


async def test_refresh_without_scope_after_a_narrowed_one_gets_the_original_scope(
    running: Running,
) -> None:
    app = await register_application(running.services, running.http)
    tokens = await app.user_tokens("alice", scope="user/*.* openid")
    narrowed = await refreshed(app, tokens["refresh_token"], scope="user/Observation.rs")
    assert narrowed["scope"] == "user/Observation.rs"
    assert "id_token" not in narrowed
    full = await refreshed(app, narrowed["refresh_token"])
    assert full["scope"] == "user/*.* openid"
    assert claims_of(full["access_token"])["scope"] == "user/*.* openid"
    assert "id_token" in full


# --------------------------------------------------------------------------- binding


@pytest.mark.parametrize(
    "scope",
    [None, "user/Observation.rs", "user/*.* system/*.rs"],
    ids=["no-scope", "narrower-scope", "wider-scope"],
)
async def test_another_applications_refresh_token_is_invalid_grant_and_stays_usable(
    running: Running, scope: str | None
) -> None:
    """Whatever ``scope`` comes with it, a foreign token is ``invalid_grant`` (RFC 6749 §5.2:
    issued to another client), and nothing about it — its scope included — is revealed."""
    owner = await register_application(running.services, running.http)
    other = await register_application(running.services, running.http)
    tokens = await owner.user_tokens("alice")
    extra = {} if scope is None else {"scope": scope}
    assert_oauth_error(await other.refresh(tokens["refresh_token"], **extra), 400, "invalid_grant")
    again = await refreshed(owner, tokens["refresh_token"])
    assert (await whoami(running.http, again["access_token"])).status_code == 200
    assert (await whoami(running.http, tokens["access_token"])).status_code == 200


async def test_refresh_without_client_authentication_is_401_and_keeps_the_token(
    running: Running,
) -> None:
    app = await register_application(running.services, running.http)
    tokens = await app.user_tokens("alice")
    response = await running.http.post(
        "/oauth2/token",
        data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
    )
    assert_oauth_error(response, 401, "invalid_client")
    await refreshed(app, tokens["refresh_token"])


# --------------------------------------------------------------------------- storage


async def test_refresh_tokens_have_at_least_128_bits_and_only_their_hash_is_stored(
    running: Running,
) -> None:
    app = await register_application(running.services, running.http)
    first = await app.user_tokens("alice")
    second = await refreshed(app, first["refresh_token"])
    async with running.services.engine.connect() as conn:
        rows = (await conn.execute(select(OpaqueTokenRow))).all()
    stored = [tuple(str(value) for value in row) for row in rows]
    hashes = {row.token_hash for row in rows}
    for token in (first["refresh_token"], second["refresh_token"]):
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        assert len(raw) * 8 >= 128
        assert hashlib.sha256(token.encode()).hexdigest() in hashes
        assert all(token not in value for row in stored for value in row)
    assert len({first["refresh_token"], second["refresh_token"]}) == 2
