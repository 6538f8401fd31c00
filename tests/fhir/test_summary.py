"""Search result parameters ``_summary`` and ``_elements`` (FHIR R4 §3.1.1.5.8, §3.1.1.5.9), on
search, on read and vread, and for included resources; each subsetted resource is tagged
SUBSETTED; bad values are 400 OperationOutcomes."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from fhirgate.fhir.subsetting import SUBSETTED
from tests.fhir.support import assert_outcome, create, observation, system_headers
from tests.support import Running

NARRATIVE = {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">Jane</div>'}


def full_patient() -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "text": NARRATIVE,
        "name": [{"family": "Doe", "given": ["Jane"]}],
        "gender": "female",
        "birthDate": "1970-05-01",
        "photo": [{"contentType": "image/png", "url": "http://example.org/p.png"}],  # not summary
        "contact": [{"gender": "male", "name": {"family": "Roe"}}],  # not summary
        "maritalStatus": {"text": "married"},  # not summary
        "link": [  # summary, and so are its elements
            {"other": {"reference": "Patient/somebody"}, "type": "seealso"}
        ],
    }


def subsetted(resource: dict[str, Any]) -> bool:
    return SUBSETTED in resource.get("meta", {}).get("tag", [])


def elements(resource: dict[str, Any]) -> set[str]:
    return set(resource) - {"resourceType"}


def matches(response: httpx.Response) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.text
    return [entry["resource"] for entry in response.json().get("entry", [])]


@pytest.fixture
async def patient(server: Running) -> dict[str, Any]:
    headers = await system_headers(server)
    made = await create(server.http, headers, full_patient())
    return {"headers": headers, "id": made["id"]}


async def test_summary_count_is_a_total_without_entries(server: Running) -> None:
    headers = await system_headers(server)
    for _ in range(3):
        await create(server.http, headers, {"resourceType": "Patient", "gender": "other"})
    counted = await server.http.get(
        "/fhir/R4/Patient?gender=other&_summary=count&_total=none", headers=headers
    )
    assert counted.status_code == 200, counted.text
    body = counted.json()
    assert body["resourceType"] == "Bundle" and body["type"] == "searchset"
    assert body["total"] == 3 and "entry" not in body
    self_link = parse_qs(urlsplit(body["link"][0]["url"]).query)
    assert self_link["_summary"] == ["count"] and self_link["gender"] == ["other"]


async def test_summary_true_keeps_the_summary_elements(
    patient: dict[str, Any], server: Running
) -> None:
    found = await server.http.get(
        f"/fhir/R4/Patient?_id={patient['id']}&_summary=true", headers=patient["headers"]
    )
    (resource,) = matches(found)
    assert elements(resource) == {"id", "meta", "name", "gender", "birthDate", "link"}
    assert resource["link"] == full_patient()["link"]
    assert subsetted(resource)
    assert resource["meta"]["versionId"] == "1"  # meta is kept, the tag added to it


async def test_summary_text_data_and_false(patient: dict[str, Any], server: Running) -> None:
    get, headers = server.http.get, patient["headers"]
    url = f"/fhir/R4/Patient?_id={patient['id']}"
    (text,) = matches(await get(f"{url}&_summary=text", headers=headers))
    assert elements(text) == {"id", "meta", "text"} and subsetted(text)
    (data,) = matches(await get(f"{url}&_summary=data", headers=headers))
    assert elements(data) == elements({**full_patient(), "id": 1, "meta": 1}) - {"text"}
    assert subsetted(data)
    (whole,) = matches(await get(f"{url}&_summary=false", headers=headers))
    assert elements(whole) == elements({**full_patient(), "id": 1, "meta": 1})
    assert not subsetted(whole)


async def test_summary_text_keeps_the_mandatory_elements(server: Running) -> None:
    headers = await system_headers(server)
    made = await create(server.http, headers, observation(text=NARRATIVE, note=[{"text": "n"}]))
    found = await server.http.get(
        f"/fhir/R4/Observation?_id={made['id']}&_summary=text", headers=headers
    )
    (resource,) = matches(found)
    assert elements(resource) == {"id", "meta", "text", "status", "code"}


async def test_elements_lists_top_level_elements(server: Running) -> None:
    headers = await system_headers(server)
    made = await create(
        server.http, headers, observation(subject="Patient/x", note=[{"text": "n"}])
    )
    found = await server.http.get(
        f"/fhir/R4/Observation?_id={made['id']}&_elements=subject,value", headers=headers
    )
    (resource,) = matches(found)
    # listed (value names every value[x]), mandatory (status, code), id and meta
    assert elements(resource) == {"id", "meta", "status", "code", "subject", "valueQuantity"}
    assert subsetted(resource)
    link = parse_qs(urlsplit(found.json()["link"][0]["url"]).query)
    assert link["_elements"] == ["subject,value"]


async def test_included_resources_are_summarized_but_not_cut_to_elements(
    server: Running,
) -> None:
    """``_summary`` applies to every resource of the Bundle, each by its own definition;
    ``_elements`` names elements of the searched type, so included resources come whole."""
    headers = await system_headers(server)
    person = await create(server.http, headers, full_patient())
    await create(server.http, headers, observation(subject=f"Patient/{person['id']}"))
    query = f"/fhir/R4/Observation?patient={person['id']}&_include=Observation:patient"
    summarized = await server.http.get(f"{query}&_summary=true", headers=headers)
    found, included = matches(summarized)
    assert subsetted(found) and subsetted(included)
    assert "photo" not in included and included["gender"] == "female"
    cut = await server.http.get(f"{query}&_elements=status", headers=headers)
    found, included = matches(cut)
    assert elements(found) == {"id", "meta", "status", "code"} and subsetted(found)
    assert "photo" in included and not subsetted(included)


async def test_read_and_vread_take_summary_and_elements(
    patient: dict[str, Any], server: Running
) -> None:
    get, headers = server.http.get, patient["headers"]
    url = f"/fhir/R4/Patient/{patient['id']}"
    read = await get(f"{url}?_summary=true", headers=headers)
    assert read.status_code == 200 and subsetted(read.json())
    assert "contact" not in read.json() and read.headers["etag"] == 'W/"1"'
    vread = await get(f"{url}/_history/1?_elements=gender", headers=headers)
    assert elements(vread.json()) == {"id", "meta", "gender"} and subsetted(vread.json())
    whole = await get(url, headers=headers)  # the stored resource is untouched
    assert "contact" in whole.json() and not subsetted(whole.json())
    assert_outcome(await get(f"{url}?_summary=count", headers=headers), 400, "invalid")


@pytest.mark.parametrize(
    "query",
    [
        "_summary=bogus",
        "_summary=TRUE",
        "_summary=true&_summary=false",
        "_elements=favouriteColour",
        "_elements=",
        "_elements=gender&_summary=true",
        "_elements=" + ",".join(["gender"] * 101),
    ],
)
async def test_bad_result_parameters_are_400(running: Running, query: str) -> None:
    headers = await system_headers(running)
    response = await running.http.get(f"/fhir/R4/Patient?{query}", headers=headers)
    assert_outcome(response, 400, "invalid")
    read = await running.http.get(f"/fhir/R4/Patient/any?{query}", headers=headers)
    assert_outcome(read, 400, "invalid")


async def test_stu3_serves_count_and_false_only(running: Running) -> None:
    headers = await system_headers(running)
    counted = await running.http.get("/stu3/Patient?_summary=count", headers=headers)
    assert counted.status_code == 200 and counted.json()["total"] == 0
    assert (
        await running.http.get("/stu3/Patient?_summary=false", headers=headers)
    ).status_code == 200
    for query in ("_summary=true", "_elements=gender"):
        response = await running.http.get(f"/stu3/Patient?{query}", headers=headers)
        assert_outcome(response, 400, "invalid")


async def test_a_batch_search_takes_summary(server: Running) -> None:
    headers = await system_headers(server)
    await create(server.http, headers, full_patient())
    posted = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"request": {"method": "GET", "url": "Patient?_summary=count"}},
            {"request": {"method": "GET", "url": "Patient?_summary=true"}},
        ],
    }
    answer = await server.http.post("/fhir/R4", json=posted, headers=headers)
    assert answer.status_code == 200, answer.text
    counted, summarized = (item["resource"] for item in answer.json()["entry"])
    assert counted["total"] == 1 and "entry" not in counted
    assert subsetted(summarized["entry"][0]["resource"])
