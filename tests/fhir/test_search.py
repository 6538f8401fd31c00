"""FHIR search: index semantics per parameter type, paging, and partitions (a search, its total
and its links show only what the token may see)."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.delegation.support import register_application
from tests.fhir.support import system_headers
from tests.support import Running, register_secret_client


async def create(http: httpx.AsyncClient, headers: dict[str, str], body: dict[str, Any]) -> str:
    response = await http.post(f"/fhir/R4/{body['resourceType']}", json=body, headers=headers)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def ids(bundle: httpx.Response) -> set[str]:
    assert bundle.status_code == 200, bundle.text
    return {entry["resource"]["id"] for entry in bundle.json().get("entry", [])}


@pytest.fixture
async def data(server: Running) -> dict[str, Any]:
    """Patients and observations on every backend (the search SQL runs on each)."""
    headers = await system_headers(server)
    http = server.http
    patients = {
        "muller": await create(http, headers, {
            "resourceType": "Patient", "name": [{"family": "Müller", "given": ["Anna"]}],
            "gender": "female", "birthDate": "1970-05-01",
            "identifier": [{"system": "urn:mrn", "value": "100"}],
        }),
        "mull": await create(http, headers, {
            "resourceType": "Patient", "name": [{"family": "Mull_er%"}], "gender": "male",
            "birthDate": "1980",
        }),
        "smith": await create(http, headers, {
            "resourceType": "Patient", "name": [{"family": "Smith"}], "gender": "female",
            "birthDate": "1990-01-01", "meta": {"tag": [{"system": "urn:t", "code": "vip"}]},
        }),
    }  # fmt: skip
    observations = [
        await create(http, headers, {
            "resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "subject": {"reference": f"Patient/{patients['muller']}"},
            "effectiveDateTime": f"2024-0{month}-15T10:00:00Z",
        })
        for month in (1, 2, 3)
    ]  # fmt: skip
    return {"headers": headers, "patients": patients, "observations": observations}


async def test_string_search_semantics(server: Running, data: dict[str, Any]) -> None:
    get, headers, p = server.http.get, data["headers"], data["patients"]
    starts = await get("/fhir/R4/Patient?family=mul", headers=headers)
    assert ids(starts) == {p["muller"], p["mull"]}  # accents and case ignored
    exact = await get("/fhir/R4/Patient?family:exact=Müller", headers=headers)
    assert ids(exact) == {p["muller"]}
    assert ids(await get("/fhir/R4/Patient?family:exact=muller", headers=headers)) == set()
    wildcard = await get("/fhir/R4/Patient?family:contains=l_er%25", headers=headers)
    assert ids(wildcard) == {p["mull"]}  # % and _ are characters, not LIKE wildcards
    assert ids(await get("/fhir/R4/Patient?name=anna", headers=headers)) == {p["muller"]}


async def test_token_reference_and_date_semantics(server: Running, data: dict[str, Any]) -> None:
    get, headers, p = server.http.get, data["headers"], data["patients"]
    assert ids(await get("/fhir/R4/Patient?gender=female", headers=headers)) == {
        p["muller"],
        p["smith"],
    }
    assert ids(await get("/fhir/R4/Patient?identifier=urn:mrn|100", headers=headers)) == {
        p["muller"]
    }
    assert ids(await get("/fhir/R4/Patient?_tag=urn:t|vip", headers=headers)) == {p["smith"]}
    assert ids(await get("/fhir/R4/Patient?gender:not=female", headers=headers)) == {p["mull"]}
    assert ids(await get("/fhir/R4/Patient?birthdate=1980", headers=headers)) == {p["mull"]}
    assert ids(await get("/fhir/R4/Patient?birthdate=lt1980", headers=headers)) == {p["muller"]}
    assert ids(await get("/fhir/R4/Patient?birthdate=ge1980-06", headers=headers)) == {
        p["mull"],
        p["smith"],
    }
    by_patient = await get(f"/fhir/R4/Observation?patient={p['muller']}", headers=headers)
    assert ids(by_patient) == set(data["observations"])
    subject = f"Patient/{p['muller']}"
    later = await get(f"/fhir/R4/Observation?subject={subject}&date=ge2024-02", headers=headers)
    assert ids(later) == set(data["observations"][1:])
    coded = await get("/fhir/R4/Observation?code=http://loinc.org|8867-4", headers=headers)
    assert len(ids(coded)) == 3
    assert ids(await get("/fhir/R4/Observation?code=other|8867-4", headers=headers)) == set()


async def test_paging_links_walk_every_match_once(running: Running) -> None:
    headers = await system_headers(running)
    made = {
        await create(running.http, headers, {"resourceType": "Patient", "gender": "other"})
        for _ in range(7)
    }
    seen: list[str] = []
    url: str | None = "/fhir/R4/Patient?gender=other&_count=3"
    while url is not None:
        page = await running.http.get(url, headers=headers)
        body = page.json()
        assert body["total"] == 7
        seen += [entry["resource"]["id"] for entry in body["entry"]]
        links = {link["relation"]: link["url"] for link in body["link"]}
        query = parse_qs(urlsplit(links["self"]).query)
        assert query["gender"] == ["other"] and query["_count"] == ["3"]
        url = links.get("next")
    assert sorted(seen) == sorted(made)


async def test_id_last_updated_tag_and_profile(server: Running, data: dict[str, Any]) -> None:
    """The parameters every resource type has (FHIR R4 §3.1.1.5.x common parameters)."""
    headers, patients = data["headers"], data["patients"]

    async def found(query: str) -> set[str]:
        return ids(await server.http.get(f"/fhir/R4/Patient?{query}", headers=headers))

    everyone = set(patients.values())
    assert await found(f"_id={patients['muller']},{patients['smith']}") == {
        patients["muller"], patients["smith"],
    }  # fmt: skip
    assert await found("_id=no-such-id") == set()
    assert await found("_tag=urn:t|vip") == {patients["smith"]}
    assert await found("_tag=vip") == {patients["smith"]}
    profiled = await create(server.http, headers, {
        "resourceType": "Patient", "meta": {"profile": ["http://example.org/StructureDefinition/p"]},
    })  # fmt: skip
    assert await found("_profile=http://example.org/StructureDefinition/p") == {profiled}
    read = await server.http.get(f"/fhir/R4/Patient/{patients['smith']}", headers=headers)
    updated = read.json()["meta"]["lastUpdated"]  # 2026-11-29T20:40:00.123Z
    everyone.add(profiled)
    assert await found(f"_lastUpdated={updated[:10]}") == everyone
    assert await found("_lastUpdated=lt2001-01-01") == set()
    assert await found("_lastUpdated=gt2001-01-01") == everyone
    assert await found("_lastUpdated=gt2001-01-01&_lastUpdated=lt2001-02-01") == set()
    assert patients["smith"] in await found(f"_lastUpdated=eq{updated[:19]}Z")
    assert patients["smith"] not in await found(f"_lastUpdated=ne{updated[:19]}Z")
    assert await found("_lastUpdated=lt2001-01-01,gt2001-01-01") == everyone


async def test_count_is_capped_and_total_can_be_skipped(running: Running) -> None:
    headers = await system_headers(running)
    big = await running.http.get("/fhir/R4/Patient?_count=100000", headers=headers)
    assert "_count=500" in big.json()["link"][0]["url"]
    none = await running.http.get("/fhir/R4/Patient?_total=none", headers=headers)
    assert "total" not in none.json()


async def test_bad_searches_are_400_unless_lenient(running: Running) -> None:
    headers = await system_headers(running)
    for query in ("bogus=1", "birthdate=yesterday", "family:sounds=x", "_count=-1", "_sort=link"):
        response = await running.http.get(f"/fhir/R4/Patient?{query}", headers=headers)
        assert response.status_code == 400, query
        assert response.json()["resourceType"] == "OperationOutcome"
    lenient = {**headers, "Prefer": "handling=lenient"}
    assert (await running.http.get("/fhir/R4/Patient?bogus=1", headers=lenient)).status_code == 200


async def test_sort_by_parameters(server: Running) -> None:
    headers = await system_headers(server)
    people = [("Zola", "1990-01-01"), ("Abe", "1970-06-01"), ("Mia", "1980-03-01")]
    for family, born in people:
        await create(server.http, headers, {
            "resourceType": "Patient", "name": [{"family": family}], "birthDate": born,
        })  # fmt: skip
    await create(server.http, headers, {"resourceType": "Patient"})  # no name, no birth date

    def families(bundle: httpx.Response) -> list[str | None]:
        resources = [entry["resource"] for entry in bundle.json()["entry"]]
        return [r["name"][0]["family"] if "name" in r else None for r in resources]

    by_name = await server.http.get("/fhir/R4/Patient?_sort=family", headers=headers)
    assert families(by_name) == ["Abe", "Mia", "Zola", None]  # no value: last
    by_age = await server.http.get("/fhir/R4/Patient?_sort=-birthdate", headers=headers)
    assert families(by_age) == ["Zola", "Mia", "Abe", None]
    unsortable = await server.http.get("/fhir/R4/Patient?_sort=link", headers=headers)
    assert unsortable.status_code == 400


async def test_post_search_takes_a_form(running: Running) -> None:
    headers = await system_headers(running)
    made = await create(running.http, headers, {"resourceType": "Patient", "gender": "unknown"})
    form = {**headers, "Content-Type": "application/x-www-form-urlencoded"}
    found = await running.http.post(
        "/fhir/R4/Patient/_search", content="gender=unknown", headers=form
    )
    assert ids(found) == {made}
    json_body = await running.http.post("/fhir/R4/Patient/_search", json={}, headers=headers)
    assert json_body.status_code == 415


async def test_a_deleted_resource_is_not_found(running: Running) -> None:
    headers = await system_headers(running)
    made = await create(running.http, headers, {"resourceType": "Patient", "gender": "unknown"})
    assert (
        await running.http.delete(f"/fhir/R4/Patient/{made}", headers=headers)
    ).status_code == 204
    assert ids(await running.http.get("/fhir/R4/Patient?gender=unknown", headers=headers)) == set()


async def test_search_needs_the_s_permission(running: Running) -> None:
    client_id, secret = await register_secret_client(
        running.services, "client_secret_basic", scope="system/Patient.r"
    )
    token = await running.http.post(
        "/oauth2/token",
        data={"grant_type": "client_credentials", "scope": "system/Patient.r"},
        auth=(client_id, secret),
    )
    headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
    response = await running.http.get("/fhir/R4/Patient", headers=headers)
    assert response.status_code == 403
    assert 'error="insufficient_scope"' in response.headers["www-authenticate"]


async def test_a_user_searches_only_its_own_partition(server: Running) -> None:
    app = await register_application(server.services, server.http)
    alice, bob = await app.user_tokens("alice"), await app.user_tokens("bob")
    as_alice = {"Authorization": f"Bearer {alice['access_token']}"}
    as_bob = {"Authorization": f"Bearer {bob['access_token']}"}
    mine = await create(server.http, as_alice, {"resourceType": "Patient", "gender": "female"})
    theirs = await create(server.http, as_bob, {"resourceType": "Patient", "gender": "female"})
    system = await system_headers(server)
    await create(server.http, system, {"resourceType": "Patient", "gender": "female"})
    found = await server.http.get("/r4/Patient?gender=female&_count=1", headers=as_alice)
    assert ids(found) == {mine} and found.json()["total"] == 1
    assert not any(link["relation"] == "next" for link in found.json()["link"])
    assert ids(await server.http.get("/r4/Patient", headers=as_bob)) == {theirs}
    everyone = {**app.credentials, "x-oneup-user-id": "client"}
    assert ids(await server.http.get("/r4/Patient", headers=everyone)) == {mine, theirs}
    assert len(ids(await server.http.get("/r4/Patient?_count=10", headers=system))) == 3


async def test_include_and_revinclude_add_what_the_token_may_see(server: Running) -> None:
    app = await register_application(server.services, server.http)
    alice, bob = await app.user_tokens("alice"), await app.user_tokens("bob")
    as_alice = {"Authorization": f"Bearer {alice['access_token']}"}
    as_bob = {"Authorization": f"Bearer {bob['access_token']}"}
    patient = await create(server.http, as_alice, {"resourceType": "Patient"})
    observation = await create(server.http, as_alice, {
        "resourceType": "Observation", "status": "final", "code": {"text": "pulse"},
        "subject": {"reference": f"Patient/{patient}"},
    })  # fmt: skip
    bobs = await create(server.http, as_bob, {"resourceType": "Patient"})
    await create(server.http, as_bob, {
        "resourceType": "Observation", "status": "final", "code": {"text": "pulse"},
        "subject": {"reference": f"Patient/{bobs}"},
    })  # fmt: skip

    included = await server.http.get(
        "/r4/Observation?_include=Observation:patient", headers=as_alice
    )
    modes = {(e["resource"]["id"], e["search"]["mode"]) for e in included.json()["entry"]}
    assert modes == {(observation, "match"), (patient, "include")}
    assert included.json()["total"] == 1  # included resources are not counted

    reverse = await server.http.get("/r4/Patient?_revinclude=Observation:subject", headers=as_alice)
    modes = {(e["resource"]["id"], e["search"]["mode"]) for e in reverse.json()["entry"]}
    assert modes == {(patient, "match"), (observation, "include")}

    bad = await server.http.get("/r4/Observation?_include=Patient:organization", headers=as_alice)
    assert bad.status_code == 400
