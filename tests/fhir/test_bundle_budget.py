"""A Bundle's budget (``FHIRGATE_BUNDLE_MAX_ENTRIES``, ``_RESOURCES``, ``_SECONDS``), the order a
transaction runs in (its reads after its writes commit, outside the write lock), and an entry's
own error in a batch whatever the exception (issue 15, items 5, 6 and 10)."""

from __future__ import annotations

import contextlib
import sqlite3
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from fhirgate.config import Settings
from fhirgate.fhir.interactions import Interactions
from fhirgate.storage.db import sqlite_path
from tests.fhir.support import assert_outcome, create, patient, system_headers
from tests.fhir.test_bundles import bundle, entry
from tests.support import Running, start

#: A search date whose time zone takes it before year 1: Python raises inside the parser
#: (OverflowError), a fault of the kind no Bundle entry may turn into a 500 for the Bundle.
#: A search the parser refuses (hour 25); it raised OverflowError once, at the calendar's edge.
REFUSED_DATE = "Observation?date=2020-01-01T25:00%2B14:00"


@contextlib.asynccontextmanager
async def serving(settings: Settings, **budget: Any) -> AsyncIterator[Running]:
    """The app with ``settings`` changed by ``budget`` (``bundle_max_*`` fields)."""
    running, stack = await start(settings.model_copy(update=budget))
    try:
        yield running
    finally:
        await stack.aclose()


def marked(family: str) -> Any:
    return entry("POST", "Patient", patient(name=[{"family": family}]))


async def families(running: Running, headers: dict[str, str], family: str) -> int:
    found = await running.http.get(f"/fhir/R4/Patient?family={family}", headers=headers)
    assert found.status_code == 200, found.text
    total: int = found.json()["total"]
    return total


def statuses(answer: Any) -> list[str]:
    return [item["response"]["status"] for item in answer.json()["entry"]]


def outcome_code(item: dict[str, Any]) -> str:
    code: str = item["response"]["outcome"]["issue"][0]["code"]
    return code


def family() -> str:
    return "F" + uuid.uuid4().hex[:12]


@pytest.mark.parametrize("kind", ["batch", "transaction"])
async def test_more_entries_than_the_budget_refuse_the_whole_bundle_before_any_runs(
    backend_settings: Settings, kind: str
) -> None:
    async with serving(backend_settings, bundle_max_entries=3) as running:
        headers = await system_headers(running)
        name = family()
        three = await running.http.post(
            "/fhir/R4", json=bundle(kind, *[marked(name)] * 3), headers=headers
        )
        assert three.status_code == 200, three.text
        four = await running.http.post(
            "/fhir/R4", json=bundle(kind, *[marked(name)] * 4), headers=headers
        )
        assert "at most 3 entries" in assert_outcome(four, 400, "too-costly")["diagnostics"]
        assert await families(running, headers, name) == 3  # none of the four


async def test_a_batch_past_its_resource_budget_answers_the_rest_too_costly(
    backend_settings: Settings,
) -> None:
    """Entries run until the answer's resources reach the budget; a search that would pass it
    is dropped and answered 400 too-costly, and so is every entry after it — not run. What ran
    before stands."""
    async with serving(backend_settings, bundle_max_resources=5) as running:
        headers = await system_headers(running)
        searched, before, after = family(), family(), family()
        for _ in range(3):
            await create(running.http, headers, patient(name=[{"family": searched}]))
        posted = bundle(
            "batch",
            entry("GET", f"Patient?family={searched}"),  # 3 resources
            marked(before),  # 4
            entry("GET", f"Patient?family={searched}"),  # would be 7: refused
            marked(after),  # refused: not run
        )
        answer = await running.http.post("/fhir/R4", json=posted, headers=headers)
        assert answer.status_code == 200, answer.text
        assert answer.json()["type"] == "batch-response"
        assert statuses(answer) == ["200 OK", "201 Created", "400 Bad Request", "400 Bad Request"]
        refused = answer.json()["entry"][2:]
        assert [outcome_code(item) for item in refused] == ["too-costly", "too-costly"]
        assert await families(running, headers, before) == 1
        assert await families(running, headers, after) == 0


async def test_a_transaction_whose_searches_may_pass_the_budget_commits_nothing(
    backend_settings: Settings,
) -> None:
    """A transaction's reads run after its commit, so their budget is judged before anything
    is written, by the most they may answer: ``_count``, plus the include limit (1000) per
    ``_include``."""
    async with serving(backend_settings, bundle_max_resources=5) as running:
        headers = await system_headers(running)
        name = family()
        for search in ("Patient?_count=6", "Observation?_count=1&_include=Observation:subject"):
            posted = bundle("transaction", marked(name), entry("GET", search))
            answer = await running.http.post("/fhir/R4", json=posted, headers=headers)
            assert "budget of 5" in assert_outcome(answer, 400, "too-costly")["diagnostics"]
        assert await families(running, headers, name) == 0
        posted = bundle(
            "transaction", marked(name), entry("GET", f"Patient?family={name}&_count=4")
        )
        answer = await running.http.post("/fhir/R4", json=posted, headers=headers)
        assert statuses(answer) == ["201 Created", "200 OK"]
        assert answer.json()["entry"][1]["resource"]["total"] == 1  # the search saw the write


