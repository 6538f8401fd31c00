"""batch and transaction Bundles: atomic transactions, urn:uuid references, per-entry batch
answers, and the same authorization as each entry's REST request."""

from __future__ import annotations

from typing import Any

from tests.delegation.support import register_application
from tests.fhir.support import system_headers
from tests.fhir.test_audit import rows
from tests.support import Running


def entry(method: str, url: str, resource: Any = None, full_url: str | None = None) -> Any:
    item: dict[str, Any] = {"request": {"method": method, "url": url}}
    if resource is not None:
        item["resource"] = resource
    if full_url is not None:
        item["fullUrl"] = full_url
    return item


def bundle(kind: str, *entries: Any) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": kind, "entry": list(entries)}


async def test_a_transaction_creates_and_links_with_urn_uuids(server: Running) -> None:
    headers = await system_headers(server)
    patient_url = "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a"
    posted = bundle(
        "transaction",
        entry("POST", "Observation", {
            "resourceType": "Observation", "status": "final", "code": {"text": "pulse"},
            "subject": {"reference": patient_url},
        }),
        entry("POST", "Patient", {"resourceType": "Patient", "gender": "female"}, patient_url),
    )  # fmt: skip
    answer = await server.http.post("/fhir/R4", json=posted, headers=headers)
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert result["type"] == "transaction-response"
    observation, patient = (item["resource"] for item in result["entry"])  # request order
    assert [item["response"]["status"] for item in result["entry"]] == ["201 Created"] * 2
    assert observation["subject"]["reference"] == f"Patient/{patient['id']}"
    found = await server.http.get(f"/fhir/R4/Observation?patient={patient['id']}", headers=headers)
    assert found.json()["total"] == 1


async def test_a_failing_entry_commits_nothing(server: Running) -> None:
    headers = await system_headers(server)
    posted = bundle(
        "transaction",
        entry("POST", "Patient", {"resourceType": "Patient", "gender": "male"}),
        entry("POST", "Patient", {"resourceType": "Patient", "birthDate": "not a date"}),
    )
    answer = await server.http.post("/fhir/R4", json=posted, headers=headers)
    assert answer.status_code == 400
    assert answer.json()["resourceType"] == "OperationOutcome"
    found = await server.http.get("/fhir/R4/Patient?gender=male", headers=headers)
    assert found.json()["total"] == 0


async def test_a_forbidden_entry_fails_a_users_transaction(server: Running) -> None:
    app = await register_application(server.services, server.http)
    alice, bob = await app.user_tokens("alice"), await app.user_tokens("bob")
    as_alice = {"Authorization": f"Bearer {alice['access_token']}"}
    as_bob = {"Authorization": f"Bearer {bob['access_token']}"}
    created = await server.http.post(
        "/r4/Patient", json={"resourceType": "Patient"}, headers=as_alice
    )
    alices = created.json()["id"]
    posted = bundle(
        "transaction",
        entry("POST", "Patient", {"resourceType": "Patient", "gender": "other"}),
        entry("POST", "Observation", {
            "resourceType": "Observation", "status": "final", "code": {"text": "x"},
            "subject": {"reference": f"Patient/{alices}"},
        }),
    )  # fmt: skip
    answer = await server.http.post("/r4", json=posted, headers=as_bob)
    assert answer.status_code == 403
    mine = await server.http.get("/r4/Patient?gender=other", headers=as_bob)
    assert mine.json()["total"] == 0  # the allowed entry was not committed either


async def test_a_batch_answers_each_entry_and_is_audited_with_what_each_touched(
    running: Running,
) -> None:
    """The audit row names the deleted and the missing ids too: a delete's answer carries no
    resource, and a read of an id that is not there is still an attempt on it."""
    headers = await system_headers(running)
    posted = bundle(
        "batch",
        entry("POST", "Patient", {"resourceType": "Patient"}),
        entry("GET", "Patient/does-not-exist"),
        entry("PUT", "Patient/chosen", {"resourceType": "Patient", "id": "chosen"}),
        entry("DELETE", "Patient/chosen"),
    )
    answer = await running.http.post("/fhir/R4", json=posted, headers=headers)
    assert answer.status_code == 200, answer.text
    statuses = [item["response"]["status"] for item in answer.json()["entry"]]
    assert statuses == ["201 Created", "404 Not Found", "201 Created", "204 No Content"]
    missing = answer.json()["entry"][1]["response"]["outcome"]
    assert missing["resourceType"] == "OperationOutcome"
    created = answer.json()["entry"][0]["resource"]["id"]
    request_id = answer.headers["x-request-id"]
    (row,) = await rows(running, request_id=request_id, event="fhir.bundle")
    assert (row.event, row.outcome) == ("fhir.bundle", "200")
    targets = ["Patient/does-not-exist", "Patient/chosen", f"Patient/{created}"]
    assert row.resource_ids.split(",") == targets
    # each write entry committed with a row of its own, in its transaction
    written = await rows(running, request_id=request_id, event="fhir.bundle.write")
    assert [item.resource_ids for item in written] == [
        f"Patient/{created}", "Patient/chosen", "Patient/chosen",
    ]  # fmt: skip


