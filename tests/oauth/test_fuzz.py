"""Property-based tests (Hypothesis) of the OAuth side's parsers and HTTP surface: whatever
the input, the token form parser, the JWS parser and the scope parser raise only their own typed
errors, and the token, introspection and revocation endpoints and the resource guard answer
with a 4xx (never a 5xx, never an uncaught exception).

The in-process parsers get thousands of examples; the HTTP surface, through the real ASGI app
on SQLite, a few hundred per property. The throttle is off here (``auth_failure_limit=0``) so
that every request goes the whole way instead of stopping at 429.
"""

from __future__ import annotations

import base64
import contextlib
import json
import time
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from hypothesis import HealthCheck, example, given
from hypothesis import settings as examples
from hypothesis import strategies as st
from tests.support import BASE, Running, SigningClient, register_client, register_secret_client

from fhirgate.config import Settings
from fhirgate.domain.resource_types import R4_RESOURCE_TYPES
from fhirgate.oauth.client_auth import JWT_BEARER
from fhirgate.oauth.errors import InvalidRequest
from fhirgate.oauth.forms import FORM_CONTENT_TYPE, KEEP_EMPTY_SCOPE, parse_form
from fhirgate.oauth.jose import JWSError, b64url_encode, parse_compact
from fhirgate.oauth.keyset import JWKSetError, parse_jwks, validate_jwks
from fhirgate.oauth.scopes import (
    CONTEXTS,
    OTHER_SCOPES,
    V1_PERMISSIONS,
    ScopeError,
    narrow,
    parse_scopes,
)

PARSER = examples(max_examples=1000, deadline=None, database=None)
#: For the properties whose inputs are costlier to generate (whole forms, two JSON objects).
PARSER_HEAVY = examples(PARSER, max_examples=500)
SURFACE = examples(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture
def settings(sqlite_settings: Settings) -> Settings:
    """This module's app: SQLite, no throttle."""
    return sqlite_settings.model_copy(update={"auth_failure_limit": 0})


# Strategies -----------------------------------------------------------------------------------

#: JSON numbers and constants Python's parser chokes on or Python cannot hold.
HOSTILE_NUMBERS = st.sampled_from(
    ["1" * 4301, "-" + "9" * 5000, "1e999", "-1e999", "NaN", "Infinity", "-Infinity", "1e-999"]
)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=5,
)
#: Issue 15: a JWS carrying an integer of 4,301 digits was a 500 at the token endpoint and guard.
HUGE_INT_JWS = ".".join(
    b64url_encode(part) for part in (b'{"alg":"ES256","n":' + b"1" * 4301 + b"}", b"{}", b"s")
)
CLAIM_NAMES = ["alg", "kid", "typ", "crit", "jku", "iss", "sub", "aud", "exp", "iat", "nbf", "jti"]
claim_names = st.sampled_from(CLAIM_NAMES) | st.text(max_size=8)


@st.composite
def json_texts(draw: st.DrawFn) -> str:
    """JSON text, mostly objects with JOSE member names, some hostile: huge or non-finite
    numbers, deep nesting, duplicate members, not JSON at all."""
    kind = draw(
        st.sampled_from([*["object", "hostile-number"] * 2, "deep", "duplicate", "value", "junk"])
    )
    if kind == "object":
        members = draw(st.dictionaries(claim_names, json_values, max_size=8))
        return json.dumps(members)
    if kind == "hostile-number":
        return f'{{"{draw(claim_names)}": {draw(HOSTILE_NUMBERS)}}}'
    if kind == "deep":
        depth = draw(st.integers(min_value=900, max_value=3000))
        return "[" * depth + "]" * draw(st.sampled_from([depth, 0]))
    if kind == "duplicate":
        name = draw(st.sampled_from(CLAIM_NAMES))
        return f'{{"{name}": 1, "{name}": 2}}'
    if kind == "value":
        return json.dumps(draw(json_values))
    return draw(st.text(max_size=40))


B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
json_segments = json_texts().map(lambda text: b64url_encode(text.encode()))
segments = st.one_of(
    json_segments,
    json_segments,  # twice: most segments should get as far as the JSON parser
    st.binary(max_size=40).map(b64url_encode),
    st.text(alphabet=B64URL + "=+/.!~ %", max_size=30),
)


@st.composite
def compact_jws(draw: st.DrawFn) -> str:
    """Compact-JWS-shaped text: usually three segments, sometimes fewer or more."""
    count = draw(st.sampled_from([3, 3, 3, 3, 1, 2, 4, 5]))
    return ".".join(draw(segments) for _ in range(count))


