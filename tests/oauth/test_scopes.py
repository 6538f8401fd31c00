"""SMART scopes (App Launch 2.x §scopes-and-launch-context, smart-spec.md §4): the grammar,
v1 ⇒ v2 permission letters, RFC 6749 §3.3 scope tokens, :class:`ScopeSet`, coverage and
:func:`narrow`, and the same rules seen through ``POST /oauth2/token``."""

from __future__ import annotations

import httpx
import pytest
from tests.support import MakeClient

from fhirgate.oauth.scopes import (
    MAX_SCOPE_CHARS,
    MAX_SCOPE_TOKENS,
    OTHER_SCOPES,
    ResourceScope,
    ScopeError,
    narrow,
    parse_scope,
    parse_scopes,
    within,
)

TOKEN = "/oauth2/token"
LAB = "http://terminology.hl7.org/CodeSystem/observation-category|laboratory"


def resource(text: str) -> ResourceScope:
    scope = parse_scope(text)
    assert isinstance(scope, ResourceScope), scope
    return scope


def granted(requested: str, allowed: str) -> str:
    return str(narrow(parse_scopes(requested), parse_scopes(allowed)))


def refused(requested: str, allowed: str) -> str:
    with pytest.raises(ScopeError, match="not allowed for this client") as caught:
        narrow(parse_scopes(requested), parse_scopes(allowed))
    return str(caught.value)


# --- v1 ⇒ v2 permission letters -------------------------------------------------------------


@pytest.mark.parametrize("text", ["system/Patient.read", "system/*.read"])
def test_v1_read_means_read_and_search(text: str) -> None:
    scope = resource(text)
    assert scope.permissions == frozenset("rs")
    assert scope.restrictions == frozenset()


@pytest.mark.parametrize("text", ["system/Patient.write", "system/*.write"])
def test_v1_write_means_create_update_delete(text: str) -> None:
    assert resource(text).permissions == frozenset("cud")


@pytest.mark.parametrize("text", ["system/Patient.*", "system/*.*"])
def test_v1_star_means_all_five_permissions(text: str) -> None:
    assert resource(text).permissions == frozenset("cruds")


@pytest.mark.parametrize(
    ("text", "letters"),
    [
        ("system/Observation.rs", "rs"),
        ("system/Observation.cruds", "cruds"),
        ("system/Observation.c", "c"),
        ("system/Observation.s", "s"),
        ("system/Observation.cd", "cd"),
        ("system/Observation.rus", "rus"),
    ],
)
def test_v2_letters_are_the_permissions(text: str, letters: str) -> None:
    assert resource(text).permissions == frozenset(letters)


@pytest.mark.parametrize(
    ("text", "context", "resource_type"),
    [
        ("system/Patient.read", "system", "Patient"),
        ("user/Observation.rs", "user", "Observation"),
        ("patient/*.cruds", "patient", "*"),
    ],
)
def test_a_resource_scope_keeps_its_context_type_and_text(
    text: str, context: str, resource_type: str
) -> None:
    scope = resource(text)
    assert (scope.context, scope.resource_type, scope.text) == (context, resource_type, text)


# --- refused scopes ------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", " ", "   "])
def test_empty_or_blank_scope_is_refused(text: str) -> None:
    with pytest.raises(ScopeError, match="empty"):
        parse_scopes(text)


@pytest.mark.parametrize(
    "text", ["admin/Patient.read", "System/Patient.read", "launch/Patient.read", "/Patient.rs"]
)
def test_unknown_context_is_refused(text: str) -> None:
    with pytest.raises(ScopeError, match="unknown scope"):
        parse_scopes(text)


@pytest.mark.parametrize(
    "text",
    [
        "system/Patients.read",
        "system/patient.read",
        "system/PATIENT.read",
        "system/Resource.rs",
        "system/DomainResource.rs",
    ],
)
def test_unknown_resource_type_is_refused(text: str) -> None:
    with pytest.raises(ScopeError, match="unknown resource type"):
        parse_scopes(text)


@pytest.mark.parametrize(
    "text",
    [
        "system/Patient.readwrite",
        "system/Patient.x",
        "system/Patient.",
        "system/Patient.Read",
        "system/Patient.RS",
        "system/Patient.rs.rs",
        "system/Patient.**",
    ],
)
def test_unknown_action_is_refused(text: str) -> None:
    with pytest.raises(ScopeError, match="unknown action"):
        parse_scopes(text)