async def test_a_refused_transaction_is_audited_with_the_resources_it_named(
    server: Running,
) -> None:
    app = await register_application(server.services, server.http)
    alice, bob = await app.user_tokens("alice"), await app.user_tokens("bob")
    as_alice = {"Authorization": f"Bearer {alice['access_token']}"}
    created = await server.http.post(
        "/r4/Patient", json={"resourceType": "Patient"}, headers=as_alice
    )
    alices = created.json()["id"]
    posted = bundle("transaction", entry("DELETE", f"Patient/{alices}"))
    answer = await server.http.post(
        "/r4", json=posted, headers={"Authorization": f"Bearer {bob['access_token']}"}
    )
    assert answer.status_code == 404  # another user's resource: as if it were not there
    (row,) = await rows(server, request_id=answer.headers["x-request-id"])
    assert (row.outcome, row.user_id) == ("404", bob["oneup_user_id"])
    assert row.resource_ids == f"Patient/{alices}"
    read = await server.http.get(f"/r4/Patient/{alices}", headers=as_alice)
    assert read.status_code == 200  # and nothing was deleted


async def test_malformed_bundles_are_400(running: Running) -> None:
    headers = await system_headers(running)
    for body in (
        {"resourceType": "Patient"},
        {"resourceType": "Bundle", "type": "document"},
        bundle("batch", {"request": {"method": "PATCH", "url": "Patient/1"}}),
        bundle("batch", entry("DELETE", "Patient?name=x")),  # conditional: not supported
        bundle("batch", entry("PUT", "Patient?name=x", {"resourceType": "Patient"})),
        bundle("batch", *[entry("GET", "Patient/x")] * 1001),
    ):
        answer = await running.http.post("/fhir/R4", json=body, headers=headers)
        assert answer.status_code == 400, body
        assert answer.json()["resourceType"] == "OperationOutcome"


async def test_search_entries_answer_with_searchsets_on_every_backend(server: Running) -> None:
    """``GET Type?…`` entries (FHIR R4 §3.1.0.11): a batch answers each with a searchset; a
    transaction's searches run after its writes and see them; a user's searches see only its
    own partition; the audit row names what they returned."""
    headers = await system_headers(server)
    posted = bundle(
        "transaction",
        entry("POST", "Patient", {"resourceType": "Patient", "name": [{"family": "Searchable"}]}),
        entry("GET", "Patient?family=searchable&_total=accurate"),
        entry("GET", "Patient"),
    )
    answer = await server.http.post("/fhir/R4", json=posted, headers=headers)
    assert answer.status_code == 200, answer.text
    created, searched, everyone = answer.json()["entry"]
    new_id = created["resource"]["id"]
    assert searched["response"]["status"] == "200 OK"
    assert searched["resource"]["type"] == "searchset" and searched["resource"]["total"] == 1
    assert searched["resource"]["entry"][0]["resource"]["id"] == new_id
    assert "family=searchable" in searched["resource"]["link"][0]["url"]
    assert everyone["resource"]["total"] >= 1

    batch = await server.http.post(
        "/fhir/R4",
        json=bundle(
            "batch", entry("GET", "Patient?family=searchable"), entry("GET", "Patient?x=1")
        ),
        headers=headers,
    )
    found, refused = batch.json()["entry"]
    assert [item["resource"]["id"] for item in found["resource"]["entry"]] == [new_id]
    assert refused["response"]["status"].startswith("400")

    app = await register_application(server.services, server.http)
    tokens = await app.user_tokens("searcher")
    as_user = {"Authorization": f"Bearer {tokens['access_token']}"}
    mine = bundle("batch", entry("GET", "Patient?family=searchable"))
    answered = await server.http.post("/r4", json=mine, headers=as_user)
    assert answered.json()["entry"][0]["resource"]["total"] == 0  # the system's, not the user's
    (row,) = await rows(server, request_id=batch.headers["x-request-id"], event="fhir.bundle")
    assert row.resource_ids == f"Patient/{new_id}"