async def test_past_the_time_budget_a_transaction_commits_nothing_and_a_batch_runs_nothing(
    backend_settings: Settings,
) -> None:
    async with serving(backend_settings, bundle_max_seconds=1e-6) as running:
        headers = await system_headers(running)
        name = family()
        posted = bundle("transaction", marked(name), marked(name))
        answer = await running.http.post("/fhir/R4", json=posted, headers=headers)
        assert "seconds" in assert_outcome(answer, 400, "too-costly")["diagnostics"]
        batch = await running.http.post(
            "/fhir/R4", json=bundle("batch", marked(name)), headers=headers
        )
        assert statuses(batch) == ["400 Bad Request"]
        assert outcome_code(batch.json()["entry"][0]) == "too-costly"
        assert await families(running, headers, name) == 0


async def test_a_transactions_searches_run_outside_its_write_lock(
    running: Running, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On SQLite a write transaction holds the database's only write lock, which every other
    request's audit row needs: while a transaction's search runs, another connection can
    still write."""
    path = sqlite_path(settings.database_url)
    could_write: list[bool] = []
    search = Interactions.search

    async def observed(self: Interactions, *args: Any, **kwargs: Any) -> dict[str, Any]:
        with contextlib.closing(sqlite3.connect(path, timeout=0, isolation_level=None)) as db:
            try:
                db.execute("BEGIN IMMEDIATE")
                db.execute("ROLLBACK")
                could_write.append(True)
            except sqlite3.OperationalError:  # database is locked
                could_write.append(False)
        return await search(self, *args, **kwargs)

    monkeypatch.setattr(Interactions, "search", observed)
    headers = await system_headers(running)
    name = family()
    posted = bundle("transaction", marked(name), entry("GET", f"Patient?family={name}"))
    answer = await running.http.post("/fhir/R4", json=posted, headers=headers)
    assert statuses(answer) == ["201 Created", "200 OK"], answer.text
    assert answer.json()["entry"][1]["resource"]["total"] == 1
    assert could_write == [True]


async def test_a_transactions_read_answers_what_is_there_after_the_commit(
    server: Running,
) -> None:
    """A read runs after the commit (FHIR R4 §3.1.0.11.2): one of a resource that is not there
    is that entry's own 404; the writes are committed by then."""
    headers = await system_headers(server)
    name = family()
    posted = bundle("transaction", marked(name), entry("GET", "Patient/not-there"))
    answer = await server.http.post("/fhir/R4", json=posted, headers=headers)
    assert answer.json()["type"] == "transaction-response"
    assert statuses(answer) == ["201 Created", "404 Not Found"]
    assert outcome_code(answer.json()["entry"][1]) == "not-found"
    assert await families(server, headers, name) == 1


def explode_on(monkeypatch: pytest.MonkeyPatch, method: str, fault: Exception) -> None:
    """``Interactions.<method>`` raises ``fault`` on its second call (an internal fault no
    request can cause)."""
    original = getattr(Interactions, method)
    calls = []

    async def faulty(self: Interactions, *args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:
            raise fault
        return await original(self, *args, **kwargs)

    monkeypatch.setattr(Interactions, method, faulty)


@pytest.mark.parametrize(
    ("fault", "status"),
    [
        (RuntimeError("internal detail"), "500 Internal Server Error"),
        (ConnectionError("internal detail"), "503 Service Unavailable"),  # the storage's
    ],
)
async def test_a_batch_entry_that_raises_answers_its_own_5xx_and_the_others_stand(
    server: Running, monkeypatch: pytest.MonkeyPatch, fault: Exception, status: str
) -> None:
    headers = await system_headers(server)
    first, third = family(), family()
    explode_on(monkeypatch, "create", fault)
    posted = bundle("batch", marked(first), marked(family()), marked(third))
    answer = await server.http.post("/fhir/R4", json=posted, headers=headers)
    assert answer.status_code == 200, answer.text
    assert statuses(answer) == ["201 Created", status, "201 Created"]
    failed = answer.json()["entry"][1]["response"]["outcome"]
    assert failed["resourceType"] == "OperationOutcome"
    assert failed["issue"][0]["code"] == "exception"
    assert "internal detail" not in answer.text and type(fault).__name__ not in answer.text
    assert await families(server, headers, first) == 1
    assert await families(server, headers, third) == 1


async def test_a_batch_search_that_raises_in_the_parser_answers_its_own_error(
    server: Running,
) -> None:
    """What the search parser refuses is that entry's answer (400): the Bundle is a
    batch-response and the write before it stands."""
    headers = await system_headers(server)
    name = family()
    posted = bundle("batch", marked(name), entry("GET", REFUSED_DATE))
    answer = await server.http.post("/fhir/R4", json=posted, headers=headers)
    assert answer.status_code == 200, answer.text
    created, searched = statuses(answer)
    assert created == "201 Created"
    assert searched[:3] == "400"
    outcome = answer.json()["entry"][1]["response"]["outcome"]
    assert outcome["resourceType"] == "OperationOutcome"
    assert await families(server, headers, name) == 1


async def test_a_transaction_with_an_entry_that_raises_commits_nothing(
    server: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    headers = await system_headers(server)
    name = family()
    searching = bundle("transaction", marked(name), entry("GET", REFUSED_DATE))
    answer = await server.http.post("/fhir/R4", json=searching, headers=headers)
    assert answer.status_code == 400, answer.text
    assert answer.json()["resourceType"] == "OperationOutcome"
    explode_on(monkeypatch, "create", RuntimeError("internal detail"))
    writing = bundle("transaction", marked(name), marked(name), marked(name))
    answer = await server.http.post("/fhir/R4", json=writing, headers=headers)
    assert answer.status_code == 500
    assert answer.json()["resourceType"] == "OperationOutcome"
    assert "internal detail" not in answer.text
    assert await families(server, headers, name) == 0