@pytest.mark.parametrize("text", ["system/Patient", "system/.rs", "system/Patient-rs"])
def test_scope_without_type_and_action_is_refused(text: str) -> None:
    with pytest.raises(ScopeError, match="unknown scope"):
        parse_scopes(text)


@pytest.mark.parametrize(
    "text", ["system/Patient.sr", "system/Patient.dus", "system/Patient.sc", "system/Patient.rc"]
)
def test_out_of_order_v2_letters_are_refused(text: str) -> None:
    with pytest.raises(ScopeError, match="unknown action"):
        parse_scopes(text)


@pytest.mark.parametrize(
    "text", ["system/Patient.rr", "system/Patient.rss", "system/Patient.ccruds"]
)
def test_repeated_v2_letters_are_refused(text: str) -> None:
    with pytest.raises(ScopeError, match="unknown action"):
        parse_scopes(text)


@pytest.mark.parametrize(
    "text",
    [
        "system/Observation.read?category=x",
        "system/Observation.write?category=x",
        "system/Observation.*?category=x",
    ],
)
def test_restrictions_on_a_v1_scope_are_refused(text: str) -> None:
    with pytest.raises(ScopeError, match="need SMART v2"):
        parse_scopes(text)


@pytest.mark.parametrize(
    "query",
    ["category", "=x", "category=", "a=b&", "", "a=b&&c=d", "&a=b", "-a=b", "na$me=x", "a=b&="],
)
def test_malformed_restriction_is_refused(query: str) -> None:
    with pytest.raises(ScopeError, match="malformed restriction"):
        parse_scopes(f"system/Observation.rs?{query}")


@pytest.mark.parametrize(
    "text",
    [
        'system/Patient.r"s',
        "system/Patient.rs\\",
        "system/Patient.rs\tsystem/Observation.rs",
        "system/Patient.rs\n",
        "system/Patient.rs\x7f",
        "system/Patient.rs\x00",
        "system/Pätient.rs",
        "system/Observation.rs?code=é",
        "openid\u00a0fhirUser",
    ],
)
def test_characters_rfc6749_forbids_are_refused(text: str) -> None:
    with pytest.raises(ScopeError, match="forbids"):
        parse_scopes(text)


def test_one_bad_token_refuses_the_whole_scope() -> None:
    with pytest.raises(ScopeError, match=r"system/Patients\.rs"):
        parse_scopes("openid system/Patient.rs system/Patients.rs")


def test_more_than_100_scopes_are_refused() -> None:
    assert MAX_SCOPE_TOKENS == 100
    with pytest.raises(ScopeError, match="more than 100"):
        parse_scopes(" ".join(["openid"] * 101))


def test_exactly_100_scopes_are_accepted() -> None:
    letters = ["".join(c for i, c in enumerate("cruds") if mask >> i & 1) for mask in range(1, 32)]
    tokens = [f"{ctx}/*.{perms}" for ctx in ("system", "user", "patient") for perms in letters]
    tokens += sorted(OTHER_SCOPES)[: 100 - len(tokens)]
    assert len(set(tokens)) == 100
    scopes = parse_scopes(" ".join(tokens))
    assert len(scopes.texts) == 100
    assert len(scopes.resource_scopes) == 93


def test_more_than_2048_characters_are_refused() -> None:
    assert MAX_SCOPE_CHARS == 2048
    prefix = "system/Observation.rs?code="
    with pytest.raises(ScopeError, match="longer than 2048"):
        parse_scopes(prefix + "x" * (2049 - len(prefix)))


def test_exactly_2048_characters_are_accepted() -> None:
    prefix = "system/Observation.rs?code="
    text = prefix + "x" * (2048 - len(prefix))
    assert len(text) == 2048
    assert str(parse_scopes(text)) == text


# --- accepted scopes -----------------------------------------------------------------------


@pytest.mark.parametrize("text", sorted(OTHER_SCOPES))
def test_each_other_scope_is_kept_as_is(text: str) -> None:
    assert parse_scope(text) == text
    scopes = parse_scopes(text)
    assert scopes.other_scopes == (text,)
    assert scopes.resource_scopes == ()


