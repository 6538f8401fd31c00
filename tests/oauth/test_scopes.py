"""SMART scopes (App Launch 2.x §scopes-and-launch-context): grammar, v1 ⇒ v2, coverage."""

from __future__ import annotations

import httpx
import pytest
from tests.support import MakeClient

from fhirgate.oauth.scopes import (
    ResourceScope,
    ScopeError,
    ScopeSet,
    narrow,
    parse_scope,
    parse_scopes,
)


def resource(text: str) -> ResourceScope:
    scope = parse_scope(text)
    assert isinstance(scope, ResourceScope)
    return scope


@pytest.mark.parametrize(
    ("text", "letters"),
    [
        ("system/Patient.read", "rs"),
        ("system/*.read", "rs"),
        ("system/Patient.write", "cud"),
        ("system/Patient.*", "cruds"),
        ("system/Observation.rs", "rs"),
        ("user/Observation.cruds", "cruds"),
        ("patient/Observation.c", "c"),
        ("system/Patient.ds", "ds"),
    ],
)
def test_v1_and_v2_permissions_mean_v2_letters(text: str, letters: str) -> None:
    scope = resource(text)
    assert scope.permissions == frozenset(letters)
    assert scope.text == text


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("admin/Patient.read", "unknown scope"),
        ("system/Patients.read", "unknown resource type"),
        ("system/patient.read", "unknown resource type"),
        ("system/Patient.readwrite", "unknown action"),
        ("system/Patient.x", "unknown action"),
        ("system/Patient.", "unknown action"),
        ("system/Patient.sr", "unknown action"),
        ("system/Patient.dus", "unknown action"),
        ("system/Patient.rr", "unknown action"),
        ("system/Observation.read?category=x", "need SMART v2"),
        ("system/Observation.rs?category", "malformed restriction"),
        ("system/Observation.rs?=x", "malformed restriction"),
        ("system/Observation.rs?category=", "malformed restriction"),
        ("system/Observation.rs?a=b&", "malformed restriction"),
        ('system/Patient.r"s', "forbids"),
        ("system/Patient.rs\\", "forbids"),
        ("system/Patient.rs\tsystem/Observation.rs", "forbids"),
        ("system/Pätient.rs", "forbids"),
        ("system/Patient", "unknown scope"),
    ],
)
def test_malformed_or_unknown_scopes_are_refused(text: str, reason: str) -> None:
    with pytest.raises(ScopeError, match=reason):
        parse_scopes(text)


def test_scope_count_and_length_are_bounded() -> None:
    with pytest.raises(ScopeError, match="more than 100"):
        parse_scopes(" ".join(["openid"] * 101))
    with pytest.raises(ScopeError, match="longer than 2048"):
        parse_scopes("system/Observation.rs?code=" + "x" * 2048)


def test_context_scopes_and_space_runs_are_accepted() -> None:
    scopes = parse_scopes("openid  fhirUser launch/patient   offline_access system/*.rs")
    assert scopes.other_scopes == ("openid", "fhirUser", "launch/patient", "offline_access")
    assert str(scopes) == "openid fhirUser launch/patient offline_access system/*.rs"


def test_restriction_values_may_hold_search_syntax() -> None:
    text = (
        "patient/Observation.rs?category="
        "http://terminology.hl7.org/CodeSystem/observation-category|laboratory&status=final"
    )
    scope = resource(text)
    assert scope.restrictions == frozenset(
        {
            ("category", "http://terminology.hl7.org/CodeSystem/observation-category|laboratory"),
            ("status", "final"),
        }
    )
    assert resource("system/Observation.rs?code:text=a=b").restrictions == {("code:text", "a=b")}


def test_scope_set_keeps_first_order_without_duplicates_and_the_clients_syntax() -> None:
    scopes = parse_scopes("system/Patient.read openid system/Patient.read system/Observation.rs")
    assert str(scopes) == "system/Patient.read openid system/Observation.rs"
    assert not scopes.is_empty


def test_allows_checks_context_type_and_permission() -> None:
    scopes = parse_scopes("system/Patient.read system/*.c user/Observation.rs?category=lab")
    assert scopes.allows("system", "Patient", "r")
    assert scopes.allows("system", "Patient", "s")
    assert not scopes.allows("system", "Patient", "u")
    assert scopes.allows("system", "Encounter", "c")  # wildcard type
    assert not scopes.allows("patient", "Patient", "r")  # another context
    assert not scopes.allows("user", "Observation", "r")  # restricted scopes need the request


