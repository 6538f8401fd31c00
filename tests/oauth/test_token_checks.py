"""POST /oauth2/token with private_key_jwt: every named check, broken one at a time."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest
from tests.support import BASE, MakeClient, Running, private_key, register_client

from fhirgate.oauth.jose import b64url_encode

TOKEN = "/oauth2/token"


async def post(http: httpx.AsyncClient, form: dict[str, str], path: str = TOKEN) -> httpx.Response:
    return await http.post(path, data=form)


def assert_invalid_client(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 401, response.text
    body = response.json()
    assert body["error"] == "invalid_client"
    assert response.headers["cache-control"] == "no-store"
    assert "www-authenticate" not in response.headers  # Basic was not used
    return dict(body)


async def test_valid_rs384_assertion_gets_a_five_minute_bearer_token(
    http: httpx.AsyncClient, make_client: MakeClient
) -> None:
    client = await make_client("RS384")
    response = await post(http, client.form("system/Patient.read"))
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"access_token", "token_type", "expires_in", "scope"}
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 300
    assert body["scope"] == "system/Patient.read"
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["pragma"] == "no-cache"
    assert "refresh_token" not in body


async def test_valid_es384_assertion_gets_a_token(
    http: httpx.AsyncClient, make_client: MakeClient
) -> None:
    client = await make_client("ES384")
    response = await post(http, client.form())
    assert response.status_code == 200, response.text


async def test_issuer_is_accepted_as_audience(
    http: httpx.AsyncClient, make_client: MakeClient
) -> None:
    client = await make_client()
    assert (await post(http, client.form(aud=BASE))).status_code == 200


async def test_single_element_audience_array_is_accepted(
    http: httpx.AsyncClient, make_client: MakeClient
) -> None:
    client = await make_client()
    assert (await post(http, client.form(aud=[client.token_url]))).status_code == 200


# --- header checks -------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["none", "HS256", "HS384", "RS256", "ES256", "PS384", "RS512"])
async def test_alg_outside_the_allow_list_is_rejected(
    http: httpx.AsyncClient, make_client: MakeClient, alg: str
) -> None:
    client = await make_client()
    header = {"alg": alg, "kid": client.kid, "typ": "JWT"}
    claims = {
        "iss": client.client_id,
        "sub": client.client_id,
        "aud": client.token_url,
        "exp": int(time.time()) + 60,
        "jti": "x" + alg,
    }
    segments = [b64url_encode(json.dumps(part).encode()) for part in (header, claims)]
    forged = ".".join([*segments, b64url_encode(b"\x00" * 32) if alg != "none" else ""])
    form = client.form()
    form["client_assertion"] = forged
    body = assert_invalid_client(await post(http, form))
    assert "alg" in body["error_description"]


@pytest.mark.parametrize("alg", ["RS256", "ES256", "PS384"])
async def test_alg_added_by_configuration_is_accepted(running: Running, alg: str) -> None:
    from tests.support import start

    settings = running.services.settings.model_copy(
        update={"assertion_algorithms": frozenset({"RS384", "ES384", alg})}
    )
    other, stack = await start(settings)
    try:
        client = await register_client(other.services, alg)
        response = await post(other.http, client.form())
        assert response.status_code == 200, response.text
        tampered = client.form()
        tampered["client_assertion"] = tampered["client_assertion"][:-4] + "AAAA"
        assert (await post(other.http, tampered)).status_code == 401
    finally:
        await stack.aclose()


async def test_missing_kid_is_rejected(http: httpx.AsyncClient, make_client: MakeClient) -> None:
    client = await make_client()
    form = client.form()
    form["client_assertion"] = client.assertion(drop=("kid",))
    body = assert_invalid_client(await post(http, form))
    assert "kid" in body["error_description"]


@pytest.mark.parametrize("typ", ["at+jwt", "JWS", "jwt", 1])
async def test_typ_other_than_jwt_is_rejected(
    http: httpx.AsyncClient, make_client: MakeClient, typ: object
) -> None:
    client = await make_client()
    form = client.form()
    form["client_assertion"] = client.assertion(header={"typ": typ})
    assert_invalid_client(await post(http, form))


async def test_absent_typ_is_accepted(http: httpx.AsyncClient, make_client: MakeClient) -> None:
    client = await make_client()
    form = client.form()
    form["client_assertion"] = client.assertion(drop=("typ",))
    assert (await post(http, form)).status_code == 200


async def test_crit_header_is_rejected(http: httpx.AsyncClient, make_client: MakeClient) -> None:
    client = await make_client()
    form = client.form()
    form["client_assertion"] = client.assertion(header={"crit": ["exp"]})
    assert_invalid_client(await post(http, form))


@pytest.mark.parametrize("member", ["jwk", "x5u", "x5c"])
async def test_embedded_key_headers_are_never_trusted(
    http: httpx.AsyncClient, make_client: MakeClient, member: str
) -> None:
    """An attacker signs with their own key and points at it from the header."""
    from fhirgate.oauth.jose import jwk_from_public_key

    client = await make_client()
    attacker = private_key("RS384", slot=9)
    value: object = {
        "jwk": jwk_from_public_key(attacker.public_key(), client.kid, "RS384"),
        "x5u": "http://127.0.0.1:1/attacker.pem",
        "x5c": ["MIIB"],
    }[member]
    form = client.form()
    form["client_assertion"] = client.assertion(header={member: value}, key=attacker)
    assert_invalid_client(await post(http, form))


# --- key resolution ------------------------------------------------------------------------


async def test_unknown_kid_is_rejected(http: httpx.AsyncClient, make_client: MakeClient) -> None:
    client = await make_client()
    form = client.form()
    form["client_assertion"] = client.assertion(header={"kid": "not-registered"})
    assert_invalid_client(await post(http, form))


async def test_kid_whose_kty_does_not_fit_alg_is_rejected(
    http: httpx.AsyncClient, make_client: MakeClient
) -> None:
    """An RSA key registered under a kid cannot verify an ES384 assertion with that kid."""
    client = await make_client("RS384")
    es_key = private_key("ES384")
    form = client.form()
    form["client_assertion"] = client.assertion(header={"alg": "ES384"}, key=es_key)
    assert_invalid_client(await post(http, form))


async def test_two_keys_with_the_same_kid_are_refused_at_registration(
    running: Running,
) -> None:
    from fhirgate.oauth.jose import jwk_from_public_key
    from fhirgate.oauth.registration import RegistrationError, validate_keys

    jwks = {
        "keys": [
            jwk_from_public_key(private_key("RS384", s).public_key(), "same", "RS384")
            for s in (0, 1)
        ]
    }
    with pytest.raises(RegistrationError, match="unique"):
        validate_keys(jwks, None)


async def test_signature_by_another_key_is_rejected(
    http: httpx.AsyncClient, make_client: MakeClient
) -> None:
    client = await make_client()
    form = client.form()
    form["client_assertion"] = client.assertion(key=private_key("RS384", slot=5))
    assert_invalid_client(await post(http, form))


async def test_tampered_payload_is_rejected(
    http: httpx.AsyncClient, make_client: MakeClient
) -> None:
    client = await make_client()
    header, _, signature = client.assertion().split(".")
    claims = {
        "iss": client.client_id,
        "sub": client.client_id,
        "aud": client.token_url,
        "exp": int(time.time()) + 60,
        "jti": "tampered",
    }
    form = client.form()
    form["client_assertion"] = ".".join(
        [header, b64url_encode(json.dumps(claims).encode()), signature]
    )
    assert_invalid_client(await post(http, form))


# --- claims --------------------------------------------------------------------------------


async def test_unknown_client_is_rejected(http: httpx.AsyncClient, make_client: MakeClient) -> None:
    client = await make_client()
    form = client.form(iss="nobody", sub="nobody")
    body = assert_invalid_client(await post(http, form))
    assert body["error_description"] == "client authentication failed"


async def test_revoked_client_is_rejected(
    running: Running, http: httpx.AsyncClient, make_client: MakeClient
) -> None:
    client = await make_client()
    await running.services.clients.revoke(client.client_id)
    running.services.directory.forget(client.client_id)
    assert_invalid_client(await post(http, client.form()))


async def test_sub_must_equal_iss(http: httpx.AsyncClient, make_client: MakeClient) -> None:
    client = await make_client()
    assert_invalid_client(await post(http, client.form(sub="someone-else")))


async def test_missing_iss_is_rejected(http: httpx.AsyncClient, make_client: MakeClient) -> None:
    client = await make_client()
    form = client.form()
    form["client_assertion"] = client.assertion(drop=("iss",))
    assert_invalid_client(await post(http, form))


async def test_form_client_id_must_match_iss(
    http: httpx.AsyncClient, make_client: MakeClient
) -> None:
    client = await make_client()
    form = client.form()
    form["client_id"] = "another-client"
    assert_invalid_client(await post(http, form))
    good = client.form()
    good["client_id"] = client.client_id
    assert (await post(http, good)).status_code == 200


@pytest.mark.parametrize(
    "aud",
    [
        f"{BASE}/v2/auth/token",
        "https://evil.example/oauth2/token",
        f"{BASE}/oauth2/token/",
        [f"{BASE}/oauth2/token", "https://evil.example"],
        [],
        42,
    ],
)
async def test_wrong_audience_is_rejected(
    http: httpx.AsyncClient, make_client: MakeClient, aud: object
) -> None:
    client = await make_client()
    assert_invalid_client(await post(http, client.form(aud=aud)))


async def test_missing_audience_is_rejected(
    http: httpx.AsyncClient, make_client: MakeClient
) -> None:
    client = await make_client()
    form = client.form()
    form["client_assertion"] = client.assertion(drop=("aud",))
    assert_invalid_client(await post(http, form))


async def test_missing_exp_is_rejected(http: httpx.AsyncClient, make_client: MakeClient) -> None:
    client = await make_client()
    form = client.form()
    form["client_assertion"] = client.assertion(drop=("exp",))
    body = assert_invalid_client(await post(http, form))
    assert "exp" in body["error_description"]


async def test_exp_beyond_five_minutes_plus_leeway_is_rejected(
    http: httpx.AsyncClient, make_client: MakeClient
) -> None:
    client = await make_client()
    now = int(time.time())
    assert_invalid_client(await post(http, client.form(exp=now + 300 + 60 + 5)))
    assert (await post(http, client.form(exp=now + 300 + 30))).status_code == 200


async def test_expired_assertion_is_rejected(
    http: httpx.AsyncClient, make_client: MakeClient
) -> None:
    client = await make_client()
    now = int(time.time())
    body = assert_invalid_client(await post(http, client.form(exp=now - 61, iat=now - 200)))
    assert "expired" in body["error_description"]


@pytest.mark.parametrize("value", ["soon", True, None, [1]])
async def test_non_numeric_exp_is_rejected(
    http: httpx.AsyncClient, make_client: MakeClient, value: object
) -> None:
    client = await make_client()
    assert_invalid_client(await post(http, client.form(exp=value)))


async def test_nbf_in_the_future_is_rejected(
    http: httpx.AsyncClient, make_client: MakeClient
) -> None:
    client = await make_client()
    now = int(time.time())
    assert_invalid_client(await post(http, client.form(nbf=now + 120)))
    assert (await post(http, client.form(nbf=now - 1))).status_code == 200


async def test_iat_in_the_future_is_rejected(
    http: httpx.AsyncClient, make_client: MakeClient
) -> None:
    client = await make_client()
    assert_invalid_client(await post(http, client.form(iat=int(time.time()) + 120)))


@pytest.mark.parametrize("jti", [None, "", 7, "x" * 256])
async def test_missing_or_malformed_jti_is_rejected(
    http: httpx.AsyncClient, make_client: MakeClient, jti: object
) -> None:
    client = await make_client()
    form = client.form()
    form["client_assertion"] = (
        client.assertion(drop=("jti",)) if jti is None else client.assertion(jti=jti)
    )
    assert_invalid_client(await post(http, form))


async def test_jti_of_255_characters_is_accepted(
    http: httpx.AsyncClient, make_client: MakeClient
) -> None:
    client = await make_client()
    assert (await post(http, client.form(jti="j" * 255))).status_code == 200


async def test_replayed_assertion_is_rejected(
    http: httpx.AsyncClient, make_client: MakeClient
) -> None:
    client = await make_client()
    form = client.form()
    assert (await post(http, form)).status_code == 200
    body = assert_invalid_client(await post(http, form))
    assert "already been used" in body["error_description"]


async def test_same_jti_from_two_clients_is_not_a_replay(
    http: httpx.AsyncClient, make_client: MakeClient
) -> None:
    """Single use is per (iss, jti)."""
    first, second = await make_client(slot=0), await make_client(slot=1)
    assert (await post(http, first.form(jti="shared"))).status_code == 200
    assert (await post(http, second.form(jti="shared"))).status_code == 200


async def test_rejected_assertion_does_not_consume_its_jti(
    http: httpx.AsyncClient, make_client: MakeClient
) -> None:
    """A request refused before authentication completes leaves the jti usable."""
    client = await make_client()
    form = client.form(jti="keep-me")
    bad = dict(form, scope="system/Nonsense.read")
    assert (await post(http, bad)).status_code == 400
    assert (await post(http, form)).status_code == 200


# --- scopes --------------------------------------------------------------------------------


async def test_scope_is_required_on_the_standard_endpoint(
    http: httpx.AsyncClient, make_client: MakeClient
) -> None:
    client = await make_client()
    response = await post(http, client.form(scope=None))
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"


@pytest.mark.parametrize(
    "scope",
    [
        "system/Patient.write",
        "system/*.cruds",
        "system/Nonsense.read",
        "system/Patient.rx",
        "system/Patient.sr",
        "patient/Patient.read",
        "   ",
    ],
)
async def test_scope_outside_the_allowed_or_invalid_is_invalid_scope(
    http: httpx.AsyncClient, make_client: MakeClient, scope: str
) -> None:
    client = await make_client(scope="system/*.rs")
    response = await post(http, client.form(scope=scope))
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_scope"


@pytest.mark.parametrize(
    ("allowed", "requested"),
    [
        ("system/*.rs", "system/Patient.read"),
        ("system/*.rs", "system/Observation.rs"),
        ("system/Observation.rs", "system/Observation.rs?category=laboratory"),
        ("system/*.cruds", "system/Patient.rs system/Observation.c"),
    ],
)
async def test_scope_within_the_allowed_is_granted_as_requested(
    http: httpx.AsyncClient, make_client: MakeClient, allowed: str, requested: str
) -> None:
    client = await make_client(scope=allowed)
    response = await post(http, client.form(scope=requested))
    assert response.status_code == 200, response.text
    assert response.json()["scope"] == requested


# --- request shape -------------------------------------------------------------------------


async def test_grant_type_other_than_client_credentials_is_unsupported(
    http: httpx.AsyncClient, make_client: MakeClient
) -> None:
    client = await make_client()
    response = await post(http, dict(client.form(), grant_type="password"))
    assert response.status_code == 400
    assert response.json()["error"] == "unsupported_grant_type"


async def test_missing_grant_type_is_invalid_request(
    http: httpx.AsyncClient, make_client: MakeClient
) -> None:
    client = await make_client()
    form = client.form()
    del form["grant_type"]
    response = await post(http, form)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"


@pytest.mark.parametrize("missing", ["client_assertion_type", "client_assertion"])
async def test_missing_assertion_parts_are_invalid_request(
    http: httpx.AsyncClient, make_client: MakeClient, missing: str
) -> None:
    client = await make_client()
    form = client.form()
    del form[missing]
    response = await post(http, form)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"


async def test_wrong_assertion_type_is_invalid_request(
    http: httpx.AsyncClient, make_client: MakeClient
) -> None:
    client = await make_client()
    form = dict(client.form(), client_assertion_type="urn:example:saml")
    assert (await post(http, form)).json()["error"] == "invalid_request"


async def test_two_authentication_methods_are_invalid_request(
    http: httpx.AsyncClient, make_client: MakeClient
) -> None:
    client = await make_client()
    response = await http.post(TOKEN, data=client.form(), auth=(client.client_id, "secret"))
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"
    form = dict(client.form(), client_secret="s")
    assert (await post(http, form)).json()["error"] == "invalid_request"


async def test_repeated_parameter_is_invalid_request(
    http: httpx.AsyncClient, make_client: MakeClient
) -> None:
    client = await make_client()
    form = client.form()
    body = httpx.QueryParams(form).add("scope", "system/Patient.read")
    response = await http.post(
        TOKEN,
        content=str(body),
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"
