"""FHIR R4 REST semantics (FHIR R4 §3.1.0 "RESTful API") over the real app: read, vread,
instance history, create, update (version-aware, and as create), delete — at every base — and
their errors, each an OperationOutcome."""

from __future__ import annotations

import time
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import pytest

from tests.fhir.support import (
    BASES,
    FHIR,
    FHIR_JSON,
    INSTANT,
    assert_no_internals,
    assert_outcome,
    bearer,
    create,
    missing_id,
    other_org_headers,
    patient,
    send,
    system_headers,
)
from tests.support import BASE, Running


@pytest.fixture
async def system(running: Running) -> dict[str, str]:
    """A backend service of the default organization allowed everything (system/*.cruds)."""
    return await system_headers(running)


def instant(value: str) -> datetime:
    assert INSTANT.fullmatch(value), value
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def assert_fhir_json(response: httpx.Response) -> None:
    assert response.headers["content-type"].split(";")[0].strip() == FHIR_JSON, response.headers


def assert_meta(body: dict[str, Any], version: int) -> datetime:
    """``meta.versionId`` is ``version``; ``meta.lastUpdated`` is an instant of the last
    minute; returns it."""
    assert body["meta"]["versionId"] == str(version), body["meta"]
    at = instant(body["meta"]["lastUpdated"])
    assert abs(at.timestamp() - time.time()) < 60, at
    return at


async def updated(
    http: httpx.AsyncClient,
    headers: dict[str, str],
    stored: dict[str, Any],
    base: str = FHIR,
    **changes: Any,
) -> httpx.Response:
    """PUT the stored resource back with ``changes`` (its id and type unchanged)."""
    body = {key: value for key, value in stored.items() if key != "meta"} | changes
    return await send(http, "PUT", f"{base}/{stored['resourceType']}/{stored['id']}", headers, body)


# --------------------------------------------------------------------------- create and read


@pytest.mark.parametrize("base", BASES)
async def test_create_is_201_with_a_location_under_the_base_it_came_through(
    running: Running, system: dict[str, str], base: str
) -> None:
    body = patient(id="chosen-by-the-client", meta={"versionId": "7", "source": "urn:test"})
    response = await send(running.http, "POST", f"{base}/Patient", system, body)
    assert response.status_code == 201, response.text
    assert_fhir_json(response)
    created = response.json()
    new_id = created["id"]
    assert new_id != "chosen-by-the-client"  # the server assigns the id (FHIR R4 §3.1.0.7)
    assert response.headers["location"] == f"{BASE}{base}/Patient/{new_id}/_history/1"
    assert response.headers["etag"] == 'W/"1"'
    assert_meta(created, 1)
    assert created["meta"]["source"] == "urn:test"  # the rest of meta is the client's
    assert created["name"] == body["name"] and created["gender"] == "female"

    read = await running.http.get(f"{base}/Patient/{new_id}", headers=system)
    assert read.status_code == 200, read.text
    assert read.json() == created
    for other in BASES:  # one store behind every base
        assert (await running.http.get(f"{other}/Patient/{new_id}", headers=system)).json() == (
            created
        )


@pytest.mark.parametrize("base", BASES)
async def test_every_interaction_works_under_each_base(
    running: Running, system: dict[str, str], base: str
) -> None:
    http = running.http
    created = await create(http, system, patient(), base)
    path = f"{base}/Patient/{created['id']}"
    assert (await http.get(path, headers=system)).status_code == 200
    second = await updated(http, system, created, base, active=True)
    assert second.status_code == 200, second.text
    assert second.json()["meta"]["versionId"] == "2"
    vread = await http.get(f"{path}/_history/1", headers=system)
    assert vread.status_code == 200 and "active" not in vread.json(), vread.text
    history = await http.get(f"{path}/_history", headers=system)
    assert history.status_code == 200, history.text
    assert [entry["fullUrl"] for entry in history.json()["entry"]] == [f"{BASE}{path}"] * 2
    put_new = await send(
        http, "PUT", f"{base}/Patient/made-by-put", system, patient(id="made-by-put")
    )
    assert put_new.status_code == 201, put_new.text
    assert put_new.headers["location"] == f"{BASE}{base}/Patient/made-by-put/_history/1"
    assert (await http.delete(path, headers=system)).status_code == 204
    assert_outcome(await http.get(path, headers=system), 410, "deleted")


