"""Bad input at the Platform API: always a 4xx in the error shape, never a 5xx; and the OpenAPI
description of the API. Here ``allow_insecure_jwks`` is off, as in production."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from fhirgate.config import Settings
from fhirgate.domain.organizations import OrganizationRole
from fhirgate.oauth.jose import b64url_encode, jwk_from_public_key
from tests.platform.support import (
    Caller,
    Org,
    apikeys_path,
    assert_error,
    caller,
    organization,
    person,
    public_jwk,
)
from tests.support import BASE, Running, private_key


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path}/fhirgate.db",
        var_dir=tmp_path / "var",
        public_url=BASE,
        allow_insecure_jwks=False,
    )


@pytest.fixture
async def acme(running: Running) -> tuple[Org, Caller]:
    org = await organization(running.services, "acme")
    owner = await person(running.services, "owner@acme.example", org, OrganizationRole.OWNER)
    return org, await caller(running.services, running.http, owner)


def _rsa_1024_jwk() -> dict[str, Any]:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505
    return jwk_from_public_key(weak.public_key(), "weak")


def _set(*keys: dict[str, Any]) -> dict[str, Any]:
    return {"name": "k", "jwkSet": {"keys": list(keys)}}


def _without(member: str) -> dict[str, Any]:
    return {k: v for k, v in public_jwk().items() if k != member}


def _url(url: str) -> dict[str, Any]:
    return {"name": "k", "jwksURL": url}


BAD_CREATIONS: list[tuple[str, Any, str | None]] = [
    ("private member d", _set({**public_jwk(), "d": "AAAA"}), "jwkSet"),
    ("symmetric key", _set({"kid": "s", "kty": "oct", "k": "AAAA"}), "jwkSet"),
    ("missing kid", _set(_without("kid")), "jwkSet.keys.0.kid"),
    ("missing kty", _set(_without("kty")), "jwkSet.keys.0.kty"),
    ("bad kty", _set({**public_jwk(), "kty": "OKP"}), "jwkSet"),
    ("RSA without n", _set({"kid": "r", "kty": "RSA", "e": "AQAB"}), "jwkSet"),
    ("weak RSA key", _set(_rsa_1024_jwk()), "jwkSet"),
    ("duplicate kids", _set(public_jwk("a"), public_jwk("a", slot=4)), "jwkSet"),
    ("21 keys", _set(*(public_jwk(f"k{i}") for i in range(21))), "jwkSet.keys"),
    ("keys not a list", {"name": "k", "jwkSet": {"keys": "none"}}, "jwkSet.keys"),
    ("http JWKS URL", _url("http://keys.example.org/jwks.json"), "jwksURL"),
    ("relative JWKS URL", _url("/jwks.json"), "jwksURL"),
    ("JWKS URL with credentials", _url("https://u:p@keys.example.org/j"), "jwksURL"),
    ("overlong JWKS URL", _url("https://keys.example.org/" + "a" * 2100), "jwksURL"),
    ("unknown field", {"name": "k", "color": "red"}, "color"),
    ("unknown jwkSet field", {"name": "k", "jwkSet": {"keys": [], "extra": 1}}, "jwkSet.extra"),
    ("name missing", {"jwksURL": "https://keys.example.org/jwks.json"}, "name"),
    ("name not text", {"name": 5}, "name"),
    ("name blank", {"name": "   "}, "name"),
    ("name too long", {"name": "n" * 101}, "name"),
    ("name with a line break", {"name": "a\nb"}, "name"),
    ("jwksURL not text", {"name": "k", "jwksURL": 7}, "jwksURL"),
    ("body an array", [{"name": "k"}], None),
    ("body a string", "k", None),
]


@pytest.mark.parametrize(
    ("body", "field"), [case[1:] for case in BAD_CREATIONS], ids=[c[0] for c in BAD_CREATIONS]
)
async def test_invalid_creations_are_422_naming_the_field(
    running: Running, acme: tuple[Org, Caller], body: Any, field: str | None
) -> None:
    org, me = acme
    response = await me.post(apikeys_path(org.dev), body)
    found = assert_error(response, 422, "invalid_value")
    if field is not None:
        assert field in [item.get("field") for item in found["errors"]], found
    assert (await me.get(apikeys_path(org.dev))).json()["payload"]["apikeys"] == []


async def test_invalid_updates_are_refused_and_change_nothing(
    running: Running, acme: tuple[Org, Caller]
) -> None:
    org, me = acme
    created = await me.post(
        apikeys_path(org.dev), {"name": "k", "jwkSet": {"keys": [public_jwk()]}}
    )
    key = created.json()["payload"]["apikey"]
    path = f"/platform/v1/apikeys/{key['id']}"
    for body, field in (
        ({"name": None}, "name"),
        ({"name": ""}, "name"),
        ({"jwksURL": "ftp://keys.example.org/jwks"}, "jwksURL"),
        ({"jwkSet": {"keys": [{**public_jwk(), "p": "AAAA", "q": "AAAA"}]}}, "jwkSet"),
        ({"id": "another-id"}, "id"),
        ({"environment": {"id": org.prod.id}}, "environment"),
    ):
        found = assert_error(await me.patch(path, body), 422, "invalid_value")
        assert field in [item.get("field") for item in found["errors"]], found
    after = (await me.get(path)).json()["payload"]["apikey"]
    assert after == {**key, "lastUsedAt": None}


async def test_malformed_bodies_and_unknown_routes_get_the_error_shape(
    running: Running, acme: tuple[Org, Caller]
) -> None:
    org, me = acme
    path = apikeys_path(org.dev)
    json_type = {"Content-Type": "application/json"}
    malformed = await me.send("POST", path, content=b'{"name": ', headers=json_type)
    assert_error(malformed, 400, "invalid_request")
    not_utf8 = await me.send("POST", path, content=b'{"name": "\xff"}', headers=json_type)
    assert 400 <= not_utf8.status_code < 500
    assert_error(not_utf8, not_utf8.status_code)
    empty = await me.send("POST", path, content=b"", headers=json_type)
    assert_error(empty, 422, "invalid_value")
    form = await me.send("POST", path, content=b"name=k", headers={"Content-Type": "text/plain"})
    assert_error(form, 415, "unsupported_media_type")
    unknown = await me.get("/platform/v1/nothing/here")
    assert_error(unknown, 404, "not_found")
    wrong_method = await me.send("PUT", f"/platform/v1/apikeys/{'x' * 10}")
    assert_error(wrong_method, 405, "method_not_allowed")
    assert wrong_method.headers["allow"] == "DELETE, GET, PATCH"
    huge_id = await me.get(f"/platform/v1/apikeys/{'x' * 5000}")
    assert_error(huge_id, 404, "not_found")
    odd_env = await me.get("/platform/v1/environments/%00%ff/apikeys")
    assert_error(odd_env, 404, "not_found")
    limit = running.services.settings.request_body_limit
    oversized = b'{"name": "' + b"k" * limit + b'"}'
    too_large = await me.send("POST", path, content=oversized, headers=json_type)
    assert_error(too_large, 413, "too_large")


async def test_the_openapi_schema_documents_the_platform_api(running: Running) -> None:
    schema = (await running.http.get("/openapi.json")).json()
    paths = schema["paths"]
    assert set(paths["/platform/v1/environments/{environmentId}/apikeys"]) == {"get", "post"}
    assert set(paths["/platform/v1/apikeys/{apikeyId}"]) == {"get", "patch", "delete"}
    assert "get" in paths["/platform/v1/environments"]
    assert not any("{path}" in path for path in paths)  # the catch-all stays out
    scheme = schema["components"]["securitySchemes"]["userApiKeyToken"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    create = paths["/platform/v1/environments/{environmentId}/apikeys"]["post"]
    assert create["summary"] == "Create an API key"
    assert create["security"] == [{"userApiKeyToken": []}]
    body_ref = create["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert body_ref.endswith("/ApiKeyCreate")
    assert set(create["responses"]) >= {"201", "400", "401", "403", "404", "422"}
    error = schema["components"]["schemas"]["ErrorResponse"]
    assert set(error["properties"]) == {"meta", "errors", "requestId"}
    apikey = schema["components"]["schemas"]["ApiKey"]["properties"]
    assert {"id", "name", "jwksURL", "jwkSet", "environment"} <= set(apikey)
    flags = schema["components"]["schemas"]["EnvironmentRef"]["properties"]["environmentFlag"]
    assert flags["enum"] == ["Development", "Staging", "Production"]


async def test_a_jwk_with_private_members_is_never_stored(
    running: Running, acme: tuple[Org, Caller]
) -> None:
    """Through the Platform API's create and patch, then straight from storage."""
    org, me = acme
    key = private_key("ES384", 3)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    numbers = key.private_numbers()
    private = {**public_jwk(), "d": b64url_encode(numbers.private_value.to_bytes(48, "big"))}
    refused = await me.post(apikeys_path(org.dev), {"name": "k", "jwkSet": {"keys": [private]}})
    message = assert_error(refused, 422)["errors"][0]["message"]
    assert "private" in message and private["d"] not in refused.text
    for client in await running.services.clients.list():
        for jwk in (client.jwks or {}).get("keys", []):
            assert "d" not in jwk
