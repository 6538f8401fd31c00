"""SMART v2 granular scopes (``?param=value``): reads and searches of the matching resources
only; never writes, history or included resources (fail closed). On every backend: the
restriction is SQL run by each."""

from __future__ import annotations

import pytest

from fhirgate.config import Settings
from tests.fhir.support import (
    bearer,
    create,
    patient,
    system_headers,
    token_for_secret_client,
)
from tests.support import Running, register_secret_client


@pytest.fixture
def settings(backend_settings: Settings) -> Settings:
    return backend_settings


async def restricted(running: Running, scope: str) -> dict[str, str]:
    client_id, secret = await register_secret_client(running.services, scope=scope)
    return bearer(await token_for_secret_client(running.http, client_id, secret, scope))


async def test_a_restricted_scope_reads_and_searches_only_what_matches(running: Running) -> None:
    system = await system_headers(running)
    female = (await create(running.http, system, patient(gender="female")))["id"]
    male = (await create(running.http, system, patient(gender="male")))["id"]
    headers = await restricted(running, "system/Patient.rs?gender=female")
    assert (
        await running.http.get(f"/fhir/R4/Patient/{female}", headers=headers)
    ).status_code == 200
    hidden = await running.http.get(f"/fhir/R4/Patient/{male}", headers=headers)
    missing = await running.http.get("/fhir/R4/Patient/no-such-patient", headers=headers)
    assert hidden.status_code == missing.status_code == 404  # as if it did not exist
    found = await running.http.get("/fhir/R4/Patient", headers=headers)
    assert [entry["resource"]["id"] for entry in found.json()["entry"]] == [female]
    asked = await running.http.get("/fhir/R4/Patient?gender=male", headers=headers)
    assert asked.json()["total"] == 0  # the restriction is added to every search


async def test_a_restricted_scope_grants_no_writes_or_history(running: Running) -> None:
    system = await system_headers(running)
    female = (await create(running.http, system, patient(gender="female")))["id"]
    headers = await restricted(running, "system/Patient.cruds?gender=female")
    for response in (
        await running.http.get(f"/fhir/R4/Patient/{female}/_history", headers=headers),
        await running.http.delete(f"/fhir/R4/Patient/{female}", headers=headers),
        await running.http.post("/fhir/R4/Patient", json=patient(gender="female"), headers=headers),
    ):
        assert response.status_code == 403
        assert 'error="insufficient_scope"' in response.headers["www-authenticate"]


async def test_a_restriction_that_cannot_be_evaluated_matches_nothing(running: Running) -> None:
    system = await system_headers(running)
    made = (await create(running.http, system, patient()))["id"]
    headers = await restricted(running, "system/Patient.rs?_security=R")
    assert (await running.http.get(f"/fhir/R4/Patient/{made}", headers=headers)).status_code == 404
    assert (await running.http.get("/fhir/R4/Patient", headers=headers)).json()["total"] == 0


async def test_a_restriction_that_names_no_resources_grants_none(running: Running) -> None:
    """``?_count=5`` restricts nothing it can match on: fail closed, not open."""
    system = await system_headers(running)
    someone = (await create(running.http, system, patient(gender="female")))["id"]
    headers = await restricted(running, "system/Patient.rs?_count=5")
    read = await running.http.get(f"/fhir/R4/Patient/{someone}", headers=headers)
    assert read.status_code == 404
    found = await running.http.get("/fhir/R4/Patient", headers=headers)
    assert found.status_code == 200
    assert found.json()["total"] == 0