async def test_read_has_etag_last_modified_and_fhir_json(
    running: Running, system: dict[str, str]
) -> None:
    created = await create(running.http, system, patient())
    response = await running.http.get(f"{FHIR}/Patient/{created['id']}", headers=system)
    assert response.status_code == 200, response.text
    assert_fhir_json(response)
    assert response.headers["etag"] == 'W/"1"'
    last_updated = assert_meta(response.json(), 1)
    last_modified = parsedate_to_datetime(response.headers["last-modified"])
    assert response.headers["last-modified"].endswith(" GMT")
    assert last_modified == last_updated.replace(microsecond=0)


async def test_update_bumps_the_version_and_history_lists_both_newest_first(
    running: Running, system: dict[str, str]
) -> None:
    http = running.http
    created = await create(http, system, patient())
    first_at = instant(created["meta"]["lastUpdated"])
    response = await updated(http, system, created, gender="male")
    assert response.status_code == 200, response.text
    assert_fhir_json(response)
    assert response.headers["etag"] == 'W/"2"'
    second = response.json()
    assert second["id"] == created["id"] and second["gender"] == "male"
    assert assert_meta(second, 2) >= first_at

    history = await http.get(f"{FHIR}/Patient/{created['id']}/_history", headers=system)
    assert history.status_code == 200, history.text
    assert_fhir_json(history)
    bundle = history.json()
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "history"
    assert bundle["total"] == 2 == len(bundle["entry"])
    newest, oldest = bundle["entry"]
    assert newest["resource"] == second and oldest["resource"] == created
    assert newest["request"] == {"method": "PUT", "url": f"Patient/{created['id']}"}
    assert oldest["request"] == {"method": "POST", "url": f"Patient/{created['id']}"}
    assert (newest["response"]["etag"], oldest["response"]["etag"]) == ('W/"2"', 'W/"1"')


async def test_vread_of_version_1_returns_the_old_content(
    running: Running, system: dict[str, str]
) -> None:
    http = running.http
    created = await create(http, system, patient())
    second = await updated(http, system, created, gender="male")
    path = f"{FHIR}/Patient/{created['id']}/_history"
    old = await http.get(f"{path}/1", headers=system)
    assert old.status_code == 200, old.text
    assert_fhir_json(old)
    assert old.json() == created and old.json()["gender"] == "female"
    assert old.headers["etag"] == 'W/"1"'
    assert (await http.get(f"{path}/2", headers=system)).json() == second.json()
    for unknown in ("3", "0", "abc"):
        assert_outcome(await http.get(f"{path}/{unknown}", headers=system), 404, "not-found")


# --------------------------------------------------------------------------- If-Match


async def test_update_with_a_stale_if_match_is_412_and_changes_nothing(
    running: Running, system: dict[str, str]
) -> None:
    http = running.http
    created = await create(http, system, patient())
    second = (await updated(http, system, created, gender="male")).json()
    stale = await updated(
        http, system | {"If-Match": 'W/"1"'}, created, gender="other", birthDate="1970-01-01"
    )
    assert_outcome(stale, 412)
    current = await http.get(f"{FHIR}/Patient/{created['id']}", headers=system)
    assert current.json() == second
    assert current.headers["etag"] == 'W/"2"'


async def test_update_with_the_current_if_match_is_200(
    running: Running, system: dict[str, str]
) -> None:
    http = running.http
    created = await create(http, system, patient())
    await updated(http, system, created, gender="male")
    response = await updated(http, system | {"If-Match": 'W/"2"'}, created, gender="other")
    assert response.status_code == 200, response.text
    assert response.json()["meta"]["versionId"] == "3"
    assert response.headers["etag"] == 'W/"3"'


@pytest.mark.parametrize("value", ["1", "W/1", 'W/"1', '"one"', 'W/"-1"', "W/'1'"])
async def test_a_malformed_if_match_is_400(
    running: Running, system: dict[str, str], value: str
) -> None:
    http = running.http
    created = await create(http, system, patient())
    response = await updated(http, system | {"If-Match": value}, created, gender="male")
    assert_outcome(response, 400, "invalid")
    assert (await http.get(f"{FHIR}/Patient/{created['id']}", headers=system)).json() == created