def test_other_scopes_are_accepted_with_resource_scopes() -> None:
    scopes = parse_scopes("openid fhirUser launch/patient offline_access system/*.rs")
    assert scopes.other_scopes == ("openid", "fhirUser", "launch/patient", "offline_access")
    assert [scope.text for scope in scopes.resource_scopes] == ["system/*.rs"]


@pytest.mark.parametrize(
    "text",
    [
        "openid  fhirUser",
        "openid     fhirUser",
        " openid fhirUser",
        "openid fhirUser   ",
        "   openid   fhirUser   ",
    ],
)
def test_runs_of_spaces_between_tokens_are_tolerated(text: str) -> None:
    assert str(parse_scopes(text)) == "openid fhirUser"


def test_restriction_value_may_hold_a_system_and_code() -> None:
    scope = resource(f"patient/Observation.rs?category={LAB}")
    assert scope.restrictions == frozenset({("category", LAB)})


@pytest.mark.parametrize(
    ("query", "pairs"),
    [
        ("code=http://loinc.org|1234-5", {("code", "http://loinc.org|1234-5")}),
        ("code:text=a=b", {("code:text", "a=b")}),
        ("date=ge2020-01-01T00:00:00Z", {("date", "ge2020-01-01T00:00:00Z")}),
        (f"category={LAB}&status=final", {("category", LAB), ("status", "final")}),
        ("_tag=urn:x|y", {("_tag", "urn:x|y")}),
        ("subject.name=Ann", {("subject.name", "Ann")}),
    ],
)
def test_restriction_values_may_hold_pipes_colons_and_equals(
    query: str, pairs: set[tuple[str, str]]
) -> None:
    scope = resource(f"system/Observation.rs?{query}")
    assert scope.restrictions == frozenset(pairs)
    assert scope.permissions == frozenset("rs")


# --- ScopeSet ------------------------------------------------------------------------------


def test_str_drops_duplicates_and_keeps_the_first_order() -> None:
    scopes = parse_scopes(
        "system/Observation.rs openid system/Patient.rs openid system/Observation.rs"
    )
    assert str(scopes) == "system/Observation.rs openid system/Patient.rs"
    assert [scope.text for scope in scopes.resource_scopes] == [
        "system/Observation.rs",
        "system/Patient.rs",
    ]
    assert scopes.other_scopes == ("openid",)


def test_str_keeps_the_clients_v1_text() -> None:
    scopes = parse_scopes("system/Patient.read system/Observation.*  system/Condition.write")
    assert str(scopes) == "system/Patient.read system/Observation.* system/Condition.write"


def test_equivalent_v1_and_v2_spellings_are_both_kept() -> None:
    assert str(parse_scopes("system/Patient.read system/Patient.rs")) == (
        "system/Patient.read system/Patient.rs"
    )


# --- coverage and narrow() -----------------------------------------------------------------


def test_narrow_without_a_request_grants_the_allowance() -> None:
    allowed = parse_scopes("system/Patient.rs system/Observation.rs")
    assert narrow(None, allowed) is allowed
    assert str(narrow(None, allowed)) == "system/Patient.rs system/Observation.rs"


@pytest.mark.parametrize(
    ("requested", "allowed"),
    [
        ("system/Patient.read", "system/Patient.rs system/Observation.rs"),
        ("system/Observation.r", "system/Patient.rs system/Observation.rs"),
        ("system/Observation.rs system/Patient.s", "system/Patient.rs system/Observation.rs"),
        ("system/Patient.c system/Observation.read", "system/*.cruds"),
    ],
)
def test_a_covered_request_is_granted_as_requested(requested: str, allowed: str) -> None:
    grant = narrow(parse_scopes(requested), parse_scopes(allowed))
    assert grant is parse_scopes(requested)
    assert str(grant) == requested


@pytest.mark.parametrize(
    "requested", ["system/Patient.rs", "system/Patient.r", "system/Patient.s", "system/*.rs"]
)
def test_wildcard_read_covers_each_type_and_itself(requested: str) -> None:
    assert granted(requested, "system/*.read") == requested


