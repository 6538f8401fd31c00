"""The resource guard and GET /whoami (RFC 6750, RFC 9068 §4)."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from tests.support import MakeClient, Running, private_key

from fhirgate.oauth.jose import b64url_decode, b64url_encode, sign_compact


async def token_for(
    http: httpx.AsyncClient, make_client: MakeClient, scope: str = "system/*.rs"
) -> tuple[str, str]:
    client = await make_client(scope=scope)
    response = await http.post("/oauth2/token", data=client.form(scope))
    assert response.status_code == 200, response.text
    return client.client_id, response.json()["access_token"]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_invalid_token(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    assert response.json()["error"] == "invalid_token"
    assert response.headers["www-authenticate"].startswith('Bearer realm="fhirgate"')
    assert 'error="invalid_token"' in response.headers["www-authenticate"]


async def test_whoami_describes_the_caller(
    http: httpx.AsyncClient, make_client: MakeClient
) -> None:
    client_id, token = await token_for(http, make_client)
    response = await http.get("/whoami", headers=bearer(token))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["client_id"] == client_id
    assert body["sub"] == client_id
    assert body["scope"] == "system/*.rs"
    assert body["environment"] == "development"
    assert 0 < body["exp"] - time.time() <= 300


async def test_access_token_is_an_rfc9068_jwt(
    running: Running, http: httpx.AsyncClient, make_client: MakeClient
) -> None:
    client_id, token = await token_for(http, make_client)
    header_b64, claims_b64, _ = token.split(".")
    header = json.loads(b64url_decode(header_b64))
    claims = json.loads(b64url_decode(claims_b64))
    assert header["typ"] == "at+jwt"
    assert header["alg"] == "ES256"
    assert header["kid"] in {
        k["kid"] for k in (await http.get("/.well-known/jwks.json")).json()["keys"]
    }
    assert {
        "iss",
        "sub",
        "aud",
        "exp",
        "iat",
        "jti",
        "client_id",
        "scope",
        "organization",
        "environment",
    } <= set(claims)
    assert claims["iss"] == running.services.settings.issuer
    assert claims["exp"] - claims["iat"] == 300
    assert claims["client_id"] == client_id


async def test_request_without_credentials_gets_a_bare_challenge(http: httpx.AsyncClient) -> None:
    response = await http.get("/whoami")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer realm="fhirgate"'


@pytest.mark.parametrize("header", ["Basic abc", "Bearer", "Bearer a b", "token abc"])
async def test_wrong_scheme_is_invalid_token(http: httpx.AsyncClient, header: str) -> None:
    assert_invalid_token(await http.get("/whoami", headers={"Authorization": header}))


async def test_token_in_the_query_string_is_not_accepted(
    http: httpx.AsyncClient, make_client: MakeClient
) -> None:
    _, token = await token_for(http, make_client)
    response = await http.get("/whoami", params={"access_token": token})
    assert response.status_code == 401


async def test_tampered_token_is_rejected(http: httpx.AsyncClient, make_client: MakeClient) -> None:
    _, token = await token_for(http, make_client)
    header, claims, signature = token.split(".")
    body = json.loads(b64url_decode(claims))
    body["scope"] = "system/*.cruds"
    forged = ".".join([header, b64url_encode(json.dumps(body).encode()), signature])
    assert_invalid_token(await http.get("/whoami", headers=bearer(forged)))


async def test_token_signed_by_another_key_is_rejected(
    http: httpx.AsyncClient, make_client: MakeClient
) -> None:
    _, token = await token_for(http, make_client)
    header = json.loads(b64url_decode(token.split(".")[0]))
    claims = json.loads(b64url_decode(token.split(".")[1]))
    forged = sign_compact(header, claims, private_key("ES256", slot=3))
    assert_invalid_token(await http.get("/whoami", headers=bearer(forged)))


@pytest.mark.parametrize(
    ("field", "value"),
    [("iss", "https://other.example"), ("aud", "https://other.example"), ("exp", 1)],
)
async def test_wrong_issuer_audience_or_expired_is_rejected(
    running: Running, http: httpx.AsyncClient, make_client: MakeClient, field: str, value: object
) -> None:
    """Validly signed by the server's own key, but with one claim wrong."""
    _, token = await token_for(http, make_client)
    header = json.loads(b64url_decode(token.split(".")[0]))
    claims = json.loads(b64url_decode(token.split(".")[1]))
    claims[field] = value
    signer = running.services.keyring.signer
    forged = sign_compact(header, claims, signer.private_key)
    assert_invalid_token(await http.get("/whoami", headers=bearer(forged)))


async def test_wrong_typ_is_rejected(
    running: Running, http: httpx.AsyncClient, make_client: MakeClient
) -> None:
    """A JWT signed by the server but not typed at+jwt (RFC 8725 §3.11)."""
    _, token = await token_for(http, make_client)
    header = json.loads(b64url_decode(token.split(".")[0]))
    claims = json.loads(b64url_decode(token.split(".")[1]))
    forged = sign_compact(
        dict(header, typ="JWT"), claims, running.services.keyring.signer.private_key
    )
    assert_invalid_token(await http.get("/whoami", headers=bearer(forged)))


async def test_revoked_token_is_rejected(
    running: Running, http: httpx.AsyncClient, make_client: MakeClient
) -> None:
    _, token = await token_for(http, make_client)
    assert (await http.get("/whoami", headers=bearer(token))).status_code == 200
    await running.services.tokens.revoke(await running.services.tokens.verify(token))
    assert_invalid_token(await http.get("/whoami", headers=bearer(token)))


async def test_token_of_a_revoked_client_is_rejected(
    running: Running, http: httpx.AsyncClient, make_client: MakeClient
) -> None:
    client_id, token = await token_for(http, make_client)
    await running.services.clients.revoke(client_id)
    running.services.directory.forget(client_id)  # what the ≤ 5 s cache expiry does
    assert_invalid_token(await http.get("/whoami", headers=bearer(token)))