async def test_if_match_on_a_missing_resource_is_412_and_creates_nothing(
    running: Running, system: dict[str, str]
) -> None:
    path = f"{FHIR}/Patient/never-made"
    response = await send(
        running.http, "PUT", path, system, patient(id="never-made"), **{"If-Match": 'W/"1"'}
    )
    assert_outcome(response, 412)
    assert_outcome(await running.http.get(path, headers=system), 404, "not-found")


# --------------------------------------------------------------------------- update-as-create


async def test_put_to_a_new_id_creates_it_with_201_and_location(
    running: Running, system: dict[str, str]
) -> None:
    http = running.http
    response = await send(http, "PUT", f"{FHIR}/Patient/p-42.a", system, patient(id="p-42.a"))
    assert response.status_code == 201, response.text
    assert_fhir_json(response)
    assert response.headers["location"] == f"{BASE}{FHIR}/Patient/p-42.a/_history/1"
    assert response.headers["etag"] == 'W/"1"'
    assert response.json()["id"] == "p-42.a"
    assert_meta(response.json(), 1)
    read = await http.get(f"{FHIR}/Patient/p-42.a", headers=system)
    assert read.status_code == 200 and read.json() == response.json()
    again = await send(http, "PUT", f"{FHIR}/Patient/p-42.a", system, patient(id="p-42.a"))
    assert again.status_code == 200, again.text  # now an ordinary update
    assert "location" not in again.headers
    assert again.json()["meta"]["versionId"] == "2"


async def test_put_with_a_body_id_other_than_the_url_id_is_400(
    running: Running, system: dict[str, str]
) -> None:
    http = running.http
    created = await create(http, system, patient())
    path = f"{FHIR}/Patient/{created['id']}"
    for body in (patient(id="someone-else"), patient()):  # a different id, or none
        assert_outcome(await send(http, "PUT", path, system, body), 400, "invalid")
    assert_outcome(
        await send(http, "PUT", f"{FHIR}/Patient/new-one", system, patient(id="other-one")),
        400,
        "invalid",
    )
    assert (await http.get(path, headers=system)).json() == created
    assert_outcome(await http.get(f"{FHIR}/Patient/new-one", headers=system), 404)
    assert_outcome(await http.get(f"{FHIR}/Patient/other-one", headers=system), 404)


# --------------------------------------------------------------------------- bad requests


async def test_a_body_resource_type_other_than_the_url_type_is_400(
    running: Running, system: dict[str, str]
) -> None:
    http = running.http
    created = await create(http, system, patient())
    wrong = {"resourceType": "Observation", "status": "final", "code": {"text": "x"}}
    assert_outcome(await send(http, "POST", f"{FHIR}/Patient", system, wrong), 400, "invalid")
    untyped = {"name": [{"family": "Doe"}]}
    assert_outcome(await send(http, "POST", f"{FHIR}/Patient", system, untyped), 400, "invalid")
    path = f"{FHIR}/Patient/{created['id']}"
    put = await send(http, "PUT", path, system, wrong | {"id": created["id"]})
    assert_outcome(put, 400, "invalid")
    assert (await http.get(path, headers=system)).json() == created


@pytest.mark.parametrize(
    "raw",
    [b"not json", b'{"resourceType": "Patient",', b"[1, 2]", b'"Patient"', b"null", b"42", b""],
    ids=["text", "truncated", "array", "string", "null", "number", "empty"],
)
async def test_a_body_that_is_not_a_json_object_is_400(
    running: Running, system: dict[str, str], raw: bytes
) -> None:
    http = running.http
    assert_outcome(await send(http, "POST", f"{FHIR}/Patient", system, raw), 400, "invalid")
    put = await send(http, "PUT", f"{FHIR}/Patient/some-id", system, raw)
    assert_outcome(put, 400, "invalid")
    assert_outcome(await http.get(f"{FHIR}/Patient/some-id", headers=system), 404)


