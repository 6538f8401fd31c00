"""POST /v2/auth/token: Redox's body, descriptions and statuses over the same core checks."""

from __future__ import annotations

import time

import httpx
import pytest
from tests.support import BASE, MakeClient, SigningClient

from fhirgate.dialects.redox import REDOX_ERROR_URI

REDOX = "/v2/auth/token"
KEY_NOT_FOUND = "Public key not found, check client_id, kid and Redox dashboard settings"


async def redox_client(make_client: MakeClient, alg: str = "RS384") -> SigningClient:
    client = await make_client(alg)
    client.token_url = f"{BASE}{REDOX}"
    return client


def redox_form(client: SigningClient, **claims: object) -> dict[str, str]:
    """Redox's own sample: no scope, and (in its JavaScript) no exp."""
    return client.form(scope=None, **claims)


def assert_redox_error(response: httpx.Response, status: int, description: str) -> None:
    assert response.status_code == status, response.text
    assert response.json() == {
        "error": "invalid_request",
        "error_description": description,
        "error_uri": REDOX_ERROR_URI,
    }
    assert response.headers["cache-control"] == "no-store"


async def test_redox_grant_without_scope_gets_the_clients_allowed_scope(
    http: httpx.AsyncClient, make_client: MakeClient
) -> None:
    client = await redox_client(make_client)
    response = await http.post(REDOX, data=redox_form(client))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 300
    assert body["scope"] == "system/*.rs"


async def test_redox_grant_with_an_empty_scope_counts_as_without_one(
    http: httpx.AsyncClient, make_client: MakeClient
) -> None:
    """``scope`` is optional on Redox's path: an empty ``scope=`` is its omission there, not
    the ``invalid_scope`` of ``/oauth2/token`` (docs/security.md, scopes)."""
    client = await redox_client(make_client)
    response = await http.post(REDOX, data={**redox_form(client), "scope": ""})
    assert response.status_code == 200, response.text
    assert response.json()["scope"] == "system/*.rs"


