"""The resource store's sharing rule, on every backend: who sees and who writes each resource.

The rule (:class:`~fhirgate.fhir.store.Reach`) is rendered twice — as a SQLAlchemy condition
(history, ownership, writes) and as SQL text for the direct statements (reads, searches) — so
every read path is asked here and must agree with the table below.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from fhirgate.config import Settings
from fhirgate.domain.clients import AuthMethod
from fhirgate.fhir.search import parse_search
from fhirgate.fhir.store import Partition, Reach, ResourceStore
from fhirgate.services import Services
from fhirgate.storage.db import upgrade_async


@pytest.fixture
async def services(backend_settings: Settings) -> AsyncIterator[Services]:
    await upgrade_async(backend_settings.database_url)
    built = Services.build(backend_settings)
    try:
        yield built
    finally:
        await built.aclose()


async def test_each_reach_sees_and_writes_exactly_what_the_rule_says(services: Services) -> None:
    await services.organizations.create("acme", "Acme")
    env = await services.organizations.environment("acme", "development")
    other_env = await services.organizations.environment("acme", "staging")
    app, other_app = [
        await services.clients.create(
            environment=env, name=name, auth_method=AuthMethod.CLIENT_SECRET_BASIC, scope="user/*.*"
        )
        for name in ("app", "other")
    ]
    alice = await services.delegation.users.create(app.client_id, "alice")
    bob = await services.delegation.users.create(app.client_id, "bob")
    carol = await services.delegation.users.create(other_app.client_id, "carol")
    store: ResourceStore = services.fhir["R4"].store

    system = Partition(env.id)
    whole_app = Partition(env.id, app.client_id)
    as_alice = Partition(env.id, app.client_id, alice.oneup_user_id)
    as_bob = Partition(env.id, app.client_id, bob.oneup_user_id)
    as_carol = Partition(env.id, other_app.client_id, carol.oneup_user_id)
    elsewhere = Partition(other_env.id)
    assert [p.reach for p in (system, whole_app, as_alice)] == [
        Reach.ENVIRONMENT,
        Reach.APPLICATION,
        Reach.USER,
    ]

    async def patient(partition: Partition) -> str:
        return (await store.create(partition, "Patient", {"resourceType": "Patient"})).resource_id

    ids = {
        "system": await patient(system),
        "alice": await patient(as_alice),
        "shared": await patient(as_alice),
        "bob": await patient(as_bob),
        "carol": await patient(as_carol),
    }
    assert await store.share(as_alice, "Patient", ids["shared"], bob.oneup_user_id) == "shared"

    #: partition -> (the resources it reads, the resources it writes)
    expected = {
        "system": (set(ids), set(ids)),
        "whole_app": ({"alice", "shared", "bob"}, set()),
        "as_alice": ({"alice", "shared"}, {"alice", "shared"}),
        "as_bob": ({"bob", "shared"}, {"bob"}),
        "as_carol": ({"carol"}, {"carol"}),
        "elsewhere": (set(), set()),
    }
    partitions = {
        "system": system,
        "whole_app": whole_app,
        "as_alice": as_alice,
        "as_bob": as_bob,
        "as_carol": as_carol,
        "elsewhere": elsewhere,
    }
    for name, partition in partitions.items():
        reads, writes = expected[name]
        by_text = {key for key, rid in ids.items() if await store.read(partition, "Patient", rid)}
        by_expression = {
            key for key, rid in ids.items() if await store.history(partition, "Patient", rid)
        }
        writable = {key for key, rid in ids.items() if await store.owns(partition, "Patient", rid)}
        page, _, _ = await store.search(
            partition, "Patient", parse_search("Patient", [], lenient=False)
        )
        searched = {key for key, rid in ids.items() if rid in {r.resource_id for r in page}}
        assert (by_text, by_expression, searched, writable) == (reads, reads, reads, writes), name
