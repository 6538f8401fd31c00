"""One storage contract, run on every backend: SQLite, and PostgreSQL (+ Redis for TTL sets)."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError
from tests.support import (
    PG_URL,
    REDIS_URL,
    flush_redis,
    fresh_postgres_database,
    require_service,
)

from fhirgate.config import Settings
from fhirgate.domain.errors import Conflict, NotFound
from fhirgate.domain.stores import TTLSet, digest
from fhirgate.oauth.keys import Keyring, load_cipher
from fhirgate.services import Services
from fhirgate.storage.db import create_engine, sqlite_path, upgrade_async
from fhirgate.storage.direct import PostgresStatements, SqliteStatements, statements_for
from fhirgate.storage.server_keys import ServerKeyTable
from fhirgate.storage.sqlite_inline import checkpoint
from fhirgate.storage.ttl_sets import RedisTTLSet, SqlTTLSet


@pytest.fixture
async def services(backend_settings: Settings) -> AsyncIterator[Services]:
    await upgrade_async(backend_settings.database_url)
    built = Services.build(backend_settings)
    try:
        yield built
    finally:
        await built.aclose()


async def test_migrations_are_idempotent(backend_settings: Settings) -> None:
    await upgrade_async(backend_settings.database_url)
    await upgrade_async(backend_settings.database_url)


async def test_organization_has_three_environments(services: Services) -> None:
    await services.organizations.create("acme", "Acme Health")
    kinds = [
        (await services.organizations.environment("acme", k)).kind
        for k in ("development", "staging", "production")
    ]
    assert kinds == ["development", "staging", "production"]
    with pytest.raises(NotFound):
        await services.organizations.environment("acme", "qa")
    with pytest.raises(NotFound):
        await services.organizations.environment("nobody", "development")


async def test_organization_slug_is_unique_and_validated(services: Services) -> None:
    await services.organizations.create("acme", "Acme")
    with pytest.raises(Conflict):
        await services.organizations.create("acme", "Acme again")
    for bad in ("Acme", "-acme", "acme_health", "", "a" * 64):
        with pytest.raises(ValueError, match="slug"):
            await services.organizations.create(bad, "x")


async def test_default_environment_is_created_once_under_concurrency(services: Services) -> None:
    envs = await asyncio.gather(*(services.organizations.default_environment() for _ in range(5)))
    assert len({env.id for env in envs}) == 1


async def test_client_lifecycle(services: Services) -> None:
    env = await services.organizations.default_environment("staging")
    jwks = {"keys": [{"kty": "EC", "kid": "k"}]}
    created = await services.clients.create(
        environment=env,
        name="lab feed",
        auth_method="private_key_jwt",
        scope="system/*.rs",
        jwks=jwks,
        jwks_url="https://keys.example/jwks.json",
    )
    assert len(created.client_id) >= 22  # ≥ 128 bits, URL-safe
    assert created.client_id.replace("-", "").replace("_", "").isalnum()
    loaded = await services.clients.get(created.client_id)
    assert loaded == created
    assert loaded.environment.kind == "staging"
    await services.clients.rename(created.client_id, "lab feed v2")
    await services.clients.revoke(created.client_id)
    loaded = await services.clients.get(created.client_id)
    assert loaded is not None
    assert (loaded.name, loaded.status, loaded.active) == ("lab feed v2", "revoked", False)
    assert loaded.updated_at >= created.updated_at
    assert [c.client_id for c in await services.clients.list()] == [created.client_id]
    assert await services.clients.list("other-org") == []
    await services.clients.delete(created.client_id)
    assert await services.clients.get(created.client_id) is None
    with pytest.raises(NotFound):
        await services.clients.delete(created.client_id)
    with pytest.raises(NotFound):
        await services.clients.rename(created.client_id, "x")


async def test_client_ids_are_unique(services: Services) -> None:
    env = await services.organizations.default_environment()
    ids = {
        (
            await services.clients.create(
                environment=env, name="c", auth_method="private_key_jwt", scope="system/*.rs"
            )
        ).client_id
        for _ in range(20)
    }
    assert len(ids) == 20


@pytest.fixture(params=["sqlite", "postgresql", "redis"])
async def ttl_set(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[TTLSet]:
    """Each TTL-set implementation: the table on SQLite inline (embedded) and over asyncpg
    (PostgreSQL without Redis), and Redis."""
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path}/ttl.db"
        await upgrade_async(url)
        sqlite = SqliteStatements(sqlite_path(url))
        yield SqlTTLSet.used_jti(sqlite)
        await sqlite.aclose()
    elif request.param == "postgresql":
        url = await fresh_postgres_database(require_service(PG_URL, "PostgreSQL"))
        await upgrade_async(url)
        engine = create_engine(url)
        postgres = statements_for(engine)
        assert isinstance(postgres, PostgresStatements)
        yield SqlTTLSet.used_jti(postgres)
        await postgres.aclose()
        await engine.dispose()
    else:
        redis_url = require_service(REDIS_URL, "Redis")
        await flush_redis(redis_url)
        redis = Redis.from_url(redis_url)
        redis_set = RedisTTLSet(redis, "fhirgate:test:")
        yield redis_set
        await redis_set.aclose()
        await redis.aclose()


async def test_ttl_set_first_add_wins_under_concurrency(ttl_set: TTLSet) -> None:
    key = digest("client", "jti-1")
    results = await asyncio.gather(*(ttl_set.add(key, int(time.time()) + 60) for _ in range(25)))
    assert results.count(True) == 1
    assert await ttl_set.contains(key)
    assert not await ttl_set.contains(digest("client", "jti-2"))


async def test_ttl_set_entries_expire(ttl_set: TTLSet) -> None:
    await ttl_set.add("gone", int(time.time()) + 1)
    await ttl_set.add("kept", int(time.time()) + 600)
    await asyncio.sleep(2.1)
    assert not await ttl_set.contains("gone")
    assert await ttl_set.contains("kept")


async def test_ttl_set_purge_drops_only_expired_keys(ttl_set: TTLSet) -> None:
    await ttl_set.add("old", int(time.time()) - 5)
    await ttl_set.add("new", int(time.time()) + 600)
    purged = await ttl_set.purge()
    assert purged == (0 if isinstance(ttl_set, RedisTTLSet) else 1)  # Redis expires keys itself
    assert not await ttl_set.add("new", int(time.time()) + 600)
    assert await ttl_set.add("old", int(time.time()) + 600)


async def test_ttl_set_expired_entry_counts_as_absent_before_any_purge(ttl_set: TTLSet) -> None:
    await ttl_set.add("stale", int(time.time()) - 5)
    assert not await ttl_set.contains("stale")
    assert await ttl_set.add("stale", int(time.time()) + 600)
    assert not await ttl_set.add("stale", int(time.time()) + 600)


async def test_services_pick_the_ttl_set_of_their_backend(services: Services) -> None:
    expected: type[TTLSet] = RedisTTLSet if services.redis is not None else SqlTTLSet
    assert isinstance(services.used_jti, expected)
    assert isinstance(services.revoked, expected)


async def test_digest_separates_parts() -> None:
    assert digest("ab", "c") != digest("a", "bc")


async def test_server_keys_are_encrypted_at_rest_and_rotate(
    services: Services, backend_settings: Settings
) -> None:
    keyring = services.keyring
    await keyring.ensure()
    first = keyring.signer.kid
    id_token_kid = keyring.signer_for("RS256").kid
    from sqlalchemy import select

    from fhirgate.storage.models import ServerKeyRow

    async with services.engine.connect() as conn:
        blobs = (await conn.execute(select(ServerKeyRow.private_key))).scalars().all()
    assert len(blobs) == 2  # one ES256 key (access tokens), one RS256 key (id_tokens)
    assert all(b"PRIVATE" not in blob and len(blob) > 100 for blob in blobs)
    second = await keyring.add(retire_others=True)
    assert keyring.signer.kid == second != first
    assert keyring.signer_for("RS256").kid == id_token_kid  # rotating ES256 keeps the RS256 key
    published = {k["kid"] for k in keyring.jwks["keys"]}
    assert published == {first, second, id_token_kid}  # retired keys stay until tokens expire
    other = Keyring(ServerKeyTable(services.engine), load_cipher(backend_settings), publish_for=0)
    await other.reload()
    assert {k["kid"] for k in other.jwks["keys"]} == {second, id_token_kid}  # past its window


async def test_keyring_refuses_a_wrong_secret(
    services: Services, backend_settings: Settings
) -> None:
    await services.keyring.ensure()
    from fhirgate.oauth.keys import KeyCipher, SecretMismatch

    wrong = Keyring(ServerKeyTable(services.engine), KeyCipher(b"not the secret"), publish_for=360)
    with pytest.raises(SecretMismatch):
        await wrong.reload()


async def test_sqlite_purge_deletes_in_batches_until_none_expired(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/ttl.db"
    await upgrade_async(url)
    sqlite = SqliteStatements(sqlite_path(url))
    ttl_set = SqlTTLSet.used_jti(sqlite)
    expired = SqlTTLSet.PURGE_BATCH * 2 + 7
    for n in range(expired):
        await ttl_set.add(f"old-{n}", int(time.time()) - 5)
    await ttl_set.add("live", int(time.time()) + 600)
    assert await ttl_set.purge() == expired
    assert await ttl_set.contains("live")
    await sqlite.aclose()


async def test_sqlite_checkpoint_moves_writes_into_the_database_file(tmp_path: Path) -> None:
    """The inline connection never checkpoints; the background checkpoint does."""
    url = f"sqlite+aiosqlite:///{tmp_path}/ttl.db"
    await upgrade_async(url)
    sqlite = SqliteStatements(sqlite_path(url))
    await SqlTTLSet.used_jti(sqlite).add("k", int(time.time()) + 600)

    def rows_in_main_file() -> int:
        copy = tmp_path / "copy.db"
        copy.write_bytes((tmp_path / "ttl.db").read_bytes())  # the file alone, without its WAL
        with contextlib.closing(sqlite3.connect(copy)) as db:
            return int(db.execute("SELECT count(*) FROM used_jti").fetchone()[0])

    assert rows_in_main_file() == 0
    checkpoint(sqlite_path(url))
    assert rows_in_main_file() == 1
    await sqlite.aclose()


async def test_redis_set_survives_connections_redis_ends() -> None:
    """The set's own connections (storage/lease.py): when Redis ends them, a command fails at
    most once (a storage fault: 503 upstream, never a wrong answer) and the next ones reconnect."""
    redis_url = require_service(REDIS_URL, "Redis")
    await flush_redis(redis_url)
    admin = Redis.from_url(redis_url)
    redis_set = RedisTTLSet(admin, "fhirgate:test:")
    try:
        assert await redis_set.add("k", int(time.time()) + 60)
        await admin.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
        outcomes = []
        for _ in range(3):
            try:
                outcomes.append(await redis_set.contains("k"))
            except (RedisError, OSError) as exc:
                outcomes.append(type(exc).__name__)
        assert outcomes[-2:] == [True, True], outcomes
        assert outcomes[0] in (True, "ConnectionError"), outcomes
        many = await asyncio.gather(*(redis_set.contains("k") for _ in range(40)))
        assert many == [True] * 40  # more callers than connections: they wait their turn
    finally:
        await redis_set.aclose()
        await admin.aclose()