async def test_redox_assertion_with_a_bearer_authorization_header_is_accepted(
    http: httpx.AsyncClient, make_client: MakeClient
) -> None:
    """Only ``Authorization: Basic`` is client authentication: a ``Bearer`` header beside the
    assertion is ignored, not taken for a second method."""
    client = await redox_client(make_client)
    headers = {"Authorization": "Bearer x"}
    response = await http.post(REDOX, data=redox_form(client), headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["token_type"] == "Bearer"


async def test_redox_assertion_without_exp_is_accepted_while_iat_is_fresh(
    http: httpx.AsyncClient, make_client: MakeClient
) -> None:
    client = await redox_client(make_client)
    form = redox_form(client)
    form["client_assertion"] = client.assertion(drop=("exp",))
    assert (await http.post(REDOX, data=form)).status_code == 200


async def test_redox_assertion_without_exp_and_stale_iat_is_rejected_blank(
    http: httpx.AsyncClient, make_client: MakeClient
) -> None:
    client = await redox_client(make_client)
    form = redox_form(client)
    form["client_assertion"] = client.assertion(drop=("exp",), iat=int(time.time()) - 311)
    assert_redox_error(await http.post(REDOX, data=form), 401, "")


async def test_redox_iat_window_allows_ten_seconds_of_skew(
    http: httpx.AsyncClient, make_client: MakeClient
) -> None:
    client = await redox_client(make_client)
    now = int(time.time())
    assert (await http.post(REDOX, data=redox_form(client, iat=now + 5))).status_code == 200
    assert_redox_error(await http.post(REDOX, data=redox_form(client, iat=now + 30)), 401, "")


async def test_redox_requires_iat(http: httpx.AsyncClient, make_client: MakeClient) -> None:
    client = await redox_client(make_client)
    form = redox_form(client)
    form["client_assertion"] = client.assertion(drop=("iat",))
    assert_redox_error(await http.post(REDOX, data=form), 401, "Unexpected iat claim value")


async def test_redox_standard_audience_is_not_accepted(
    http: httpx.AsyncClient, make_client: MakeClient
) -> None:
    client = await redox_client(make_client)
    form = redox_form(client, aud=f"{BASE}/oauth2/token")
    assert_redox_error(await http.post(REDOX, data=form), 401, "")


async def test_redox_replayed_jti_is_blank(
    http: httpx.AsyncClient, make_client: MakeClient
) -> None:
    client = await redox_client(make_client)
    form = redox_form(client)
    assert (await http.post(REDOX, data=form)).status_code == 200
    assert_redox_error(await http.post(REDOX, data=form), 401, "")


async def test_redox_wrong_alg_is_blank(http: httpx.AsyncClient, make_client: MakeClient) -> None:
    client = await redox_client(make_client, "ES384")
    from tests.support import private_key

    form = redox_form(client)
    form["client_assertion"] = client.assertion(header={"alg": "ES256"}, key=private_key("ES256"))
    assert_redox_error(await http.post(REDOX, data=form), 401, "")


async def test_redox_missing_kid(http: httpx.AsyncClient, make_client: MakeClient) -> None:
    client = await redox_client(make_client)
    form = redox_form(client)
    form["client_assertion"] = client.assertion(drop=("kid",))
    assert_redox_error(
        await http.post(REDOX, data=form), 401, "JWT header kid property is required"
    )


@pytest.mark.parametrize("breakage", ["unknown_client", "unknown_kid"])
async def test_redox_key_not_found(
    http: httpx.AsyncClient, make_client: MakeClient, breakage: str
) -> None:
    client = await redox_client(make_client)
    form = redox_form(client)
    if breakage == "unknown_client":
        form["client_assertion"] = client.assertion(iss="nobody", sub="nobody")
    else:
        form["client_assertion"] = client.assertion(header={"kid": "other"})
    assert_redox_error(await http.post(REDOX, data=form), 401, KEY_NOT_FOUND)


@pytest.mark.parametrize("claim", ["iss", "sub", "jti", "aud"])
async def test_redox_missing_claim_names_it(
    http: httpx.AsyncClient, make_client: MakeClient, claim: str
) -> None:
    client = await redox_client(make_client)
    form = redox_form(client)
    form["client_assertion"] = client.assertion(drop=(claim,))
    assert_redox_error(await http.post(REDOX, data=form), 401, f"Unexpected {claim} claim value")


async def test_redox_malformed_exp_names_it(
    http: httpx.AsyncClient, make_client: MakeClient
) -> None:
    client = await redox_client(make_client)
    form = redox_form(client, exp="tomorrow")
    assert_redox_error(await http.post(REDOX, data=form), 401, "Unexpected exp claim value")


async def test_redox_wrong_typ_names_it(http: httpx.AsyncClient, make_client: MakeClient) -> None:
    client = await redox_client(make_client)
    form = redox_form(client)
    form["client_assertion"] = client.assertion(header={"typ": "at+jwt"})
    assert_redox_error(await http.post(REDOX, data=form), 401, "Unexpected typ claim value")


@pytest.mark.parametrize(
    ("change", "description"),
    [
        ({"grant_type": None}, "Missing grant_type parameter"),
        (
            {"grant_type": "authorization_code"},
            "The grant_type parameter should equal 'client_credentials'",
        ),
        ({"client_assertion_type": None}, "Missing client assertion type"),
        ({"client_assertion_type": "urn:other"}, "Invalid client assertion type"),
        ({"client_assertion": None}, "Missing client assertion"),
    ],
)
async def test_redox_malformed_requests_are_400_with_redox_text(
    http: httpx.AsyncClient,
    make_client: MakeClient,
    change: dict[str, str | None],
    description: str,
) -> None:
    client = await redox_client(make_client)
    form = redox_form(client)
    for name, value in change.items():
        if value is None:
            del form[name]
        else:
            form[name] = value
    assert_redox_error(await http.post(REDOX, data=form), 400, description)


async def test_redox_requires_form_content_type(
    http: httpx.AsyncClient, make_client: MakeClient
) -> None:
    client = await redox_client(make_client)
    response = await http.post(REDOX, json=redox_form(client))
    assert_redox_error(response, 400, "x-www-form-urlencoded content-type required")


async def test_redox_scope_when_given_is_narrowed(
    http: httpx.AsyncClient, make_client: MakeClient
) -> None:
    client = await redox_client(make_client)
    form = client.form(scope="system/Patient.rs")
    response = await http.post(REDOX, data=form)
    assert response.status_code == 200
    assert response.json()["scope"] == "system/Patient.rs"
    over = client.form(scope="system/Patient.cruds")
    response = await http.post(REDOX, data=over)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"