permissions = st.sampled_from([*V1_PERMISSIONS, "cruds", "rs", "r", "cud", "s", "sr", "", "x"]) | (
    st.text(alphabet="cruds*readwite", max_size=6)
)
restrictions = st.lists(
    st.tuples(
        st.sampled_from(["category", "code", "_include", "_has:x", "a-b.c", "", "9"]),
        st.text(alphabet="abc|:=&?%", max_size=6),
    ),
    max_size=3,
).map(lambda pairs: "&".join(f"{name}={value}" for name, value in pairs))


@st.composite
def scope_tokens(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["resource", "resource", "other", "text"]))
    if kind == "other":
        return draw(st.sampled_from(sorted(OTHER_SCOPES)))
    if kind == "text":
        return draw(st.text(max_size=16))
    context = draw(st.sampled_from(sorted(CONTEXTS)) | st.text(alphabet="abcz/", max_size=6))
    resource_type = draw(
        st.sampled_from(["*", *sorted(R4_RESOURCE_TYPES)[:40]]) | st.text(max_size=8)
    )
    token = f"{context}/{resource_type}.{draw(permissions)}"
    if draw(st.booleans()):
        token += "?" + draw(restrictions)
    return token


scope_strings = st.lists(scope_tokens(), max_size=6).flatmap(
    lambda tokens: st.sampled_from([" ", "  ", "\t", " \u00a0"]).map(lambda sep: sep.join(tokens))
) | st.text(max_size=60)

FORM_NAMES = [
    "grant_type",
    "scope",
    "client_assertion_type",
    "client_assertion",
    "client_id",
    "client_secret",
    "code",
    "refresh_token",
    "token",
    "token_type_hint",
]
form_values = (
    st.sampled_from(
        ["client_credentials", "authorization_code", "refresh_token", JWT_BEARER, "", "system/*.rs"]
    )
    | compact_jws()
    | scope_strings
    | st.text(max_size=30)
)
form_pairs = st.lists(
    st.tuples(st.sampled_from(FORM_NAMES) | st.text(max_size=10), form_values), max_size=8
)


@st.composite
def assertion_requests(draw: st.DrawFn) -> list[tuple[str, str]]:
    """A token request shaped like a real one — a grant type, the JWT-bearer assertion type,
    an assertion, maybe a scope, code or refresh token — with any assertion and values, and
    sometimes a field dropped or added, so most requests reach the JWS and scope parsers."""
    pairs = [
        ("grant_type", draw(st.sampled_from(["client_credentials", "refresh_token"]))),
        ("client_assertion_type", JWT_BEARER),
        ("client_assertion", draw(compact_jws())),
    ]
    if draw(st.booleans()):
        pairs.append(("scope", draw(scope_strings)))
    if draw(st.booleans()):
        pairs.append((draw(st.sampled_from(["code", "refresh_token", "token"])), "x" * 43))
    if draw(st.booleans()):
        del pairs[draw(st.integers(min_value=0, max_value=len(pairs) - 1))]
    return pairs + draw(st.lists(st.tuples(st.text(max_size=8), form_values), max_size=1))


@st.composite
def form_bodies(draw: st.DrawFn) -> bytes:
    """Form bodies: well encoded, hand-joined (raw ``%``, ``+``, ``&``, ``=``) or arbitrary."""
    pairs = draw(assertion_requests() | form_pairs)
    kind = draw(st.sampled_from(["encoded", "encoded", "raw", "bytes"]))
    if kind == "encoded":
        return urlencode(pairs).encode()
    if kind == "raw":
        return "&".join(f"{name}={value}" for name, value in pairs).encode()
    return draw(st.binary(max_size=200))


content_types = st.sampled_from(
    [
        FORM_CONTENT_TYPE,
        FORM_CONTENT_TYPE + "; charset=UTF-8",
        "APPLICATION/X-WWW-FORM-URLENCODED",
        "application/json",
        "text/plain",
        "",
    ]
)


# The token form parser ----------------------------------------------------------------------


@PARSER_HEAVY
@given(body=form_bodies(), content_type=st.none() | content_types)
def test_the_form_parser_raises_only_invalid_request(body: bytes, content_type: str | None) -> None:
    try:
        form = parse_form(body, content_type, keep_empty=KEEP_EMPTY_SCOPE)
    except InvalidRequest:
        return
    assert all(isinstance(name, str) and isinstance(value, str) for name, value in form.items())
    assert all(value != "" or name == "scope" for name, value in form.items())


