"""STU3 at /stu3 and DSTU2 at /dstu2: separate stores with their own fhirVersion, resource
types and validation, under the same authorization as R4."""

from __future__ import annotations

import pytest
from fhir.resources.STU3.capabilitystatement import CapabilityStatement as Stu3Statement

from tests.delegation.support import register_application
from tests.fhir.support import system_headers
from tests.support import Running


@pytest.mark.parametrize(
    ("base", "kind", "number"),
    [("/stu3", "CapabilityStatement", "3.0.2"), ("/dstu2", "Conformance", "1.0.2")],
)
async def test_each_version_describes_itself(
    running: Running, base: str, kind: str, number: str
) -> None:
    statement = (await running.http.get(f"{base}/metadata")).json()
    assert statement["resourceType"] == kind and statement["fhirVersion"] == number
    types = {resource["type"] for resource in statement["rest"][0]["resource"]}
    assert ("MedicationOrder" in types) == (base == "/dstu2")
    if base == "/stu3":
        Stu3Statement.model_validate(statement)  # a valid STU3 resource


async def test_the_stores_are_separate(running: Running) -> None:
    headers = await system_headers(running)
    made = await running.http.post(
        "/stu3/Patient", json={"resourceType": "Patient"}, headers=headers
    )
    assert made.status_code == 201, made.text
    assert made.headers["location"].startswith("http://127.0.0.1:8000/stu3/Patient/")
    patient = made.json()["id"]
    assert (await running.http.get(f"/stu3/Patient/{patient}", headers=headers)).status_code == 200
    for other in ("/r4", "/dstu2"):
        assert (
            await running.http.get(f"{other}/Patient/{patient}", headers=headers)
        ).status_code == 404
    found = await running.http.get("/stu3/Patient", headers=headers)
    assert [entry["resource"]["id"] for entry in found.json()["entry"]] == [patient]
    assert (await running.http.get("/r4/Patient", headers=headers)).json()["total"] == 0


async def test_resource_types_and_validation_follow_the_version(running: Running) -> None:
    headers = await system_headers(running)
    order = {"resourceType": "MedicationOrder", "status": "active"}
    assert (
        await running.http.post("/dstu2/MedicationOrder", json=order, headers=headers)
    ).status_code == 201
    assert (
        await running.http.post("/r4/MedicationOrder", json=order, headers=headers)
    ).status_code == 404
    request = {"resourceType": "MedicationRequest", "status": "active", "intent": "order"}
    assert (
        await running.http.post("/dstu2/MedicationRequest", json=request, headers=headers)
    ).status_code == 404
    bad = {"resourceType": "Patient", "birthDate": "not a date"}
    answer = await running.http.post("/stu3/Patient", json=bad, headers=headers)
    assert answer.status_code == 400
    assert answer.json()["issue"][0]["expression"] == ["Patient.birthDate"]


async def test_partitions_hold_in_every_version(running: Running) -> None:
    app = await register_application(running.services, running.http)
    alice, bob = await app.user_tokens("alice"), await app.user_tokens("bob")
    as_alice = {"Authorization": f"Bearer {alice['access_token']}"}
    as_bob = {"Authorization": f"Bearer {bob['access_token']}"}
    for base in ("/stu3", "/dstu2"):
        made = await running.http.post(
            f"{base}/Patient", json={"resourceType": "Patient"}, headers=as_alice
        )
        patient = made.json()["id"]
        assert (
            await running.http.get(f"{base}/Patient/{patient}", headers=as_bob)
        ).status_code == 404
        assert (
            await running.http.get(f"{base}/Patient/{patient}", headers=as_alice)
        ).status_code == 200
