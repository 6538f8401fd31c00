"""The per-process client cache: expiry, negative entries, single flight, forget."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from fhirgate.config import Settings
from fhirgate.domain.clients import Client
from fhirgate.oauth.clients import ClientDirectory
from fhirgate.services import Services
from fhirgate.storage.db import upgrade_async
from fhirgate.storage.repos import ClientRepo


class CountingRepo(ClientRepo):
    """The real repository, counting lookups and optionally slowing them down."""

    lookups = 0
    delay = 0.0

    async def get(self, client_id: str) -> Client | None:
        self.lookups += 1
        await asyncio.sleep(self.delay)
        return await super().get(client_id)


@pytest.fixture
async def services(sqlite_settings: Settings) -> AsyncIterator[Services]:
    await upgrade_async(sqlite_settings.database_url)
    built = Services.build(sqlite_settings)
    yield built
    await built.aclose()


async def new_client(services: Services) -> str:
    env = await services.organizations.default_environment()
    created = await services.clients.create(
        environment=env, name="c", auth_method="private_key_jwt", scope="system/*.rs"
    )
    return created.client_id


async def test_concurrent_misses_share_one_lookup(services: Services) -> None:
    repo = CountingRepo(services.engine)
    repo.delay = 0.05
    directory = ClientDirectory(repo, ttl=5)
    client_id = await new_client(services)
    found = await asyncio.gather(*(directory.get(client_id) for _ in range(20)))
    assert repo.lookups == 1
    assert {entry.client.client_id for entry in found if entry} == {client_id}


async def test_entries_expire_after_the_ttl(services: Services) -> None:
    repo = CountingRepo(services.engine)
    directory = ClientDirectory(repo, ttl=0.05)
    client_id = await new_client(services)
    await directory.get(client_id)
    await directory.get(client_id)
    assert repo.lookups == 1
    await asyncio.sleep(0.06)
    await directory.get(client_id)
    assert repo.lookups == 2


async def test_unknown_ids_are_cached_too(services: Services) -> None:
    repo = CountingRepo(services.engine)
    directory = ClientDirectory(repo, ttl=5)
    assert await directory.get("nobody") is None
    assert await directory.get("nobody") is None
    assert repo.lookups == 1


async def test_a_change_forgotten_during_a_lookup_is_not_cached_stale(services: Services) -> None:
    repo = CountingRepo(services.engine)
    repo.delay = 0.05
    directory = ClientDirectory(repo, ttl=5)
    client_id = await new_client(services)
    pending = asyncio.ensure_future(directory.get(client_id))
    await asyncio.sleep(0.01)  # the lookup has started
    await services.clients.revoke(client_id)
    directory.forget(client_id)
    await pending
    entry = await directory.get(client_id)
    assert entry is not None and not entry.client.active
    assert repo.lookups == 2


async def test_a_failed_lookup_is_not_cached(services: Services) -> None:
    repo = CountingRepo(services.engine)
    directory = ClientDirectory(repo, ttl=5)
    client_id = await new_client(services)
    await services.engine.dispose()
    healthy = repo._engine
    from fhirgate.storage.db import create_engine

    repo._engine = create_engine("postgresql+asyncpg://nobody@127.0.0.1:1/none")
    with pytest.raises(OSError):
        await directory.get(client_id)
    await repo._engine.dispose()
    repo._engine = healthy
    assert (await directory.get(client_id)) is not None
