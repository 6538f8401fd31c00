"""``Patient/{id}/$everything``: the patient's compartment, within the caller's partition and
scopes."""

from __future__ import annotations

from tests.delegation.support import register_application
from tests.fhir.test_search import create
from tests.support import Running


async def test_everything_returns_the_patient_and_what_references_it(server: Running) -> None:
    app = await register_application(server.services, server.http)
    alice, bob = await app.user_tokens("alice"), await app.user_tokens("bob")
    as_alice = {"Authorization": f"Bearer {alice['access_token']}"}
    as_bob = {"Authorization": f"Bearer {bob['access_token']}"}
    patient = await create(server.http, as_alice, {"resourceType": "Patient"})
    made = {patient}
    for text in ("pulse", "weight", "height"):
        made.add(await create(server.http, as_alice, {
            "resourceType": "Observation", "status": "final", "code": {"text": text},
            "subject": {"reference": f"Patient/{patient}"},
        }))  # fmt: skip
    made.add(await create(server.http, as_alice, {
        "resourceType": "AllergyIntolerance", "patient": {"reference": f"Patient/{patient}"},
    }))  # fmt: skip
    await create(server.http, as_alice, {"resourceType": "Patient"})  # another patient

    seen: set[str] = set()
    url: str | None = f"/r4/Patient/{patient}/$everything?_count=2"
    while url is not None:
        page = await server.http.get(url, headers=as_alice)
        assert page.status_code == 200, page.text
        seen |= {entry["resource"]["id"] for entry in page.json()["entry"]}
        links = {link["relation"]: link["url"] for link in page.json()["link"]}
        url = links.get("next")
    assert seen == made

    other = await server.http.get(f"/r4/Patient/{patient}/$everything", headers=as_bob)
    assert other.status_code == 404  # another user's patient: as if missing


async def test_everything_leaves_out_types_the_token_may_not_read(running: Running) -> None:
    app = await register_application(running.services, running.http)
    full = await app.user_tokens("limited")
    writer = {"Authorization": f"Bearer {full['access_token']}"}
    patient = await create(running.http, writer, {"resourceType": "Patient"})
    subject = {"reference": f"Patient/{patient}"}
    observation = await create(running.http, writer, {
        "resourceType": "Observation", "status": "final", "code": {"text": "x"}, "subject": subject,
    })  # fmt: skip
    await create(running.http, writer, {"resourceType": "AllergyIntolerance", "patient": subject})
    code = await app.auth_code(app_user_id="limited", scope="user/Patient.rs user/Observation.rs")
    narrow = (await app.exchange(code.json()["code"])).json()
    reader = {"Authorization": f"Bearer {narrow['access_token']}"}
    everything = await running.http.get(f"/r4/Patient/{patient}/$everything", headers=reader)
    ids = {entry["resource"]["id"] for entry in everything.json()["entry"]}
    assert ids == {patient, observation}  # no AllergyIntolerance: the token may not read it