def test_a_type_does_not_cover_the_wildcard() -> None:
    refused("system/*.rs", "system/Patient.rs")
    refused("system/*.r", "system/Patient.rs system/Observation.rs")


@pytest.mark.parametrize(
    ("requested", "allowed"),
    [
        ("system/Patient.rs", "system/Patient.r system/Patient.s"),
        ("system/Patient.read", "system/Patient.r system/Patient.s"),
        ("system/Patient.cruds", "system/Patient.write system/*.rs"),
        ("system/Observation.*", "system/*.c system/Observation.rud system/*.s"),
    ],
)
def test_coverage_is_the_union_of_the_allowed_scopes(requested: str, allowed: str) -> None:
    assert granted(requested, allowed) == requested


def test_one_missing_permission_breaks_the_union() -> None:
    refused("system/Patient.rs", "system/Patient.r")
    refused("system/Patient.rds", "system/Patient.r system/Patient.s")


@pytest.mark.parametrize(
    "requested",
    [
        "system/Patient.write",
        "system/Patient.c",
        "system/Patient.u",
        "system/Patient.d",
        "system/Patient.*",
        "system/Patient.cruds",
    ],
)
def test_v1_read_does_not_cover_writing(requested: str) -> None:
    refused(requested, "system/Patient.read")


@pytest.mark.parametrize(
    "requested",
    ["patient/Patient.rs", "user/Patient.rs", "patient/*.r", "user/Observation.read"],
)
def test_system_never_covers_patient_or_user(requested: str) -> None:
    refused(requested, "system/*.cruds")


@pytest.mark.parametrize(
    "requested",
    [
        "system/Observation.rs?category=laboratory",
        f"system/Observation.r?category={LAB}&status=final",
    ],
)
def test_unrestricted_covers_restricted(requested: str) -> None:
    assert granted(requested, "system/Observation.rs") == requested
    assert granted(requested, "system/*.read") == requested


@pytest.mark.parametrize(
    "requested",
    [
        "system/Observation.rs?category=lab",
        "system/Observation.rs?category=lab&status=final",
        "system/Observation.s?status=final&category=lab",
    ],
)
def test_restricted_covers_requests_restricted_at_least_as_much(requested: str) -> None:
    assert granted(requested, "system/Observation.rs?category=lab") == requested


@pytest.mark.parametrize(
    "requested",
    [
        "system/Observation.rs",
        "system/Observation.read",
        "system/Observation.rs?category=vital",
        "system/Observation.rs?status=final",
        "system/Observation.rs?category=lab,vital",
        "system/Observation.rs?category=laboratory",
        "system/Observation.c?category=lab",
    ],
)
def test_restricted_does_not_cover_wider_or_different_requests(requested: str) -> None:
    refused(requested, "system/Observation.rs?category=lab")


@pytest.mark.parametrize("other", ["openid", "fhirUser", "offline_access", "launch/patient"])
def test_other_scopes_are_covered_only_when_allowed(other: str) -> None:
    refused(other, "system/*.cruds")
    assert granted(f"{other} system/Patient.rs", f"system/*.rs {other}") == (
        f"{other} system/Patient.rs"
    )


def test_scope_set_covers_takes_parsed_scopes() -> None:
    allowed = parse_scopes("openid system/*.rs")
    assert allowed.covers("openid")
    assert not allowed.covers("fhirUser")
    assert allowed.covers(resource("system/Encounter.r"))
    assert not allowed.covers(resource("system/Encounter.rds"))


def test_the_refusal_names_only_the_scopes_beyond_the_allowance() -> None:
    message = refused(
        "system/Patient.rs system/Condition.rs openid system/Patient.write",
        "system/Patient.rs",
    )
    assert message == (
        "not allowed for this client: system/Condition.rs system/Patient.write openid"
    )
    assert "system/Patient.rs " not in message


def test_parsed_sets_are_immutable_and_cached() -> None:
    first = parse_scopes("system/Patient.rs")
    assert parse_scopes("system/Patient.rs") is first
    with pytest.raises(AttributeError):
        first.texts = ()  # type: ignore[misc]


# --- through POST /oauth2/token ------------------------------------------------------------

ALLOWED = "system/Patient.rs system/Observation.rs"


