"""Resources are validated before they are stored: every problem is named, nothing is written."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from fhirgate.domain.resource_types import R4_RESOURCE_TYPES
from fhirgate.fhir import definitions
from fhirgate.fhir.errors import Problem
from fhirgate.fhir.validation import definition_problems, validate
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


# --------------------------------------------------------------------------- required bindings


def _issues(response: httpx.Response) -> list[tuple[str, str]]:
    """``(expression, code)`` of every issue of a 400 OperationOutcome."""
    assert response.status_code == 400, response.text
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    return [(issue["expression"][0], issue["code"]) for issue in outcome["issue"]]


@pytest.mark.parametrize(
    ("body", "expression"),
    [
        (
            {"resourceType": "Observation", "status": "not-a-status", "code": {"text": "x"}},
            "Observation.status",
        ),
        ({"resourceType": "Patient", "gender": "robot"}, "Patient.gender"),
        (  # a backbone element of the resource
            {"resourceType": "Patient", "contact": [{"gender": "female"}, {"gender": "robot"}]},
            "Patient.contact[1].gender",
        ),
        (  # a datatype inside a backbone element
            {
                "resourceType": "Observation",
                "status": "final",
                "code": {"text": "x"},
                "component": [{"code": {"text": "c"}, "valueQuantity": {"comparator": "~"}}],
            },
            "Observation.component[0].valueQuantity.comparator",
        ),
        (  # a contained resource
            {"resourceType": "Patient", "contained": [{"resourceType": "Patient", "gender": "x"}]},
            "Patient.contained[0].gender",
        ),
    ],
)
async def test_a_code_outside_its_required_binding_is_refused(
    running: Running, body: dict[str, Any], expression: str
) -> None:
    response = await _create(running, body)
    assert _issues(response) == [(expression, "code-invalid")]
    assert "required value set" in response.json()["issue"][0]["diagnostics"]


async def test_every_problem_is_reported_together(running: Running) -> None:
    body = {
        "resourceType": "Observation",
        "status": "not-a-status",
        "code": {"text": "x"},
        "effectiveDateTime": "yesterday",  # a format error, which stopped the other checks
        "valueString": "high",
        "valueBoolean": True,  # two types of value[x]
        "component": [{"valueString": "no code"}],  # component.code is mandatory
        "referenceRange": [{"low": {"comparator": "~"}}],
    }
    issues = _issues(await _create(running, body))
    assert sorted(issues) == [
        ("Observation.component[0].code", "required"),
        ("Observation.effectiveDateTime", "structure"),
        ("Observation.referenceRange[0].low.comparator", "code-invalid"),
        ("Observation.status", "code-invalid"),
        ("Observation.value[x]", "structure"),
    ]


async def test_a_missing_status_is_reported_with_the_other_problems(running: Running) -> None:
    body = {"resourceType": "Observation", "code": {"text": "x"}, "issued": "not an instant"}
    issues = _issues(await _create(running, body))
    assert ("Observation.status", "required") in issues
    assert ("Observation.issued", "structure") in issues


def test_every_r4_resource_type_has_its_required_bindings_checked() -> None:
    """For each resource type the R4 API accepts, the first code element with an enumerable
    required binding is checked (the definitions cover every type, none typed by hand)."""
    defs = definitions.r4()
    assert set(R4_RESOURCE_TYPES) <= set(defs.types)
    checked = 0
    for resource_type in sorted(R4_RESOURCE_TYPES):
        coded = [e for e in defs.elements(resource_type) if e.codes and not e.many]
        if not coded:
            continue
        problems = definition_problems(
            resource_type, {"resourceType": resource_type, coded[0].name: "not-a-code"}
        )
        assert (
            Problem(
                f"{resource_type}.{coded[0].name}",
                f"'not-a-code' is not a code of the required value set {coded[0].value_set}",
                "code-invalid",
            )
            in problems
        ), resource_type
        checked += 1
    assert checked > 100


def test_the_official_codes_are_accepted() -> None:
    """Every code of Observation.status's value set, not only those the models' titles list."""
    statuses = definitions.r4().named("Observation")["status"][0].codes
    assert statuses is not None and {"corrected", "cancelled", "entered-in-error"} <= statuses
    for status in sorted(statuses):
        body = {"resourceType": "Observation", "status": status, "code": {"text": "x"}}
        validate("Observation", body)


# --------------------------------------------------------------------------- in Bundles


def _entry(resource: dict[str, Any]) -> dict[str, Any]:
    return {"request": {"method": "POST", "url": resource["resourceType"]}, "resource": resource}


async def test_a_transaction_with_an_unbound_code_commits_nothing(server: Running) -> None:
    headers = await system_headers(server)
    posted = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            _entry({"resourceType": "Patient", "gender": "male", "birthDate": "1961"}),
            _entry({"resourceType": "Patient", "gender": "robot"}),
        ],
    }
    answer = await server.http.post("/fhir/R4", json=posted, headers=headers)
    assert _issues(answer) == [("Patient.gender", "code-invalid")]
    found = await server.http.get("/fhir/R4/Patient?birthdate=1961", headers=headers)
    assert found.json()["total"] == 0


async def test_a_batch_refuses_only_the_entry_with_an_unbound_code(server: Running) -> None:
    headers = await system_headers(server)
    posted = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            _entry({"resourceType": "Patient", "gender": "male", "birthDate": "1962"}),
            _entry({"resourceType": "Observation", "status": "bad", "code": {"text": "x"}}),
            _entry({"resourceType": "Patient", "gender": "female", "birthDate": "1962"}),
        ],
    }
    answer = await server.http.post("/fhir/R4", json=posted, headers=headers)
    assert answer.status_code == 200, answer.text
    entries = answer.json()["entry"]
    statuses = [item["response"]["status"] for item in entries]
    assert statuses == ["201 Created", "400 Bad Request", "201 Created"]
    issues = entries[1]["response"]["outcome"]["issue"]
    assert [(i["expression"], i["code"]) for i in issues] == [
        (["Observation.status"], "code-invalid")
    ]
    found = await server.http.get("/fhir/R4/Patient?birthdate=1962", headers=headers)
    assert found.json()["total"] == 2