async def test_a_deeply_nested_body_is_answered_with_fhir_not_a_crash(
    running: Running, system: dict[str, str]
) -> None:
    """Any body the JSON parser accepts (orjson: up to 1024 levels) must not blow the stack on
    its way to the store: a 201, or a 400 OperationOutcome."""
    depth = 490  # two JSON levels each: ~980 levels, inside the parser's limit; ~22 kB
    opening = b'{"url": "http://example.org/e", "extension": [' * depth
    leaf = b'{"url": "http://example.org/leaf", "valueString": "x"}'
    raw = b'{"resourceType": "Patient", "extension": [' + opening + leaf + b"]}" * depth + b"]}"
    transport = httpx.ASGITransport(app=running.app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url=BASE) as http:
        response = await send(http, "POST", f"{FHIR}/Patient", system, raw)
    assert response.status_code in (201, 400), response.text[:500]
    assert_fhir_json(response)
    assert_no_internals(response)


async def test_a_trailing_slash_is_the_same_interaction(
    running: Running, system: dict[str, str]
) -> None:
    created = await create(running.http, system, patient())
    read = await running.http.get(f"{FHIR}/Patient/{created['id']}/", headers=system)
    assert read.status_code == 200 and read.json()["id"] == created["id"]
    found = await running.http.get(f"{FHIR}/Patient/?_id={created['id']}", headers=system)
    assert found.status_code == 200 and found.json()["total"] == 1


async def test_unsupported_methods_and_unknown_paths_under_the_base_are_operation_outcomes(
    running: Running, system: dict[str, str]
) -> None:
    http = running.http
    created = await create(http, system, patient())
    path = f"{FHIR}/Patient/{created['id']}"
    patch = await send(http, "PATCH", path, system, [], content_type="application/json-patch+json")
    assert_outcome(patch, 405)
    assert patch.headers["Allow"] == "DELETE, GET, PUT"
    assert_outcome(await send(http, "POST", path, system, created), 405)
    assert_outcome(await http.delete(f"{FHIR}/Patient", headers=system), 405)
    assert_outcome(await http.get(f"{FHIR}//Patient", headers=system), 404)
    assert_outcome(await http.get(f"{FHIR}/Patient/{created['id']}//_history", headers=system), 404)
    assert_outcome(await http.get(f"{path}/_history/1/extra", headers=system), 404)
    assert_outcome(
        await http.get(f"/r4/Patient/{created['id']}/_history/1/a/b", headers=system), 404
    )


async def test_a_body_over_the_size_limit_is_a_413_operation_outcome(
    running: Running, system: dict[str, str]
) -> None:
    limit = running.services.settings.request_body_limit
    body = patient(text={"status": "generated", "div": "<div>" + "x" * limit + "</div>"})
    response = await send(running.http, "POST", f"{FHIR}/Patient", system, body)
    assert_outcome(response, 413)


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "application/xml", ""]
)
async def test_a_body_not_sent_as_json_is_415(
    running: Running, system: dict[str, str], content_type: str
) -> None:
    http = running.http
    body = patient(id="typed")
    post = await send(http, "POST", f"{FHIR}/Patient", system, body, content_type=content_type)
    assert_outcome(post, 415, "not-supported")
    put = await send(http, "PUT", f"{FHIR}/Patient/typed", system, body, content_type=content_type)
    assert_outcome(put, 415, "not-supported")
    assert_outcome(await http.get(f"{FHIR}/Patient/typed", headers=system), 404)


@pytest.mark.parametrize(
    "content_type",
    ["application/fhir+json", "application/fhir+json; charset=utf-8", "application/json"],
)
async def test_json_media_types_are_accepted(
    running: Running, system: dict[str, str], content_type: str
) -> None:
    response = await send(
        running.http, "POST", f"{FHIR}/Patient", system, patient(), content_type=content_type
    )
    assert response.status_code == 201, response.text