async def test_token_grants_a_v1_request_in_v1(
    http: httpx.AsyncClient, make_client: MakeClient
) -> None:
    client = await make_client(scope=ALLOWED)
    response = await http.post(TOKEN, data=client.form(scope="system/Patient.read"))
    assert response.status_code == 200, response.text
    assert response.json()["scope"] == "system/Patient.read"


async def test_token_refuses_a_scope_beyond_the_allowance(
    http: httpx.AsyncClient, make_client: MakeClient
) -> None:
    client = await make_client(scope=ALLOWED)
    response = await http.post(
        TOKEN, data=client.form(scope="system/Patient.rs system/Condition.rs")
    )
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["error"] == "invalid_scope"
    assert "access_token" not in body


async def test_token_refuses_a_blank_scope_as_invalid_scope(
    http: httpx.AsyncClient, make_client: MakeClient
) -> None:
    client = await make_client(scope=ALLOWED)
    response = await http.post(TOKEN, data=client.form(scope="   "))
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_scope"


async def test_token_refuses_a_present_but_empty_scope_as_invalid_scope_and_keeps_the_jti(
    http: httpx.AsyncClient, make_client: MakeClient
) -> None:
    """RFC 6749 §3.3: ``scope=`` asks for no access at all, which is not a grantable scope;
    the refusal comes before authentication, so the assertion stays usable."""
    client = await make_client(scope=ALLOWED)
    form = client.form(scope="")
    response = await http.post(TOKEN, data=form)
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_scope"
    assert "access_token" not in response.json()
    retry = await http.post(TOKEN, data={**form, "scope": "system/Patient.rs"})
    assert retry.status_code == 200, retry.text


async def test_token_without_a_scope_parameter_is_invalid_request(
    http: httpx.AsyncClient, make_client: MakeClient
) -> None:
    client = await make_client(scope=ALLOWED)
    response = await http.post(TOKEN, data=client.form(scope=None))
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_request"
    assert "scope" in response.json()["error_description"]


async def test_token_refuses_an_unknown_type_without_burning_the_jti(
    http: httpx.AsyncClient, make_client: MakeClient
) -> None:
    client = await make_client(scope=ALLOWED)
    form = client.form(scope="system/Patients.rs")
    refusal = await http.post(TOKEN, data=form)
    assert refusal.status_code == 400, refusal.text
    assert refusal.json()["error"] == "invalid_scope"
    retry = await http.post(TOKEN, data={**form, "scope": "system/Patient.rs"})
    assert retry.status_code == 200, retry.text
    assert retry.json()["scope"] == "system/Patient.rs"


@pytest.mark.parametrize(
    "text",
    [
        "system/Observation.rs?_include=Observation:subject",
        "system/Observation.rs?category=lab&_revinclude=Provenance:target",
        "system/Patient.rs?_has:Observation:patient:code=1234",
        "system/Observation.rs?_include:iterate=Observation:subject",
    ],
)
def test_restrictions_that_widen_results_are_refused(text: str) -> None:
    """A restriction may only narrow: _include, _revinclude and _has add results instead."""
    with pytest.raises(ScopeError, match="would widen"):
        parse_scopes(text)


@pytest.mark.parametrize(
    ("scopes", "allowed", "identity", "expected"),
    [
        ("system/Patient.rs", "system/Patient.read", False, True),  # v2 within v1
        ("system/Patient.read", "system/Patient.rs", False, True),
        ("system/Patient.rs", "system/*.r", False, False),  # s beyond
        ("system/Patient.rs system/Observation.r", "system/Patient.rs", False, False),
        ("system/Observation.rs?category=x", "system/Observation.rs", False, True),
        ("system/Observation.rs", "system/Observation.rs?category=x", False, False),
        ("user/*.rs openid fhirUser", "user/*.rs", True, True),  # a user grant's identity
        ("user/*.rs openid", "user/*.rs", False, False),  # not a user grant's token
        ("platform", "system/*.rs", False, False),
        ("system/*.rs", "", False, False),  # an unparsable allowed scope covers nothing
    ],
)
def test_within_tells_whether_a_clients_scope_covers_a_tokens(
    scopes: str, allowed: str, identity: bool, expected: bool
) -> None:
    assert within(parse_scopes(scopes), allowed, identity=identity) is expected