@PARSER
@given(form=st.dictionaries(st.text(min_size=1, max_size=12), st.text(max_size=30), max_size=64))
def test_an_encoded_form_parses_back_to_its_fields(form: dict[str, str]) -> None:
    """RFC 6749 Appendix B: what a client encodes is what the server reads (empty → omitted)."""
    body = urlencode(form, quote_via=quote).encode()  # %20 for a space, not +
    parsed = parse_form(body, FORM_CONTENT_TYPE)
    assert parsed == {name: value for name, value in form.items() if value != ""}


# The JWS parser -----------------------------------------------------------------------------


@PARSER
@given(token=compact_jws() | st.text(max_size=80))
@example(token=HUGE_INT_JWS)
def test_the_jws_parser_raises_only_jws_error(token: str) -> None:
    try:
        parsed = parse_compact(token)
    except JWSError:
        return
    assert isinstance(parsed.header, dict)
    assert isinstance(parsed.claims, dict)
    assert parsed.signing_input == token.rsplit(".", 1)[0].encode("ascii")


@PARSER_HEAVY
@given(
    header=st.dictionaries(claim_names, json_values, max_size=6),
    claims=st.dictionaries(claim_names, json_values, max_size=8),
    signature=st.binary(max_size=96),
)
def test_a_well_formed_jws_parses_to_its_header_and_claims(
    header: dict[str, Any], claims: dict[str, Any], signature: bytes
) -> None:
    parts = (json.dumps(header).encode(), json.dumps(claims).encode(), signature)
    token = ".".join(b64url_encode(part) for part in parts)
    parsed = parse_compact(token)
    assert (parsed.header, parsed.claims, parsed.signature) == (header, claims, signature)


# JWK Sets (fetched from a JWKS URL or registered) ---------------------------------------------

b64_numbers = st.one_of(
    st.binary(max_size=300).map(b64url_encode),
    st.integers(min_value=0, max_value=2**4096).map(
        lambda n: b64url_encode(n.to_bytes(max(1, (n.bit_length() + 7) // 8), "big"))
    ),
    json_scalars,
)
jwks_documents = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {
            "keys": st.lists(
                st.fixed_dictionaries(
                    {},
                    optional={
                        "kty": st.sampled_from(["RSA", "EC", "oct", "OKP"]) | json_scalars,
                        "kid": st.text(max_size=6) | json_scalars,
                        "crv": st.sampled_from(["P-256", "P-384", "P-521", "X25519"]),
                        "n": b64_numbers,
                        "e": st.sampled_from(["AQAB", "Aw", "AA", ""]) | b64_numbers,
                        "x": b64_numbers,
                        "y": b64_numbers,
                        "d": b64_numbers,
                    },
                )
                | json_values,
                max_size=3,
            )
        }
    ),
)


@PARSER
@given(document=jwks_documents)
def test_jwk_set_parsing_raises_only_jwk_set_error(document: object) -> None:
    try:
        usable = parse_jwks(document)
    except JWKSetError:
        return
    with contextlib.suppress(JWKSetError):  # strictly valid ⇒ every key was usable
        assert validate_jwks(document) == usable


# The scope parser ---------------------------------------------------------------------------


@PARSER
@given(text=scope_strings)
def test_the_scope_parser_raises_only_scope_error(text: str) -> None:
    try:
        scopes = parse_scopes(text)
    except ScopeError:
        return
    assert parse_scopes(str(scopes)) == scopes  # what is granted parses back the same
    assert narrow(scopes, scopes) == scopes  # a scope set covers itself


# Through the real app -----------------------------------------------------------------------

TOKEN_URLS = ["/oauth2/token", "/v2/auth/token", "/api/auth/token"]
FORM_URLS = [*TOKEN_URLS, "/oauth2/introspect", "/oauth2/revoke"]
printable = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60)
authorizations = (
    st.none()
    | st.sampled_from(["Basic", "Bearer x", "Basic Og=="])
    | (st.binary(max_size=40).map(lambda raw: "Basic " + base64.b64encode(raw).decode()))
    | printable.map(lambda text: "Basic " + text)
)


def assert_clean_refusal(response: httpx.Response) -> None:
    """A 4xx in the surface's format (JSON, or Redox's JSON) — or a success."""
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert response.headers["content-type"].startswith(
            ("application/json", "application/fhir+json")
        ), response.text
        assert response.json()