@pytest.mark.parametrize(
    ("query", "accept"),
    [
        ("_format=xml", None),
        ("_format=application/fhir%2Bxml", None),
        ("_format=ttl", None),
        ("_format=xml", "application/fhir+json"),  # _format overrides Accept
        ("", "application/fhir+xml"),
        ("", "application/xml, text/xml"),
        ("", "application/fhir+json;q=0, application/fhir+xml"),
        ("", "text/turtle"),
    ],
)
async def test_a_format_other_than_json_is_406(
    running: Running, system: dict[str, str], query: str, accept: str | None
) -> None:
    created = (await create(running.http, system, patient()))["id"]
    headers = system if accept is None else {**system, "Accept": accept}
    for url in (f"{FHIR}/Patient/{created}?{query}", f"{FHIR}/Patient?{query}"):
        assert_outcome(await running.http.get(url, headers=headers), 406, "not-supported")
    refused = await running.http.get(f"{FHIR}/metadata?{query}", headers=headers)
    assert_outcome(refused, 406, "not-supported")
    if query:  # the same parameter in a POST _search body
        form = {**headers, "Content-Type": "application/x-www-form-urlencoded"}
        posted = await running.http.post(f"{FHIR}/Patient/_search", content=query, headers=form)
        assert_outcome(posted, 406, "not-supported")


@pytest.mark.parametrize(
    ("query", "accept"),
    [
        ("_format=json", None),
        ("_format=application/fhir%2Bjson", None),
        ("_format=application/json", "application/fhir+xml"),  # _format overrides Accept
        ("", "application/json"),
        ("", "application/fhir+json; fhirVersion=4.0"),
        ("", "application/fhir+xml;q=0.9, application/fhir+json;q=0.5"),
        ("", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),  # a browser
        ("", ""),
    ],
)
async def test_json_is_served_when_the_client_admits_it(
    running: Running, system: dict[str, str], query: str, accept: str | None
) -> None:
    created = (await create(running.http, system, patient()))["id"]
    headers = system if accept is None else {**system, "Accept": accept}
    read = await running.http.get(f"{FHIR}/Patient/{created}?{query}", headers=headers)
    assert read.status_code == 200, read.text
    assert_fhir_json(read)
    assert read.json()["id"] == created


@pytest.mark.parametrize("resource_type", ["Nope", "patient", "PATIENT", "OperationOutcomes"])
async def test_an_unknown_resource_type_is_404(
    running: Running, system: dict[str, str], resource_type: str
) -> None:
    http = running.http
    path = f"{FHIR}/{resource_type}"
    body = {"resourceType": resource_type, "id": "1"}
    for response in (
        await http.get(f"{path}/1", headers=system),
        await http.get(f"{path}/1/_history", headers=system),
        await http.get(f"{path}/1/_history/1", headers=system),
        await send(http, "POST", path, system, body),
        await send(http, "PUT", f"{path}/1", system, body),
        await http.delete(f"{path}/1", headers=system),
    ):
        assert_outcome(response, 404, "not-found")


@pytest.mark.parametrize("bad_id", ["bad$id", "a" * 65, "bad_id", "b%C3%A9", "a,b", "~x"])
async def test_an_invalid_id_is_400(running: Running, system: dict[str, str], bad_id: str) -> None:
    http = running.http
    path = f"{FHIR}/Patient/{bad_id}"
    for response in (
        await http.get(path, headers=system),
        await http.get(f"{path}/_history", headers=system),
        await http.get(f"{path}/_history/1", headers=system),
        await send(http, "PUT", path, system, patient(id=bad_id)),
        await http.delete(path, headers=system),
    ):
        assert_outcome(response, 400, "invalid")


async def test_the_longest_valid_id_is_accepted(running: Running, system: dict[str, str]) -> None:
    longest = "A-z.9" * 12 + "abcd"
    assert len(longest) == 64
    path = f"{FHIR}/Patient/{longest}"
    assert_outcome(await running.http.get(path, headers=system), 404, "not-found")
    created = await send(running.http, "PUT", path, system, patient(id=longest))
    assert created.status_code == 201, created.text


# --------------------------------------------------------------------------- delete


