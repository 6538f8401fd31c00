"""Resources are validated before they are stored: every problem is named, nothing is written."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.fhir.support import system_headers
from tests.support import Running


async def _create(running: Running, body: dict[str, Any]) -> httpx.Response:
    headers = {**await system_headers(running), "Content-Type": "application/fhir+json"}
    return await running.http.post(f"/fhir/R4/{body['resourceType']}", json=body, headers=headers)


async def test_every_problem_is_named_with_its_path(running: Running) -> None:
    body = {
        "resourceType": "Patient",
        "birthDate": "1970-13-01",
        "name": [{"family": 7}],
        "favouriteColour": "blue",
    }
    response = await _create(running, body)
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("application/fhir+json")
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    paths = sorted(issue["expression"][0] for issue in outcome["issue"])
    assert paths == ["Patient.birthDate", "Patient.favouriteColour", "Patient.name[0].family"]
    assert all(issue["code"] == "structure" for issue in outcome["issue"])
    assert "pydantic" not in response.text  # no library internals or links


async def test_a_missing_required_element_is_refused(running: Running) -> None:
    response = await _create(running, {"resourceType": "Observation", "status": "final"})
    assert response.status_code == 400
    assert ["Observation.code"] in [issue["expression"] for issue in response.json()["issue"]]


async def test_a_refused_resource_is_not_stored(running: Running) -> None:
    headers = await system_headers(running)
    bad = {"resourceType": "Patient", "id": "kept-out", "birthDate": "not a date"}
    put = await running.http.put("/fhir/R4/Patient/kept-out", json=bad, headers=headers)
    assert put.status_code == 400
    read = await running.http.get("/fhir/R4/Patient/kept-out", headers=headers)
    assert read.status_code == 404


@pytest.mark.parametrize(
    "body",
    [
        {"resourceType": "Patient", "gender": "female", "birthDate": "1970"},
        {
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "valueQuantity": {"value": 72, "unit": "/min"},
        },
    ],
)
async def test_valid_resources_are_stored(running: Running, body: dict[str, Any]) -> None:
    response = await _create(running, body)
    assert response.status_code == 201, response.text
