"""Work one search may ask for: at most ``FHIRGATE_SEARCH_MAX_REPEATS`` (10) of each of
``_include``, ``_revinclude`` and ``_sort``; more is a 400 ``too-costly`` OperationOutcome before
any statement runs (issue 15: 2,000 ``_include`` parameters took 2.2 s)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import urlencode

import pytest

from fhirgate.config import Settings
from tests.fhir.support import assert_outcome, create, observation, patient, send, system_headers
from tests.support import Running, start

INCLUDE = ("_include", "Observation:subject")
REVINCLUDE = ("_revinclude", "Observation:subject")
SORT = ("_sort", "_id")


@pytest.mark.parametrize(
    ("resource_type", "repeated"),
    [("Observation", INCLUDE), ("Patient", REVINCLUDE), ("Observation", SORT)],
)
async def test_more_than_ten_of_a_repeatable_parameter_is_too_costly(
    running: Running, resource_type: str, repeated: tuple[str, str]
) -> None:
    headers = await system_headers(running)
    ten = urlencode([repeated] * 10)
    allowed = await running.http.get(f"/fhir/R4/{resource_type}?{ten}", headers=headers)
    assert allowed.status_code == 200, allowed.text
    for query in (urlencode([repeated] * 11), urlencode([repeated] * 500)):
        refused = await running.http.get(f"/fhir/R4/{resource_type}?{query}", headers=headers)
        issue = assert_outcome(refused, 400, "too-costly")
        assert repeated[0] in issue["diagnostics"]
    by_post = await send(
        running.http,
        "POST",
        f"/fhir/R4/{resource_type}/_search",
        headers,
        urlencode([repeated] * 11).encode(),
        content_type="application/x-www-form-urlencoded",
    )
    assert_outcome(by_post, 400, "too-costly")


async def test_ten_includes_still_include(running: Running) -> None:
    headers = await system_headers(running)
    subject = await create(running.http, headers, patient())
    await create(running.http, headers, observation(f"Patient/{subject['id']}"))
    query = urlencode([INCLUDE] * 10)
    found = await running.http.get(f"/fhir/R4/Observation?{query}", headers=headers)
    modes = sorted(entry["search"]["mode"] for entry in found.json()["entry"])
    assert modes == ["include", "match"]


async def test_a_batch_search_entry_past_the_limit_answers_its_own_400(running: Running) -> None:
    headers = await system_headers(running)
    url = "Observation?" + urlencode([INCLUDE] * 11)
    posted = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"request": {"method": "GET", "url": url}},
            {"request": {"method": "GET", "url": "Observation?_count=1"}},
        ],
    }
    answer = await running.http.post("/fhir/R4", json=posted, headers=headers)
    assert answer.status_code == 200, answer.text
    refused, searched = answer.json()["entry"]
    assert refused["response"]["status"] == "400 Bad Request"
    assert refused["response"]["outcome"]["issue"][0]["code"] == "too-costly"
    assert searched["response"]["status"] == "200 OK"


@pytest.fixture
async def two_at_most(sqlite_settings: Settings) -> AsyncIterator[Running]:
    running, stack = await start(sqlite_settings.model_copy(update={"search_max_repeats": 2}))
    try:
        yield running
    finally:
        await stack.aclose()


async def test_the_limit_is_the_setting(two_at_most: Running) -> None:
    headers = await system_headers(two_at_most)
    for count, status in ((2, 200), (3, 400)):
        query = urlencode([INCLUDE] * count)
        answer = await two_at_most.http.get(f"/fhir/R4/Observation?{query}", headers=headers)
        assert answer.status_code == status, answer.text