async def test_delete_is_204_then_read_is_410_vread_still_works_and_history_records_it(
    running: Running, system: dict[str, str]
) -> None:
    http = running.http
    created = await create(http, system, patient())
    path = f"{FHIR}/Patient/{created['id']}"
    deleted = await http.delete(path, headers=system)
    assert deleted.status_code == 204, deleted.text
    assert deleted.content == b""

    assert_outcome(await http.get(path, headers=system), 410, "deleted")
    old = await http.get(f"{path}/_history/1", headers=system)
    assert old.status_code == 200 and old.json() == created, old.text
    assert_outcome(await http.get(f"{path}/_history/2", headers=system), 410, "deleted")

    history = await http.get(f"{path}/_history", headers=system)
    assert history.status_code == 200, history.text
    bundle = history.json()
    assert bundle["type"] == "history" and bundle["total"] == 2
    deletion, creation = bundle["entry"]
    assert deletion["request"] == {"method": "DELETE", "url": f"Patient/{created['id']}"}
    assert "resource" not in deletion
    assert deletion["response"]["status"].startswith("204")
    assert deletion["response"]["etag"] == 'W/"2"'
    assert creation["resource"] == created


async def test_deleting_twice_or_an_unknown_id_is_404(
    running: Running, system: dict[str, str]
) -> None:
    http = running.http
    created = await create(http, system, patient())
    path = f"{FHIR}/Patient/{created['id']}"
    assert (await http.delete(path, headers=system)).status_code == 204
    assert_outcome(await http.delete(path, headers=system), 404, "not-found")
    unknown = await http.delete(f"{FHIR}/Patient/{missing_id()}", headers=system)
    assert_outcome(unknown, 404, "not-found")
    history = await http.get(f"{path}/_history", headers=system)
    assert history.json()["total"] == 2  # the second delete added no version


async def test_history_of_an_unknown_resource_is_404(
    running: Running, system: dict[str, str]
) -> None:
    response = await running.http.get(f"{FHIR}/Patient/{missing_id()}/_history", headers=system)
    assert_outcome(response, 404, "not-found")


# --------------------------------------------------------------------------- authentication


async def test_no_token_is_401_operation_outcome_with_a_bearer_challenge(
    running: Running, system: dict[str, str]
) -> None:
    http = running.http
    created = await create(http, system, patient())
    path = f"{FHIR}/Patient/{created['id']}"
    for response in (
        await http.get(path),
        await http.get(f"{path}/_history"),
        await http.get(f"{path}/_history/1"),
        await send(http, "POST", f"{FHIR}/Patient", {}, patient()),
        await send(http, "PUT", path, {}, created),
        await http.delete(path),
        await http.get("/r4/Patient/x"),
        await http.get("/fhir/R4/default/Development/Patient/x"),
    ):
        assert_outcome(response, 401, "login")
        assert response.headers["www-authenticate"] == 'Bearer realm="fhirgate"'
    assert (await http.get(path, headers=system)).json() == created


@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer not-a-token",
        "Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.",
        "Bearer a.b.c",
        "Bearer " + "x" * 5000,
        "Basic dXNlcjpwYXNz",
        "Bearer",
    ],
    ids=["opaque", "alg-none", "garbage-jwt", "huge", "basic", "empty"],
)
async def test_a_bad_token_is_401_invalid_token(
    running: Running, system: dict[str, str], authorization: str
) -> None:
    http = running.http
    created = await create(http, system, patient())
    headers = {"Authorization": authorization}
    for response in (
        await http.get(f"{FHIR}/Patient/{created['id']}", headers=headers),
        await send(http, "POST", f"{FHIR}/Patient", headers, patient()),
        await http.delete(f"{FHIR}/Patient/{created['id']}", headers=headers),
    ):
        assert_outcome(response, 401, "login")
        challenge = response.headers["www-authenticate"]
        assert challenge.startswith('Bearer realm="fhirgate"'), challenge
        assert 'error="invalid_token"' in challenge, challenge
    assert (await http.get(f"{FHIR}/Patient/{created['id']}", headers=system)).json() == created


# --------------------------------------------------------------------------- the Redox alias


@pytest.mark.parametrize("environment", ["Development", "development", "DEVELOPMENT"])
async def test_the_redox_alias_accepts_the_environment_in_any_case(
    running: Running, system: dict[str, str], environment: str
) -> None:
    created = await create(running.http, system, patient())
    path = f"/fhir/R4/default/{environment}/Patient/{created['id']}"
    response = await running.http.get(path, headers=system)
    assert response.status_code == 200, response.text
    assert response.json() == created


