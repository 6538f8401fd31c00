"""The Postman export of an API key: a collection and an environment to try the key with.

An API key is a client authenticating with ``private_key_jwt`` (SMART Backend Services, RFC 7523
§2.2). The collection (Postman collection format v2.1.0,
https://schema.getpostman.com/json/collection/v2.1.0/collection.json) holds three requests:
"Get access token", whose pre-request script signs the client assertion inside Postman's sandbox
(RS384 per RFC 8017 §8.2.1, ES384 per SEC 1 §4.1.3 with RFC 6979 nonces; RFC 7518 §3.3-3.4),
"Who am I" and "Search patients". It carries no per-key secret and is the same for every key of
one algorithm but for its id and name. The environment (Postman's environment export:
``id``, ``name``, ``values`` of ``key``/``value``/``type``/``enabled``,
``_postman_variable_scope``) holds the key's URLs, client id, kid and algorithm, and the private
JWK (RFC 7517, RFC 7518 §6) only when the browser has just generated it. Ids are UUIDv5 of the
client id (RFC 9562 §5.5), so downloading again gives the same files. See docs/postman.md.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from importlib import resources
from typing import Any

__all__ = [
    "ALGORITHMS",
    "COLLECTION_SCHEMA",
    "ENVIRONMENT_KEYS",
    "PRIVATE_KEY_NOTE",
    "REQUEST_NAMES",
    "collection",
    "environment",
    "prerequest_script",
]

COLLECTION_SCHEMA = "https://schema.getpostman.com/json/collection/v2.1.0/collection.json"
#: Algorithm → the JWK ``kty`` (and, for EC, ``crv``) it needs (RFC 7518 §3.1, §6.1).
ALGORITHMS: Mapping[str, tuple[str, str | None]] = {
    "RS384": ("RSA", None),
    "ES384": ("EC", "P-384"),
}
REQUEST_NAMES = ("Get access token", "Who am I", "Search patients")
ENVIRONMENT_KEYS = (
    "baseUrl",
    "tokenUrl",
    "clientId",
    "kid",
    "alg",
    "scope",
    "privateKey",
    "accessToken",
    "note",
)
PRIVATE_KEY_NOTE = (
    "privateKey holds your private JWK only in an environment downloaded right after the key "
    "pair was generated in the browser; fhirgate never stores private keys. Otherwise paste "
    "your private JWK (the JSON object) into privateKey. Keep this file secret if it has one."
)
_NAMESPACE = uuid.UUID("5c0ac7a4-6d1f-5b4e-9d0a-8f2e6a1b3c7d")
_JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

_TOKEN_TESTS = [
    "pm.test('token request succeeded (200)', function () {",
    "    pm.response.to.have.status(200);",
    "});",
    "pm.test('the response carries an access token', function () {",
    "    const token = pm.response.json().access_token;",
    "    pm.environment.set('accessToken', token || '');",
    "    pm.expect(token).to.be.a('string').and.not.be.empty;",
    "});",
]
_WHOAMI_TESTS = [
    "pm.test('status is 200', function () {",
    "    pm.response.to.have.status(200);",
    "});",
    "pm.test('the token belongs to this client', function () {",
    "    pm.expect(pm.response.json().client_id).to.eql(pm.variables.get('clientId'));",
    "});",
]
_SEARCH_TESTS = [
    "pm.test('status is 200', function () {",
    "    pm.response.to.have.status(200);",
    "});",
    "pm.test('a FHIR searchset Bundle', function () {",
    "    const bundle = pm.response.json();",
    "    pm.expect(bundle.resourceType).to.eql('Bundle');",
    "    pm.expect(bundle.type).to.eql('searchset');",
    "});",
]


def _check_alg(alg: str) -> None:
    if alg not in ALGORITHMS:
        raise ValueError(f"alg must be one of {', '.join(ALGORITHMS)}, not {alg!r}")


def _id(kind: str, client_id: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"{kind}:{client_id}"))


def prerequest_script() -> str:
    """The JavaScript that signs the client assertion (``postman_prerequest.js``)."""
    source = resources.files("fhirgate.dashboard").joinpath("postman_prerequest.js")
    return source.read_text(encoding="utf-8")


def _event(listen: str, lines: list[str]) -> dict[str, Any]:
    return {"listen": listen, "script": {"type": "text/javascript", "exec": list(lines)}}


def _url(raw: str, host: str, path: list[str], query: dict[str, str]) -> dict[str, Any]:
    url: dict[str, Any] = {"raw": raw, "host": [host]}
    if path:
        url["path"] = path
    if query:
        url["query"] = [{"key": key, "value": value} for key, value in query.items()]
    return url


def _bearer(*extra: tuple[str, str]) -> list[dict[str, str]]:
    headers = [("Authorization", "Bearer {{accessToken}}"), *extra]
    return [{"key": key, "value": value, "type": "text"} for key, value in headers]


def collection(*, name: str, client_id: str, alg: str) -> dict[str, Any]:
    """The collection (format v2.1.0) for one API key; ``client_id`` only seeds its id.

    ``alg`` (RS384 or ES384) is the collection variable ``alg``, which the environment's
    ``alg`` overrides. No secret is embedded: the script reads the key from the environment.
    """
    _check_alg(alg)
    token = {
        "name": REQUEST_NAMES[0],
        "event": [
            _event("prerequest", prerequest_script().splitlines()),
            _event("test", _TOKEN_TESTS),
        ],
        "request": {
            "method": "POST",
            "header": [
                {
                    "key": "Content-Type",
                    "value": "application/x-www-form-urlencoded",
                    "type": "text",
                }
            ],
            "body": {
                "mode": "urlencoded",
                "urlencoded": [
                    {"key": key, "value": value, "type": "text"}
                    for key, value in (
                        ("grant_type", "client_credentials"),
                        ("client_assertion_type", _JWT_BEARER),
                        ("client_assertion", "{{clientAssertion}}"),
                        ("scope", "{{scope}}"),
                    )
                ],
            },
            "url": _url("{{tokenUrl}}", "{{tokenUrl}}", [], {}),
            "description": (
                "client_credentials grant with a signed client assertion (SMART Backend "
                "Services; RFC 7523). The pre-request script signs the assertion with the "
                "private JWK in the environment variable privateKey; the tests store the "
                "access token in accessToken."
            ),
        },
        "response": [],
    }
    whoami = {
        "name": REQUEST_NAMES[1],
        "event": [_event("test", _WHOAMI_TESTS)],
        "request": {
            "method": "GET",
            "header": _bearer(),
            "url": _url("{{baseUrl}}/whoami", "{{baseUrl}}", ["whoami"], {}),
            "description": "The caller as its access token describes it.",
        },
        "response": [],
    }
    search = {
        "name": REQUEST_NAMES[2],
        "event": [_event("test", _SEARCH_TESTS)],
        "request": {
            "method": "GET",
            "header": _bearer(("Accept", "application/fhir+json")),
            "url": _url(
                "{{baseUrl}}/fhir/R4/Patient?_count=10",
                "{{baseUrl}}",
                ["fhir", "R4", "Patient"],
                {"_count": "10"},
            ),
            "description": "A FHIR R4 search: the first 10 patients, as a searchset Bundle.",
        },
        "response": [],
    }
    return {
        "info": {
            "_postman_id": _id("collection", client_id),
            "name": name,
            "description": (
                "fhirgate API key (private_key_jwt). Use it with the environment downloaded "
                "with it and run the requests in order. Get access token signs a client "
                "assertion in Postman itself. " + PRIVATE_KEY_NOTE
            ),
            "schema": COLLECTION_SCHEMA,
        },
        "item": [token, whoami, search],
        "variable": [{"key": "alg", "value": alg, "type": "string"}],
    }


def _check_private_jwk(jwk: Mapping[str, Any], alg: str) -> None:
    kty, crv = ALGORITHMS[alg]
    if jwk.get("kty") != kty or (crv is not None and jwk.get("crv") != crv):
        raise ValueError(f"{alg} needs a private {kty} JWK" + (f" on {crv}" if crv else ""))
    if not isinstance(jwk.get("d"), str):
        raise ValueError("private_jwk must be a private key (with the member 'd')")


def environment(
    *,
    name: str,
    base_url: str,
    token_url: str,
    client_id: str,
    kid: str,
    alg: str,
    scope: str = "system/*.rs",
    private_jwk: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The Postman environment for one API key.

    ``scope`` is what "Get access token" asks for (the token endpoint requires one): the
    client's allowed scopes. ``private_jwk`` is set only for the download made right after the
    browser generated the key pair; otherwise ``privateKey`` is empty and ``note`` says to paste
    the key in.
    """
    _check_alg(alg)
    secret = ""
    if private_jwk is not None:
        _check_private_jwk(private_jwk, alg)
        secret = json.dumps(dict(private_jwk), separators=(",", ":"))
    values = {
        "baseUrl": base_url.rstrip("/"),
        "tokenUrl": token_url,
        "clientId": client_id,
        "kid": kid,
        "alg": alg,
        "scope": scope,
        "privateKey": secret,
        "accessToken": "",
        "note": PRIVATE_KEY_NOTE,
    }
    secrets = {"privateKey", "accessToken"}
    return {
        "id": _id("environment", client_id),
        "name": name,
        "values": [
            {
                "key": key,
                "value": value,
                "type": "secret" if key in secrets else "default",
                "enabled": True,
            }
            for key, value in values.items()
        ],
        "_postman_variable_scope": "environment",
    }