@SURFACE
@given(
    path=st.sampled_from(FORM_URLS),
    body=form_bodies(),
    content_type=st.one_of(st.just(FORM_CONTENT_TYPE), content_types),
    authorization=authorizations,
)
@example(
    path="/oauth2/token",
    body=urlencode(
        {
            "grant_type": "client_credentials",
            "client_assertion_type": JWT_BEARER,
            "client_assertion": HUGE_INT_JWS,
            "scope": "system/*.rs",
        }
    ).encode(),
    content_type=FORM_CONTENT_TYPE,
    authorization=None,
)
async def test_form_endpoints_never_answer_5xx(
    running: Running, path: str, body: bytes, content_type: str, authorization: str | None
) -> None:
    headers = {"content-type": content_type}
    if authorization is not None:
        headers["authorization"] = authorization
    assert_clean_refusal(await running.http.post(path, content=body, headers=headers))


@pytest.fixture
async def signing_client(running: Running) -> SigningClient:
    return await register_client(running.services, scope="system/*.rs")


def signed(client: SigningClient, header: dict[str, Any], claims_json: str) -> str:
    """An assertion really signed by ``client`` over ``claims_json`` as given."""
    assert isinstance(client.key, rsa.RSAPrivateKey)
    header_b64 = b64url_encode(json.dumps(header).encode())
    signing_input = f"{header_b64}.{b64url_encode(claims_json.encode())}"
    signature = client.key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA384())
    return f"{signing_input}.{b64url_encode(signature)}"


@st.composite
def claim_sets(draw: st.DrawFn, client_id: str, audience: str) -> str:
    """Claims of a signed assertion: mostly right, each member possibly replaced by anything,
    hostile numbers included, as JSON text."""
    now = int(time.time())
    members: dict[str, str] = {
        "iss": json.dumps(client_id),
        "sub": json.dumps(client_id),
        "aud": json.dumps(audience),
        "exp": str(now + 200),
        "iat": str(now),
        "jti": json.dumps(draw(st.text(min_size=1, max_size=12))),
    }
    for name in draw(st.lists(st.sampled_from(CLAIM_NAMES), max_size=4)):
        members[name] = draw(HOSTILE_NUMBERS | json_values.map(json.dumps))
    return "{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in members.items()) + "}"


@SURFACE
@given(data=st.data(), path=st.sampled_from(FORM_URLS), scope=st.none() | scope_strings)
async def test_signed_assertions_with_any_claims_never_get_5xx(
    running: Running,
    signing_client: SigningClient,
    data: st.DataObject,
    path: str,
    scope: str | None,
) -> None:
    header: dict[str, Any] = {"alg": "RS384", "kid": signing_client.kid}
    header.update(
        data.draw(
            st.dictionaries(st.sampled_from(["typ", "crit", "jku", "x5u"]), json_values, max_size=2)
        )
    )
    claims = data.draw(claim_sets(signing_client.client_id, BASE + path))
    form = {
        "grant_type": data.draw(st.sampled_from(["client_credentials", "refresh_token"])),
        "client_assertion_type": JWT_BEARER,
        "client_assertion": signed(signing_client, header, claims),
        "token": "x",
        "refresh_token": "y",
    }
    if scope is not None:
        form["scope"] = scope
    assert_clean_refusal(await running.http.post(path, data=form))


@SURFACE
@given(token=compact_jws() | printable, path=st.sampled_from(["/whoami", "/fhir/R4/Patient"]))
@example(token=HUGE_INT_JWS, path="/fhir/R4/Patient")
async def test_the_resource_guard_never_answers_5xx(
    running: Running, token: str, path: str
) -> None:
    response = await running.http.get(path, headers={"Authorization": f"Bearer {token}"})
    assert 400 <= response.status_code < 500, response.text
    if response.status_code == 401:
        assert 'error="invalid_token"' in response.headers["www-authenticate"]


@pytest.fixture
async def secret_client(running: Running) -> tuple[str, str]:
    return await register_secret_client(running.services)


@SURFACE
@given(
    token=compact_jws() | printable,
    path=st.sampled_from(["/oauth2/introspect", "/oauth2/revoke"]),
)
@example(token=HUGE_INT_JWS, path="/oauth2/introspect")
async def test_introspection_and_revocation_of_any_token_never_answer_5xx(
    running: Running, secret_client: tuple[str, str], token: str, path: str
) -> None:
    response = await running.http.post(path, data={"token": token}, auth=secret_client)
    assert_clean_refusal(response)
    if path == "/oauth2/introspect" and response.status_code == 200:
        assert response.json() == {"active": False}
