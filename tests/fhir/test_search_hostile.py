"""Hostile search input (issue 15, item 10): the edges of the calendar with zone offsets, huge
numbers, odd prefixes, other scripts' digits, NUL and lone surrogates get a 400
OperationOutcome, or the answer the specification gives — never a 5xx. Property-based tests
(Hypothesis) check that the parser raises nothing but :class:`Invalid` over thousands of
generated queries, and that the app answers generated queries without a 5xx."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fhirgate.fhir.errors import Invalid
from fhirgate.fhir.indexing import date_range
from fhirgate.fhir.search import Binder, parse_search, restricted_to
from fhirgate.fhir.search_params import PARAMETERS
from tests.fhir.support import assert_outcome, create, observation, system_headers
from tests.support import Running

#: Valid FHIR dates at the edges of the calendar: each one is searched like any other.
EDGES = (
    "0001-01-01T00:00+14:00",  # before 0001-01-01T00:00Z: outside datetime's range
    "0001-01-01T00:00:00+14:00",
    "0001",
    "0001-01",
    "9999",
    "9999-12",
    "9999-12-31",
    "9999-12-31T23:59-14:00",  # after 9999-12-31T23:59:59Z
    "9999-12-31T23:59:60Z",  # a leap second
)
#: Not FHIR dates: each one is a 400.
NOT_DATES = (
    "0000",
    "2024-00",
    "2024-02-30",
    "2024-01-01T24:00Z",
    "2024-01-01T10:60Z",
    "2024-01-01T10:00:61Z",
    "2024-01-01T10:00+14:01",
    "2024-01-01T10:00+15:00",
    "2024-01-01T10:00-99:99",
    "\u0662\u0660\u0662\u0664",  # 2024 in Arabic-Indic digits
    "\uff12\uff10\uff12\uff14",  # fullwidth digits
    "xx2024",
    "ge",
    "2024-01-01T10",
    "9" * 5000,
)


@pytest.mark.parametrize("value", EDGES)
@pytest.mark.parametrize("prefix", ["", "lt", "ge", "sa", "eb", "ap", "ne"])
def test_a_date_at_the_calendars_edge_is_a_range(prefix: str, value: str) -> None:
    covered = date_range(value)
    assert covered is not None and covered[0] < covered[1]
    request = parse_search("Observation", [("date", prefix + value)], False)
    assert request.conditions
    request = parse_search("Observation", [("_lastUpdated", prefix + value)], False)
    assert request.conditions


@pytest.mark.parametrize("value", NOT_DATES)
def test_what_is_not_a_date_is_invalid(value: str) -> None:
    assert date_range(value) is None
    for name in ("date", "_lastUpdated"):
        with pytest.raises(Invalid):
            parse_search("Observation", [(name, value)], False)


@pytest.mark.parametrize("name", ["_count", "_offset"])
@pytest.mark.parametrize("value", ["²", "\u0661\u0662", "1e3", "-1", " 1", "0x10", ""])
def test_page_numbers_are_ascii_digits(name: str, value: str) -> None:
    with pytest.raises(Invalid):
        parse_search("Patient", [(name, value)], False)


def test_a_huge_count_is_capped_not_refused() -> None:
    """FHIR R4 search.html#count: the server may return fewer than asked, so a count of any
    length is the largest page (no int() of 5,000 digits, which Python refuses)."""
    assert parse_search("Patient", [("_count", "9" * 5000)], False).count == 500
    assert parse_search("Patient", [("_offset", "9" * 5000)], False).offset == 10**9
    assert parse_search("Patient", [("_count", "0" * 5000 + "7")], False).count == 7


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("family", "a\x00b"),
        ("fam\x00ily", "x"),
        ("_id", "\x00"),
        ("family", "\ud800"),  # a lone surrogate
        ("_sort", "\udfff"),
    ],
)
def test_nul_and_lone_surrogates_are_invalid(name: str, value: str) -> None:
    with pytest.raises(Invalid):
        parse_search("Patient", [(name, value)], False)


async def test_the_reported_query_is_answered(server: Running) -> None:
    """``Observation?date=0001-01-01T00:00+14:00`` (the ``+`` sent as ``%2B``: a bare one is a
    space) was a 500 (OverflowError); it is a date like any other, and a resource at that
    instant is found by it."""
    headers = await system_headers(server)
    edge = await create(
        server.http, headers, observation(effectiveDateTime="0001-01-01T00:00:00+14:00")
    )
    late = await create(
        server.http, headers, observation(effectiveDateTime="9999-12-31T23:59:59-14:00")
    )
    found = await server.http.get(
        "/fhir/R4/Observation?date=0001-01-01T00:00%2B14:00", headers=headers
    )
    assert found.status_code == 200, found.text
    assert [entry["resource"]["id"] for entry in found.json()["entry"]] == [edge["id"]]
    after = await server.http.get("/fhir/R4/Observation?date=gt9999-12-31", headers=headers)
    assert [entry["resource"]["id"] for entry in after.json()["entry"]] == [late["id"]]
    for value in EDGES:
        for name in ("date", "_lastUpdated"):
            query = urlencode({name: value})
            response = await server.http.get(f"/fhir/R4/Observation?{query}", headers=headers)
            assert response.status_code == 200, (query, response.text)


async def test_hostile_values_are_400_operation_outcomes(server: Running) -> None:
    headers = await system_headers(server)
    queries = [
        *(urlencode({"date": value}) for value in NOT_DATES),
        "family=a%00b",
        "fam%00ily=x",
        "_id=%00",
        "_count=%C2%B2",  # ²
        "_count=1e3",
        "_sort=%00",
        "_lastUpdated=ge0000",
    ]
    for query in queries:
        response = await server.http.get(f"/fhir/R4/Patient?{query}", headers=headers)
        assert_outcome(response, 400, "invalid")
    huge = await server.http.get(f"/fhir/R4/Patient?_count={'9' * 5000}", headers=headers)
    assert huge.status_code == 200 and "_count=500" in huge.json()["link"][0]["url"]
    past = await server.http.get(f"/fhir/R4/Patient?_offset={'9' * 5000}", headers=headers)
    assert past.status_code == 200 and past.json().get("entry", []) == []


async def test_a_hostile_search_in_a_batch_is_that_entrys_400(server: Running) -> None:
    headers = await system_headers(server)
    posted = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"request": {"method": "GET", "url": "Observation?date=0001-01-01T00:00%2B14:00"}},
            {"request": {"method": "GET", "url": "Observation?date=2024-01-01T10:00%2B15:00"}},
            {"request": {"method": "GET", "url": f"Patient?_count={'9' * 5000}"}},
        ],
    }
    answer = await server.http.post("/fhir/R4", json=posted, headers=headers)
    assert answer.status_code == 200, answer.text
    statuses = [item["response"]["status"] for item in answer.json()["entry"]]
    assert statuses == ["200 OK", "400 Bad Request", "200 OK"]


# --------------------------------------------------------------------------- properties

#: Names a search may carry: every indexed parameter, with and without modifiers, the common
#: and result parameters, and arbitrary text.
_KNOWN = sorted({param.name for params in PARAMETERS.values() for param in params})
_NAMES = st.one_of(
    st.sampled_from(
        [
            *_KNOWN,
            "_id",
            "_lastUpdated",
            "_tag",
            "_profile",
            "_count",
            "_offset",
            "_total",
            "_sort",
            "_include",
            "_revinclude",
            "_summary",
            "_elements",
            "_format",
            "_include:iterate",
        ]
    ),
    st.builds(
        lambda name, modifier: f"{name}:{modifier}",
        st.sampled_from(_KNOWN),
        st.sampled_from(["exact", "contains", "not", "missing", "Patient", "text", "", "above"]),
    ),
    st.text(max_size=20),
)
#: Digits, ASCII and others (superscripts and other scripts' digits pass ``str.isdigit``).
_DIGITS = st.one_of(
    st.text(alphabet="0123456789", min_size=1, max_size=12),
    st.text(alphabet="0123456789²³¹\u0661\u0662\uff11", min_size=1, max_size=6),
    st.integers(0, 6000).map(lambda size: "9" * size),
)
_DATES = st.builds(
    lambda prefix, y, m, d, time, zone: f"{prefix}{y}{m}{d}{time}{zone}",
    st.sampled_from(["", "eq", "ne", "lt", "gt", "le", "ge", "sa", "eb", "ap", "xx"]),
    st.one_of(st.sampled_from([0, 1, 1970, 9999]), st.integers(0, 9999)).map(lambda y: f"{y:04d}"),
    st.sampled_from(["", "-00", "-01", "-02", "-12", "-13", "-99"]),
    st.sampled_from(["", "-00", "-01", "-28", "-29", "-30", "-31", "-32"]),
    st.sampled_from(["", "T00:00", "T23:59", "T24:00", "T12:60", "T10:00:59", "T10:00:60.123"]),
    st.sampled_from(["", "Z", "+14:00", "-14:00", "+14:01", "+13:59", "-99:99", "+00:00"]),
)
_VALUES = st.one_of(
    _DATES,
    _DIGITS,
    st.sampled_from(
        [
            "Observation:subject",
            "Observation:patient:Patient",
            "Patient:link",
            "a:b:c:d",
            "true",
            "count",
            "text",
            "data",
            "id,meta,status",
            "value",
            "bogus",
            "-birthdate",
            "http://loinc.org|8867-4",
            "|x",
            "x|",
            "Patient/1",
            "https://x/Patient/1/_history/2",
        ]
    ),
    st.text(max_size=40),
    st.lists(st.text(max_size=8), max_size=4).map(",".join),
)
_PAIRS = st.lists(st.tuples(_NAMES, _VALUES), max_size=6)


@settings(max_examples=1000, deadline=None, database=None)
@given(
    resource_type=st.sampled_from(["Patient", "Observation", "Encounter", "Basic"]),
    pairs=_PAIRS,
    lenient=st.booleans(),
)
def test_the_parser_raises_only_invalid(
    resource_type: str, pairs: list[tuple[str, str]], lenient: bool
) -> None:
    try:
        request = parse_search(resource_type, pairs, lenient)
    except Invalid:
        return
    finally:
        restricted_to(resource_type, [frozenset(pairs)], Binder())  # never raises
    for value in request.bind.params.values():  # what every database accepts
        if isinstance(value, str):
            assert "\x00" not in value
            value.encode()
        else:
            number = int(value.timestamp()) if isinstance(value, datetime) else value
            assert isinstance(number, int) and abs(number) < 2**63


@settings(max_examples=2000, deadline=None, database=None)
@given(text=st.one_of(_DATES, st.text(max_size=40)))
def test_date_ranges_are_ranges_or_none(text: str) -> None:
    covered = date_range(text)
    assert covered is None or covered[0] < covered[1]


@settings(max_examples=150, deadline=None, database=None)
@given(
    resource_type=st.sampled_from(["Patient", "Observation"]),
    pairs=_PAIRS,
)
def _queries(collected: list[str], resource_type: str, pairs: list[tuple[str, str]]) -> None:
    query = "&".join(f"{quote(name, safe='')}={quote(value, safe='')}" for name, value in pairs)
    collected.append(f"/fhir/R4/{resource_type}?{query}")


async def test_generated_searches_never_get_a_5xx(server: Running) -> None:
    """Generated queries through the real app on each backend: answers, or 4xx
    OperationOutcomes (the queries are generated first, then sent)."""
    headers = await system_headers(server)
    await create(server.http, headers, observation(effectiveDateTime="2024-01-01T10:00:00Z"))
    collected: list[str] = []
    _queries(collected)
    assert len(collected) >= 100
    for url in collected:
        response = await server.http.get(url, headers=headers)
        assert response.status_code < 500, (url, response.text)
        if response.status_code >= 400:
            assert_outcome(response, response.status_code)
        else:
            body: dict[str, Any] = response.json()
            assert body["resourceType"] == "Bundle"