@pytest.mark.parametrize(
    ("organization", "environment"),
    [
        ("other-org", "Development"),
        ("no-such-org", "Development"),
        ("default", "Production"),
        ("default", "staging"),
    ],
)
async def test_the_redox_alias_with_another_organization_or_environment_is_403(
    running: Running, system: dict[str, str], organization: str, environment: str
) -> None:
    http = running.http
    await other_org_headers(running, "other-org")  # that organization exists
    created = await create(http, system, patient())
    base = f"/fhir/R4/{organization}/{environment}"
    path = f"{base}/Patient/{created['id']}"
    for response in (
        await http.get(path, headers=system),
        await http.get(f"{path}/_history", headers=system),
        await http.get(f"{path}/_history/1", headers=system),
        await send(http, "POST", f"{base}/Patient", system, patient()),
        await send(http, "PUT", path, system, created | {"gender": "male"}),
        await http.delete(path, headers=system),
    ):
        assert_outcome(response, 403, "forbidden")
    assert (await http.get(f"{FHIR}/Patient/{created['id']}", headers=system)).json() == created


async def test_an_environment_redox_does_not_have_is_no_fhir_base(
    running: Running, system: dict[str, str]
) -> None:
    created = await create(running.http, system, patient())
    path = f"/fhir/R4/default/Sandbox/Patient/{created['id']}"
    assert_outcome(await running.http.get(path, headers=system), 404)


async def test_another_organizations_token_through_its_own_redox_path_sees_only_its_data(
    running: Running, system: dict[str, str]
) -> None:
    http = running.http
    theirs = await other_org_headers(running, "other-org")
    ours = await create(http, system, patient())
    their_base = "/fhir/R4/other-org/Development"
    assert_outcome(await http.get(f"{their_base}/Patient/{ours['id']}", headers=theirs), 404)
    assert_outcome(
        await http.get(f"/fhir/R4/default/Development/Patient/{ours['id']}", headers=theirs), 403
    )
    made = await create(http, theirs, patient(gender="male"), their_base)
    assert (await http.get(f"{their_base}/Patient/{made['id']}", headers=theirs)).json() == made
    assert_outcome(await http.get(f"{FHIR}/Patient/{made['id']}", headers=system), 404)


# --------------------------------------------------------------------------- error bodies


async def test_every_error_is_an_operation_outcome_without_internals(
    running: Running, system: dict[str, str]
) -> None:
    """One sweep over every error the API gives; each is FHIR JSON with an issue code and
    diagnostics, never a stack trace, SQL or a framework's default error body."""
    http = running.http
    created = await create(http, system, patient())
    path = f"{FHIR}/Patient/{created['id']}"
    await updated(http, system, created, gender="male")
    gone = await create(http, system, patient())
    await http.delete(f"{FHIR}/Patient/{gone['id']}", headers=system)
    errors = {
        "no token": (await http.get(path), 401),
        "bad token": (await http.get(path, headers=bearer("x.y.z")), 401),
        "unknown type": (await http.get(f"{FHIR}/Nope/1", headers=system), 404),
        "bad id": (await http.get(f"{FHIR}/Patient/bad$id", headers=system), 400),
        "missing": (await http.get(f"{FHIR}/Patient/{missing_id()}", headers=system), 404),
        "gone": (await http.get(f"{FHIR}/Patient/{gone['id']}", headers=system), 410),
        "stale": (await updated(http, system | {"If-Match": 'W/"1"'}, created), 412),
        "bad if-match": (await updated(http, system | {"If-Match": "x"}, created), 400),
        "not json": (await send(http, "POST", f"{FHIR}/Patient", system, b"{"), 400),
        "media type": (
            await send(http, "POST", f"{FHIR}/Patient", system, patient(), content_type="text/a"),
            415,
        ),
        "id mismatch": (await send(http, "PUT", path, system, patient(id="x")), 400),
        "redox tenant": (
            await http.get("/fhir/R4/nobody/Development/Patient/1", headers=system),
            403,
        ),
        "sql-looking id": (
            await http.get(f"{FHIR}/Patient/1'%20OR%20'1'='1", headers=system),
            400,
        ),
        "sql-looking type": (
            await http.get(f"{FHIR}/Patient';DROP%20TABLE%20x;--/1", headers=system),
            404,
        ),
    }
    for name, (response, status) in errors.items():
        assert response.status_code == status, (name, response.text)
        assert_outcome(response, status)
