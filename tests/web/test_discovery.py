"""Discovery documents (SMART conformance, RFC 8414) and the server JWK Set."""

from __future__ import annotations

import httpx
from tests.support import BASE


async def test_smart_configuration(http: httpx.AsyncClient) -> None:
    response = await http.get("/.well-known/smart-configuration")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers["access-control-allow-origin"] == "*"
    doc = response.json()
    assert "issuer" not in doc  # omitted without sso-openid-connect
    assert doc["token_endpoint"] == f"{BASE}/oauth2/token"
    assert doc["jwks_uri"] == f"{BASE}/.well-known/jwks.json"
    assert doc["grant_types_supported"] == [
        "client_credentials",
        "authorization_code",
        "refresh_token",
    ]
    assert doc["token_endpoint_auth_methods_supported"] == [
        "private_key_jwt",
        "client_secret_basic",
        "client_secret_post",
    ]
    assert doc["revocation_endpoint"] == f"{BASE}/oauth2/revoke"
    assert doc["introspection_endpoint"] == f"{BASE}/oauth2/introspect"
    assert doc["token_endpoint_auth_signing_alg_values_supported"] == ["ES384", "RS384"]
    assert "client-confidential-asymmetric" in doc["capabilities"]
    assert doc["code_challenge_methods_supported"] == ["S256"]
    assert "system/*.rs" in doc["scopes_supported"]
    assert "platform" in doc["scopes_supported"]  # the Platform API's tokens


async def test_oauth_authorization_server_metadata(http: httpx.AsyncClient) -> None:
    doc = (await http.get("/.well-known/oauth-authorization-server")).json()
    assert doc["issuer"] == BASE
    assert doc["token_endpoint"] == f"{BASE}/oauth2/token"
    assert doc["code_challenge_methods_supported"] == ["S256"]
    assert "plain" not in doc["code_challenge_methods_supported"]


async def test_urls_come_from_configuration_not_the_host_header(http: httpx.AsyncClient) -> None:
    doc = (
        await http.get("/.well-known/smart-configuration", headers={"Host": "evil.example"})
    ).json()
    assert doc["token_endpoint"] == f"{BASE}/oauth2/token"


async def test_jwks_publishes_public_keys_only(http: httpx.AsyncClient) -> None:
    response = await http.get("/.well-known/jwks.json")
    keys = {key["alg"]: key for key in response.json()["keys"]}
    assert sorted(keys) == ["ES256", "RS256"]  # access tokens; id_tokens
    assert keys["ES256"]["kty"] == "EC" and keys["RS256"]["kty"] == "RSA"
    for key in keys.values():
        assert key["use"] == "sig" and key["kid"]
        assert not {"d", "p", "q", "dp", "dq", "qi"} & set(key)  # no private parts


async def test_openid_configuration(http: httpx.AsyncClient) -> None:
    response = await http.get("/.well-known/openid-configuration")
    assert response.status_code == 200
    doc = response.json()
    assert doc["issuer"] == BASE
    assert doc["jwks_uri"] == f"{BASE}/.well-known/jwks.json"
    assert doc["token_endpoint"] == f"{BASE}/oauth2/token"
    assert doc["id_token_signing_alg_values_supported"] == ["RS256"]
    assert doc["subject_types_supported"] == ["public"]
    assert "authorization_code" in doc["grant_types_supported"]
    assert "authorization_endpoint" not in doc  # codes come from the user-management API
