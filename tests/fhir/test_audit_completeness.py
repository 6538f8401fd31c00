"""Every resource the FHIR API discloses is in the audit, whatever the answer's size, and a
write commits with its audit row or not at all (HIPAA §164.312(b)). On SQLite, PostgreSQL
and PostgreSQL + Redis."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
from sqlalchemy import func, select, text

from fhirgate.storage.models import AuditEventResourceRow, AuditEventRow, FhirResourceRow
from tests.fhir.support import FHIR, send, system_headers
from tests.support import Running

PATIENTS = 250  # with two Observations each: a 500-entry page with its 250 includes


async def load(http: httpx.AsyncClient, headers: dict[str, str]) -> None:
    """``PATIENTS`` Patients, each with two Observations, in transactions of 150 entries."""
    entries: list[dict[str, Any]] = []
    for number in range(PATIENTS):
        patient = f"urn:uuid:{uuid.uuid4()}"
        entries.append({
            "fullUrl": patient,
            "resource": {"resourceType": "Patient", "name": [{"family": f"F{number}"}]},
            "request": {"method": "POST", "url": "Patient"},
        })  # fmt: skip
        entries += [{
            "resource": {
                "resourceType": "Observation", "status": "final",
                "code": {"text": "weight"}, "subject": {"reference": patient},
            },
            "request": {"method": "POST", "url": "Observation"},
        }] * 2  # fmt: skip
    for start in range(0, len(entries), 150):
        bundle = {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": entries[start : start + 150],
        }
        answer = await send(http, "POST", FHIR, headers, bundle)
        assert answer.status_code == 200, answer.text


def served(bundle: dict[str, Any]) -> list[str]:
    """``Type/id`` of every resource a Bundle carries, its inner Bundles' too."""
    ids = []
    for entry in bundle.get("entry", []):
        resource = entry.get("resource") or {}
        if resource.get("resourceType") == "Bundle":
            ids += served(resource)
        elif "id" in resource:
            ids.append(f"{resource['resourceType']}/{resource['id']}")
    return ids


async def audited(server: Running, request_id: str) -> list[str]:
    stmt = (
        select(AuditEventResourceRow.resource_id)
        .join(AuditEventRow, AuditEventRow.id == AuditEventResourceRow.event_id)
        .where(AuditEventRow.request_id == request_id)
        .order_by(AuditEventResourceRow.position)
    )
    async with server.services.engine.connect() as conn:
        return [str(resource_id) for (resource_id,) in await conn.execute(stmt)]


async def test_a_500_entry_search_with_includes_and_a_batch_are_audited_whole(
    server: Running,
) -> None:
    headers = await system_headers(server)
    await load(server.http, headers)
    page = await server.http.get(
        f"{FHIR}/Observation",
        params={"_count": "500", "_include": "Observation:subject"},
        headers=headers,
    )
    assert page.status_code == 200
    ids = served(page.json())
    assert len(ids) == 750 and len(",".join(ids)) > 20_000  # past the display column's cut
    assert await audited(server, page.headers["x-request-id"]) == ids

    searches = [
        {"request": {"method": "GET", "url": f"Observation?_count=500&_offset={offset}"}}
        for offset in (0, 100, 200)
    ] + [{"request": {"method": "GET", "url": "Patient?_count=500"}}]
    batch = {"resourceType": "Bundle", "type": "batch", "entry": searches}
    answer = await send(server.http, "POST", FHIR, headers, batch)
    assert answer.status_code == 200
    carried = served(answer.json())
    assert len(carried) == 500 + 400 + 300 + 250
    recorded = await audited(server, answer.headers["x-request-id"])
    assert set(recorded) == set(carried) and len(recorded) == len(set(carried))
    assert (await server.services.audit.verify()).intact


async def resources(server: Running) -> int:
    async with server.services.engine.connect() as conn:
        return int(
            (await conn.execute(select(func.count()).select_from(FhirResourceRow))).scalar_one()
        )


async def test_a_write_whose_audit_row_fails_is_rolled_back(server: Running) -> None:
    headers = await system_headers(server)
    created = await send(
        server.http, "POST", f"{FHIR}/Patient", headers, {"resourceType": "Patient"}
    )
    assert created.status_code == 201
    patient = created.json()
    before = await resources(server)
    async with server.services.engine.begin() as conn:  # a real fault: the log is gone
        await conn.execute(text("ALTER TABLE audit_events RENAME TO audit_events_gone"))
    attempts = [
        await send(server.http, "POST", f"{FHIR}/Patient", headers, {"resourceType": "Patient"}),
        await send(
            server.http, "PUT", f"{FHIR}/Patient/{patient['id']}", headers,
            {**patient, "gender": "female"},
        ),
        await send(server.http, "DELETE", f"{FHIR}/Patient/{patient['id']}", headers),
    ]  # fmt: skip
    assert [attempt.status_code for attempt in attempts] == [503, 503, 503]
    async with server.services.engine.begin() as conn:
        await conn.execute(text("ALTER TABLE audit_events_gone RENAME TO audit_events"))
    assert await resources(server) == before  # nothing created
    now = await server.http.get(f"{FHIR}/Patient/{patient['id']}", headers=headers)
    assert now.status_code == 200  # not deleted
    assert "gender" not in now.json() and now.json()["meta"]["versionId"] == "1"  # not updated


async def test_a_bundles_writes_whose_audit_row_fails_are_rolled_back(server: Running) -> None:
    headers = await system_headers(server)
    before = await resources(server)
    creating = {
        "request": {"method": "POST", "url": "Patient"},
        "resource": {"resourceType": "Patient"},
    }
    async with server.services.engine.begin() as conn:  # a real fault: the log is gone
        await conn.execute(text("ALTER TABLE audit_events RENAME TO audit_events_gone"))
    try:
        answers = [
            await send(server.http, "POST", FHIR, headers,
                       {"resourceType": "Bundle", "type": kind, "entry": [creating, creating]})
            for kind in ("transaction", "batch")
        ]  # fmt: skip
    finally:
        async with server.services.engine.begin() as conn:
            await conn.execute(text("ALTER TABLE audit_events_gone RENAME TO audit_events"))
    assert [answer.status_code for answer in answers] == [503, 503]
    assert await resources(server) == before  # neither the transaction nor a batch entry