@pytest.mark.parametrize(
    ("allowed", "requested"),
    [
        ("system/*.read", "system/Patient.rs"),
        ("system/*.read", "system/Patient.r"),
        ("system/*.read", "system/*.s"),
        ("system/Patient.r system/Patient.s", "system/Patient.rs"),
        ("system/Patient.r system/Patient.s", "system/Patient.read"),
        ("system/*.*", "system/Observation.write"),
        ("system/Observation.rs", "system/Observation.rs?category=laboratory"),
        ("system/Observation.rs?category=lab", "system/Observation.r?category=lab&status=final"),
        ("openid system/*.rs", "openid"),
    ],
)
def test_allowed_scopes_cover_narrower_requests(allowed: str, requested: str) -> None:
    granted = narrow(parse_scopes(requested), parse_scopes(allowed))
    assert str(granted) == requested


@pytest.mark.parametrize(
    ("allowed", "requested"),
    [
        ("system/Patient.rs", "system/*.rs"),
        ("system/Patient.read", "system/Patient.write"),
        ("system/Patient.read", "system/Patient.c"),
        ("system/*.rs", "patient/Patient.rs"),
        ("system/*.rs", "user/Patient.rs"),
        ("system/Observation.rs?category=lab", "system/Observation.rs"),
        ("system/Observation.rs?category=lab", "system/Observation.rs?category=vital"),
        ("system/*.rs", "openid"),
        ("system/Patient.r", "system/Patient.rs"),
    ],
)
def test_requests_beyond_the_allowance_are_refused(allowed: str, requested: str) -> None:
    with pytest.raises(ScopeError, match="not allowed for this client"):
        narrow(parse_scopes(requested), parse_scopes(allowed))


def test_the_refusal_names_only_the_scopes_beyond_the_allowance() -> None:
    with pytest.raises(ScopeError) as caught:
        narrow(
            parse_scopes("system/Patient.rs system/Condition.rs openid"),
            parse_scopes("system/Patient.rs"),
        )
    assert str(caught.value) == "not allowed for this client: system/Condition.rs openid"


def test_no_request_grants_the_allowance() -> None:
    allowed = parse_scopes("system/Patient.rs system/Observation.rs")
    assert narrow(None, allowed) is allowed


def test_parsed_sets_are_immutable_and_shared() -> None:
    first = parse_scopes("system/Patient.rs")
    assert parse_scopes("system/Patient.rs") is first  # cached: clients repeat their scopes
    assert isinstance(first, ScopeSet)
    with pytest.raises(AttributeError):
        first.texts = ()  # type: ignore[misc]


# Through the token endpoint ------------------------------------------------------------------


async def test_token_grants_the_requested_subset_in_the_clients_syntax(
    http: httpx.AsyncClient, make_client: MakeClient
) -> None:
    client = await make_client(scope="system/Patient.rs system/Observation.rs")
    response = await http.post("/oauth2/token", data=client.form(scope="system/Patient.read"))
    assert response.status_code == 200, response.text
    assert response.json()["scope"] == "system/Patient.read"


@pytest.mark.parametrize(
    "scope",
    ["system/Patient.rs system/Condition.rs", " ", "system/Patients.rs", "system/Patient.x"],
)
async def test_token_refuses_scopes_with_invalid_scope(
    http: httpx.AsyncClient, make_client: MakeClient, scope: str
) -> None:
    client = await make_client(scope="system/Patient.rs system/Observation.rs")
    response = await http.post("/oauth2/token", data=client.form(scope=scope))
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_scope"
    assert "access_token" not in response.json()


async def test_a_scope_without_a_value_counts_as_missing(
    http: httpx.AsyncClient, make_client: MakeClient
) -> None:
    """RFC 6749 §3.1: a parameter sent without a value is treated as omitted."""
    client = await make_client()
    response = await http.post("/oauth2/token", data=client.form(scope=""))
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"
    assert "scope" in response.json()["error_description"]


async def test_a_malformed_scope_does_not_burn_the_assertion(
    http: httpx.AsyncClient, make_client: MakeClient
) -> None:
    client = await make_client(scope="system/Patient.rs")
    form = client.form(scope="system/Patients.rs")
    refused = await http.post("/oauth2/token", data=form)
    assert refused.json()["error"] == "invalid_scope"
    retried = await http.post("/oauth2/token", data={**form, "scope": "system/Patient.rs"})
    assert retried.status_code == 200, retried.text
