"""Unauthenticated traffic cannot flood the audit (issue 15, item 11): requests the resource
guard refuses for want of a valid credential are throttled per source address
(``FHIRGATE_BEARER_FAILURE_LIMIT`` a minute, then 429 with ``Retry-After``) and audited as one
``bearer.refused`` row per address and minute with the count, on every backend; a valid
credential from a throttled address is still served."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import httpx
import pytest
from sqlalchemy import func, select
from tests.fhir.support import FHIR, bearer, system_headers
from tests.fhir.test_audit import rows
from tests.support import BASE, Running, pin_window, register_secret_client, start

from fhirgate.config import Settings
from fhirgate.storage.models import AuditEventRow

LIMIT = 60  # the default FHIRGATE_BEARER_FAILURE_LIMIT
BAD = bearer("eyJhbGciOiJFUzI1NiJ9.e30.c2ln")


@contextlib.asynccontextmanager
async def from_address(running: Running, address: str) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client whose requests come from ``address``."""
    transport = httpx.ASGITransport(app=running.app, client=(address, 40_000))
    async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
        yield client


def pin(running: Running) -> None:
    """No minute boundary restarts the counts halfway through a test."""
    pin_window(running.services.bearer_failures)
    pin_window(running.services.audit)


async def all_rows(running: Running) -> int:
    async with running.services.engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(AuditEventRow))).one()[0])


async def test_400_bad_tokens_cost_one_audit_row_and_are_throttled_past_the_limit(
    server: Running,
) -> None:
    pin(server)
    before = await all_rows(server)
    statuses = []
    async with from_address(server, "203.0.113.7") as attacker:
        for _ in range(400):
            response = await attacker.get(f"{FHIR}/Patient", headers=BAD)
            statuses.append(response.status_code)
            assert response.json()["resourceType"] == "OperationOutcome"
        last = response
    assert statuses[:LIMIT] == [401] * LIMIT
    assert statuses[LIMIT:] == [429] * (400 - LIMIT)
    assert last.json()["issue"][0]["code"] == "throttled"
    assert 0 < int(last.headers["retry-after"]) <= 60
    assert last.headers["www-authenticate"] == 'Bearer realm="fhirgate"'
    await server.services.audit.flush()  # the minute has not ended: nothing yet
    assert await all_rows(server) == before
    await server.services.audit.flush(final=True)
    (row,) = await rows(server, event="bearer.refused")
    assert row.source == "203.0.113.7" and row.client_id is None
    assert row.detail.startswith(f"count=400 401={LIMIT} 429={400 - LIMIT} minute=")
    assert await all_rows(server) == before + 1
    assert (await server.services.audit.verify()).intact


async def test_a_throttled_address_is_still_served_with_a_valid_token(server: Running) -> None:
    pin(server)
    headers = await system_headers(server, scope="system/*.rs")
    async with from_address(server, "198.51.100.4") as shared:
        for _ in range(LIMIT + 1):
            await shared.get(f"{FHIR}/Patient", headers=BAD)
        assert (await shared.get(f"{FHIR}/Patient", headers=BAD)).status_code == 429
        assert (await shared.get(f"{FHIR}/Patient")).status_code == 429  # no token at all
        served = await shared.get(f"{FHIR}/Patient", headers=headers)
        assert served.status_code == 200, served.text
    async with from_address(server, "198.51.100.5") as neighbour:
        assert (await neighbour.get(f"{FHIR}/Patient", headers=BAD)).status_code == 401


async def test_every_refusal_without_a_credential_is_tallied_not_rowed(server: Running) -> None:
    """Missing, malformed, bad and wrong client headers — by address; the Platform API and
    ``/whoami`` share the guard and its tally."""
    pin(server)
    client_id, _ = await register_secret_client(server.services, "client_secret_post")
    async with from_address(server, "192.0.2.10") as caller:
        refusals = [
            await caller.get(f"{FHIR}/Patient"),
            await caller.get(f"{FHIR}/Patient", headers={"Authorization": "Basic eA=="}),
            await caller.get(f"{FHIR}/Patient", headers=bearer("opaque-but-unknown")),
            await caller.get(
                f"{FHIR}/Patient", headers={"client_id": client_id, "client_secret": "wrong"}
            ),
            await caller.get("/whoami", headers=BAD),
            await caller.get("/platform/v1/environments", headers=BAD),
        ]
    assert [r.status_code for r in refusals] == [401] * 6, [r.text for r in refusals]
    assert not [row for row in await rows(server) if row.event.startswith("fhir.")], (
        "a refusal without a credential wrote a row of its own"
    )
    await server.services.audit.flush(final=True)
    (row,) = await rows(server, event="bearer.refused", source="192.0.2.10")
    assert row.detail.startswith("count=6 401=6 minute=")


async def test_the_limit_is_shared_by_replicas_through_redis(
    backend_settings: Settings,
) -> None:
    """With Redis the second replica learns of the block at its own next failure, then
    refuses; without it, each replica counts its own (the second has its whole limit)."""
    shared = backend_settings.redis_url is not None
    first, first_stack = await start(backend_settings)
    second, second_stack = await start(backend_settings)
    try:
        pin(first)
        pin(second)
        async with from_address(first, "203.0.113.50") as a:
            for _ in range(LIMIT):
                assert (await a.get(f"{FHIR}/Patient", headers=BAD)).status_code == 401
        async with from_address(second, "203.0.113.50") as b:
            statuses = [(await b.get(f"{FHIR}/Patient", headers=BAD)).status_code for _ in "12"]
        assert statuses == ([401, 429] if shared else [401, 401])
    finally:
        await second_stack.aclose()
        await first_stack.aclose()


@pytest.fixture
def settings(sqlite_settings: Settings) -> Settings:
    return sqlite_settings.model_copy(update={"bearer_failure_limit": 0})


async def test_a_limit_of_zero_throttles_nothing_and_still_tallies(running: Running) -> None:
    pin(running)
    for _ in range(LIMIT * 2):
        assert (await running.http.get(f"{FHIR}/Patient", headers=BAD)).status_code == 401
    await running.services.audit.flush(final=True)
    (row,) = await rows(running, event="bearer.refused")
    assert row.detail.startswith(f"count={LIMIT * 2} 401={LIMIT * 2} minute=")


async def test_tallies_are_bounded_and_an_ended_minute_is_written_by_the_next_flush(
    running: Running,
) -> None:
    audit = running.services.audit
    audit.MAX_TALLIED = 3
    minute = 29_000_000 * 60  # a fixed minute, long ago: 2025-02-19T21:20:00Z
    audit._clock = lambda: minute + 1
    for address in ("a", "b", "c", "d", "e", "d"):
        audit.tally("bearer.refused", address, 401)
    assert await audit.flush() == 0  # the minute has not ended
    audit._clock = lambda: minute + 61
    assert await audit.flush() == 4
    found = {row.source: row.detail for row in await rows(running, event="bearer.refused")}
    assert set(found) == {"a", "b", "c", "*"}
    assert found["*"].startswith("count=3 401=3 minute=")  # d, e, d: nothing goes uncounted
    assert all(detail.endswith(" minute=2025-02-19T21:20:00Z") for detail in found.values())
