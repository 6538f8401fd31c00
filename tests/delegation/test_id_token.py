"""OpenID Connect id_tokens of user grants (OIDC Core §2, §3.1.3.6, §12.2): RS256 with a
published key, their claims, a fresh one on refresh, discovery, and never an access token."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from fhirgate.oauth.jose import parse_compact, public_key_from_jwk, verify_signature
from tests.delegation.support import register_application
from tests.support import BASE, Running

# --------------------------------------------------------------------------- helpers


async def verified_claims(http: httpx.AsyncClient, id_token: str) -> dict[str, Any]:
    """The id_token's claims once its header is RS256/JWT with a published RSA ``kid`` and its
    signature verifies with that key from ``GET /.well-known/jwks.json``."""
    jws = parse_compact(id_token)
    assert jws.header["alg"] == "RS256"
    assert jws.header["typ"] == "JWT"
    kid = jws.header["kid"]
    jwks = await http.get("/.well-known/jwks.json")
    assert jwks.status_code == 200, jwks.text
    matching = [jwk for jwk in jwks.json()["keys"] if jwk.get("kid") == kid]
    assert len(matching) == 1, (kid, jwks.json())
    jwk = matching[0]
    assert jwk["kty"] == "RSA"
    key = public_key_from_jwk(jwk)
    assert verify_signature("RS256", key, jws.signing_input, jws.signature)
    tampered = jws.signing_input[:-1] + bytes([jws.signing_input[-1] ^ 1])
    assert not verify_signature("RS256", key, tampered, jws.signature)
    return jws.claims


def assert_id_token_claims(
    claims: dict[str, Any], oneup_user_id: int, client_id: str, not_before: int
) -> None:
    assert claims["iss"] == BASE == "http://127.0.0.1:8000"
    assert claims["sub"] == str(oneup_user_id)
    assert claims["aud"] == client_id
    assert isinstance(claims["iat"], int) and isinstance(claims["exp"], int)
    assert not_before <= claims["iat"] <= int(time.time())
    assert claims["exp"] > claims["iat"]
    assert isinstance(claims["auth_time"], int)
    assert claims["auth_time"] <= claims["iat"]


async def next_second() -> None:
    """Wait until the clock's whole second changes, so a new token's ``iat`` differs."""
    now = int(time.time())
    while int(time.time()) == now:
        await asyncio.sleep(0.05)


# --------------------------------------------------------------------------- tests


async def test_id_token_is_rs256_with_a_published_key_and_its_claims(running: Running) -> None:
    app = await register_application(running.services, running.http)
    before = int(time.time())
    tokens = await app.user_tokens("alice", scope="user/*.* openid")
    assert tokens["scope"] == "user/*.* openid"
    assert tokens["id_token"].count(".") == 2
    claims = await verified_claims(running.http, tokens["id_token"])
    assert_id_token_claims(claims, tokens["oneup_user_id"], app.client_id, before)
    assert set(claims) == {"iss", "sub", "aud", "iat", "exp", "auth_time"}
    assert before - 1 <= claims["auth_time"]


async def test_auth_time_is_when_the_code_was_issued(running: Running) -> None:
    app = await register_application(running.services, running.http)
    created = await app.create_user("alice", scope="user/*.rs openid")
    assert created.status_code == 200, created.text
    code_issued = int(time.time())
    await next_second()
    response = await app.exchange(created.json()["code"])
    assert response.status_code == 200, response.text
    claims = await verified_claims(running.http, response.json()["id_token"])
    assert claims["auth_time"] <= code_issued < claims["iat"]


async def test_refresh_with_openid_returns_a_fresh_id_token(running: Running) -> None:
    app = await register_application(running.services, running.http)
    tokens = await app.user_tokens("alice", scope="user/*.* openid")
    first = await verified_claims(running.http, tokens["id_token"])
    await next_second()

    response = await app.refresh(tokens["refresh_token"])
    assert response.status_code == 200, response.text
    refreshed = response.json()
    assert refreshed["id_token"] != tokens["id_token"]
    claims = await verified_claims(running.http, refreshed["id_token"])
    assert_id_token_claims(claims, tokens["oneup_user_id"], app.client_id, first["iat"] + 1)
    assert claims["auth_time"] == first["auth_time"]

    narrowed = await app.refresh(refreshed["refresh_token"], scope="user/Observation.rs openid")
    assert narrowed.status_code == 200, narrowed.text
    assert narrowed.json()["scope"] == "user/Observation.rs openid"
    claims = await verified_claims(running.http, narrowed.json()["id_token"])
    assert_id_token_claims(claims, tokens["oneup_user_id"], app.client_id, first["iat"] + 1)


async def test_openid_configuration_lists_rs256(running: Running) -> None:
    response = await running.http.get("/.well-known/openid-configuration")
    assert response.status_code == 200, response.text
    doc = response.json()
    assert doc["issuer"] == BASE
    assert doc["jwks_uri"] == f"{BASE}/.well-known/jwks.json"
    assert "RS256" in doc["id_token_signing_alg_values_supported"]


async def test_an_id_token_is_not_accepted_as_an_access_token(running: Running) -> None:
    app = await register_application(running.services, running.http)
    tokens = await app.user_tokens("alice", scope="user/*.* openid")
    good = await running.http.get(
        "/whoami", headers={"Authorization": f"Bearer {tokens['access_token']}"}
    )
    assert good.status_code == 200, good.text
    who = await running.http.get(
        "/whoami", headers={"Authorization": f"Bearer {tokens['id_token']}"}
    )
    assert who.status_code == 401, who.text
    assert who.json()["error"] == "invalid_token"
    assert 'error="invalid_token"' in who.headers["www-authenticate"]
