"""The audit log of the FHIR API: a row per interaction before the answer leaves, identifiers
only, and a chain that shows any edit."""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import delete, select, text, update

from fhirgate.storage.models import AuditEventRow
from tests.delegation.support import register_application
from tests.fhir.support import system_headers
from tests.fhir.test_search import create
from tests.support import Running


async def rows(running: Running, **where: Any) -> list[Any]:
    stmt = select(AuditEventRow).order_by(AuditEventRow.id)
    for name, value in where.items():
        stmt = stmt.where(getattr(AuditEventRow, name) == value)
    async with running.services.engine.connect() as conn:
        return list((await conn.execute(stmt)).all())


async def test_a_read_is_audited_with_identifiers_only(running: Running) -> None:
    app = await register_application(running.services, running.http)
    tokens = await app.user_tokens("audited")
    headers = {"Authorization": f"Bearer {tokens['access_token']}"}
    patient = await create(running.http, headers, {
        "resourceType": "Patient", "name": [{"family": "Secretname"}],
    })  # fmt: skip
    read = await running.http.get(f"/r4/Patient/{patient}", headers=headers)
    assert read.status_code == 200
    (row,) = await rows(running, request_id=read.headers["x-request-id"])
    event = row
    assert event.event == "fhir.read" and event.outcome == "200"
    assert event.client_id == app.client_id and event.user_id == tokens["oneup_user_id"]
    assert event.resource_type == "Patient" and event.resource_ids == patient
    every = " ".join(str(value) for item in await rows(running) for value in item)
    assert "Secretname" not in every  # never content


async def test_a_search_records_the_ids_it_returned(running: Running) -> None:
    headers = await system_headers(running)
    made = {await create(running.http, headers, {"resourceType": "Patient"}) for _ in range(3)}
    found = await running.http.get("/fhir/R4/Patient", headers=headers)
    (row,) = await rows(running, request_id=found.headers["x-request-id"])
    assert set(row.resource_ids.split(",")) == {f"Patient/{made_id}" for made_id in made}


async def test_refused_requests_are_audited_too(running: Running) -> None:
    """A request refused for want of a credential is counted in its address's tally row;
    one refused with a credential (here: beyond its scope) has a row of its own."""
    refused = await running.http.get("/fhir/R4/Patient/x")
    assert refused.status_code == 401
    assert await rows(running, request_id=refused.headers["x-request-id"]) == []
    headers = await system_headers(running, scope="system/Observation.rs")
    forbidden = await running.http.get("/fhir/R4/Patient/x", headers=headers)
    assert forbidden.status_code == 403
    (row,) = await rows(running, request_id=forbidden.headers["x-request-id"])
    assert row.outcome == "403" and row.client_id is not None
    await running.services.audit.flush(final=True)
    (tally,) = await rows(running, event="bearer.refused")
    assert tally.detail.startswith("count=1 401=1 minute=")


async def test_no_data_leaves_without_its_audit_row(running: Running) -> None:
    headers = await system_headers(running)
    patient = await create(running.http, headers, {
        "resourceType": "Patient", "name": [{"family": "Unaudited"}],
    })  # fmt: skip
    async with running.services.engine.begin() as conn:  # a real fault: the log is gone
        await conn.execute(text("ALTER TABLE audit_events RENAME TO audit_events_gone"))
    answer = await running.http.get(f"/fhir/R4/Patient/{patient}", headers=headers)
    assert answer.status_code == 503
    assert answer.json()["resourceType"] == "OperationOutcome"
    assert "Unaudited" not in answer.text


async def test_the_chain_shows_an_edited_or_removed_row(running: Running) -> None:
    headers = await system_headers(running)
    for _ in range(3):
        await create(running.http, headers, {"resourceType": "Patient"})
    audit = running.services.audit
    await audit.flush()
    assert await audit.seal() >= 3
    assert (await audit.verify()).intact
    first = (await rows(running))[0]
    async with running.services.engine.begin() as conn:
        await conn.execute(
            update(AuditEventRow).where(AuditEventRow.id == first.id).values(outcome="999")
        )
    edited = await audit.verify()
    assert not edited.intact and f"row {first.id}" in " ".join(edited.problems)
    async with running.services.engine.begin() as conn:
        await conn.execute(delete(AuditEventRow).where(AuditEventRow.id == first.id + 1))
    assert any("missing" in problem for problem in (await audit.verify()).problems)


async def test_token_issues_are_audited(running: Running) -> None:
    await system_headers(running)  # one client_credentials grant
    await running.services.audit.flush()
    assert len(await rows(running, event="token.issued")) == 1


async def test_a_path_no_database_can_store_is_audited_and_answered_alone(server: Running) -> None:
    """A NUL or an undecodable byte in the path (PostgreSQL text refuses NUL) is stored as a
    replacement character: the request gets its 4xx, and requests audited in the same group
    commit get their answers."""
    headers = await system_headers(server)
    patient = await create(server.http, headers, {"resourceType": "Patient"})
    odd = ["/fhir/R4/Pat%00ient/1", "/fhir/R4/Patient/%00", "/fhir/R4/Patient/%ED%A0%80"]
    answers = await asyncio.gather(
        *(server.http.get(path, headers=headers) for path in odd),
        *(server.http.get(f"/fhir/R4/Patient/{patient}", headers=headers) for _ in range(5)),
    )
    assert [answer.status_code // 100 for answer in answers[:3]] == [4, 4, 4]
    assert [answer.status_code for answer in answers[3:]] == [200] * 5
    (row,) = await rows(server, request_id=answers[0].headers["x-request-id"])
    assert row.resource_type == "Pat\ufffdient"
