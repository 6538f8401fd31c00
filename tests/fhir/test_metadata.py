"""``metadata`` and SMART discovery under every FHIR base."""

from __future__ import annotations

import pytest
from fhir.resources.R4B.capabilitystatement import CapabilityStatement

from tests.support import BASE, Running

BASES = ["/fhir/R4", "/r4", "/fhir/R4/default/Development"]


@pytest.mark.parametrize("base", BASES)
async def test_the_capability_statement_describes_this_base(running: Running, base: str) -> None:
    response = await running.http.get(f"{base}/metadata")  # public, no token
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/fhir+json")
    statement = response.json()
    CapabilityStatement.model_validate(statement)  # a valid resource
    assert statement["fhirVersion"] == "4.0.1"
    assert statement["implementation"]["url"] == f"{BASE}{base}"
    rest = statement["rest"][0]
    service = rest["security"]["service"][0]["coding"][0]
    assert service["code"] == "SMART-on-FHIR"
    uris = {item["url"]: item["valueUri"] for item in rest["security"]["extension"][0]["extension"]}
    assert uris["token"] == f"{BASE}/oauth2/token"
    patient = next(r for r in rest["resource"] if r["type"] == "Patient")
    codes = {interaction["code"] for interaction in patient["interaction"]}
    assert codes == {
        "read", "vread", "update", "delete", "history-instance", "create", "search-type",
    }  # fmt: skip
    assert patient["versioning"] == "versioned-update" and patient["updateCreate"] is True
    params = {param["name"]: param["type"] for param in patient["searchParam"]}
    assert params["family"] == "string" and params["birthdate"] == "date"
    assert params["_lastUpdated"] == "date" and params["identifier"] == "token"
    every_search = {param["name"]: param["type"] for param in rest["searchParam"]}
    assert every_search == {"_summary": "token", "_elements": "string"}


@pytest.mark.parametrize("base", BASES)
async def test_smart_configuration_under_the_base(running: Running, base: str) -> None:
    response = await running.http.get(f"{base}/.well-known/smart-configuration")
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "*"
    root = (await running.http.get("/.well-known/smart-configuration")).json()
    assert response.json() == root
