"""Bad input and faults: always a 4xx in the surface's format, never a 5xx, never a token."""

from __future__ import annotations

import json
import logging
import secrets
import time

import httpx
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from tests.support import (
    MakeClient,
    Running,
    SigningClient,
    register_client,
    register_secret_client,
    start,
)

from fhirgate.config import Settings
from fhirgate.oauth.client_auth import JWT_BEARER
from fhirgate.oauth.jose import b64url_encode

FORM = {"content-type": "application/x-www-form-urlencoded"}


def assertion_form(assertion: str) -> dict[str, str]:
    return {
        "grant_type": "client_credentials",
        "client_assertion_type": JWT_BEARER,
        "client_assertion": assertion,
        "scope": "system/*.rs",
    }


def b64(text: str) -> str:
    return b64url_encode(text.encode())


HEADER = b64('{"alg":"RS384"}')
EMPTY = b64("{}")


@pytest.mark.parametrize(
    "assertion",
    [
        "only.two",
        "a.b.c.d",
        "a.b.c.d.e",
        HEADER + ".!!!.sig",
        HEADER + "." + EMPTY + ".c2ln=",
        b64("not json") + "." + EMPTY + ".AA",
        b64("[1,2]") + "." + EMPTY + ".AA",
        b64('{"alg":"RS384","alg":"none"}') + "." + EMPTY + ".AA",
        b64('{"alg":"RS384","kid":"k"}') + "." + b64('{"iss":1,"iss":2}') + ".AA",
        HEADER + "." + EMPTY + ".A",
        "",
    ],
    ids=[
        "2-segments",
        "4-segments",
        "5-segments",
        "bad-base64",
        "padded-base64",
        "header-not-json",
        "header-not-object",
        "duplicate-header-member",
        "duplicate-claim",
        "impossible-base64-length",
        "empty",
    ],
)
async def test_malformed_assertion_is_a_clean_4xx(http: httpx.AsyncClient, assertion: str) -> None:
    response = await http.post("/oauth2/token", data=assertion_form(assertion))
    assert 400 <= response.status_code < 500, response.text
    assert response.json()["error"] in {"invalid_client", "invalid_request"}


async def test_one_megabyte_assertion_is_a_clean_4xx(http: httpx.AsyncClient) -> None:
    big = "a" * (1024 * 1024) + ".b.c"
    response = await http.post("/oauth2/token", data=assertion_form(big))
    assert response.status_code == 413
    assert response.json()["error"] == "invalid_request"


async def test_assertion_over_the_size_cap_is_invalid_client(http: httpx.AsyncClient) -> None:
    response = await http.post("/oauth2/token", data=assertion_form("a" * 20_000 + ".b.c"))
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"


async def test_body_over_64_kib_is_413(http: httpx.AsyncClient) -> None:
    response = await http.post("/oauth2/token", content=b"x=" + b"a" * 70_000, headers=FORM)
    assert response.status_code == 413


async def test_streamed_body_over_64_kib_without_length_is_413(http: httpx.AsyncClient) -> None:
    async def chunks():  # type: ignore[no-untyped-def]
        for _ in range(20):
            yield b"a" * 8192

    response = await http.post("/oauth2/token", content=chunks(), headers=FORM)
    assert response.status_code == 413


@pytest.mark.parametrize(
    "content_type", ["application/json", "text/plain", "multipart/form-data; boundary=x", None]
)
async def test_wrong_content_type_is_invalid_request(
    http: httpx.AsyncClient, make_client: MakeClient, content_type: str | None
) -> None:
    client = await make_client()
    body = str(httpx.QueryParams(client.form()))
    headers = {"content-type": content_type} if content_type else {}
    response = await http.post("/oauth2/token", content=body, headers=headers)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"


@pytest.mark.parametrize(
    "body",
    [
        b"grant_type=%ff%fe",  # percent-encoded bytes that are not UTF-8
        b"grant_type=client_credentials&\xff=1",  # raw bytes that are not UTF-8
        b"grant_type=client_credentials&scope",  # a field without "="
        b"grant_type=client_credentials&&scope=x",  # an empty field
        b"&".join(b"f%d=1" % n for n in range(65)),  # more than 64 fields
    ],
)
async def test_malformed_form_is_invalid_request(http: httpx.AsyncClient, body: bytes) -> None:
    response = await http.post("/oauth2/token", content=body, headers=FORM)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"
    assert response.json()["error_description"] == "the request body is not a valid form"


async def test_form_plus_is_a_space(http: httpx.AsyncClient, make_client: MakeClient) -> None:
    client = await make_client(scope="system/Patient.rs system/Observation.rs")
    body = (
        str(httpx.QueryParams(client.form(scope=None)))
        + "&scope=system/Patient.rs+system/Observation.rs"
    )
    response = await http.post("/oauth2/token", content=body, headers=FORM)
    assert response.status_code == 200, response.text
    assert response.json()["scope"] == "system/Patient.rs system/Observation.rs"


@pytest.mark.parametrize("path", ["/oauth2/token", "/v2/auth/token"])
async def test_get_on_token_endpoint_is_405(http: httpx.AsyncClient, path: str) -> None:
    response = await http.get(path)
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert response.json()["error"] == "invalid_request"


async def test_rejection_reason_is_logged_but_not_sent(
    http: httpx.AsyncClient, make_client: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    client = await make_client()
    form = client.form(aud="https://wrong.example/token")
    with caplog.at_level(logging.INFO, logger="fhirgate.token"):
        response = await http.post("/v2/auth/token", data=form)
    assert response.json()["error_description"] == ""
    record = next(r for r in caplog.records if r.getMessage() == "token request rejected")
    assert record.check == "aud_mismatch"  # type: ignore[attr-defined]
    assert "wrong.example" in record.detail  # type: ignore[attr-defined]
    assert form["client_assertion"] not in caplog.text


async def test_database_unreachable_is_503_never_a_token(
    running: Running, http: httpx.AsyncClient, make_client: MakeClient
) -> None:
    """Storage answers nothing (connection refused): 503, not invalid_client, not a token."""
    from fhirgate.storage.db import create_engine

    client = await make_client()
    running.services.directory.forget(client.client_id)
    refused = create_engine("postgresql+asyncpg://nobody@127.0.0.1:1/none")
    running.services.clients._engine = refused  # the fault: the database goes away
    try:
        response = await http.post("/oauth2/token", data=client.form())
    finally:
        await refused.dispose()
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"]
    body = response.json()
    assert body["error"] == "server_error"
    assert "access_token" not in body


async def test_redis_unreachable_is_503_never_a_token(sqlite_settings: Settings) -> None:
    """Redis configured but down (nothing listens on the port): the jti cannot be recorded."""
    settings = sqlite_settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})
    other, stack = await start(settings)
    try:
        client = await register_client(other.services)
        response = await other.http.post("/oauth2/token", data=client.form())
        assert response.status_code == 503, response.text
        assert "access_token" not in response.json()
    finally:
        await stack.aclose()


# JSON that Python's parser refuses in its own ways ---------------------------------------------

HUGE_INT = "1" * 5000  # beyond Python's 4,300-digit int-string limit: a ValueError in json
HOSTILE_JSON = {
    "huge-int": '{"alg":"RS384","kid":"k","n":' + HUGE_INT + "}",
    "deep": "[" * 10_000 + "]" * 10_000,
    "nan": '{"alg":"RS384","kid":"k","exp":NaN}',
    "infinity": '{"alg":"RS384","kid":"k","exp":-Infinity}',
    "overflowing-float": '{"alg":"RS384","kid":"k","exp":1e999}',
}
VALID = b64('{"alg":"RS384","kid":"k"}')
HOSTILE_JWS = {
    f"{where}-{name}": f"{text}.{VALID}.AA" if where == "header" else f"{VALID}.{text}.AA"
    for name, json_text in HOSTILE_JSON.items()
    for where, text in (("header", b64(json_text)), ("payload", b64(json_text)))
}


@pytest.mark.parametrize("jws", HOSTILE_JWS.values(), ids=HOSTILE_JWS.keys())
async def test_an_assertion_with_json_python_refuses_is_invalid_client(
    http: httpx.AsyncClient, jws: str
) -> None:
    for path in ("/oauth2/token", "/v2/auth/token"):
        response = await http.post(path, data=assertion_form(jws))
        assert response.status_code == 401, response.text
        assert response.json()["error"] in {"invalid_client", "invalid_request"}  # Redox's


@pytest.mark.parametrize("jws", HOSTILE_JWS.values(), ids=HOSTILE_JWS.keys())
async def test_a_bearer_token_with_json_python_refuses_is_invalid_token(
    http: httpx.AsyncClient, jws: str
) -> None:
    headers = {"Authorization": f"Bearer {jws}"}
    whoami = await http.get("/whoami", headers=headers)
    assert whoami.status_code == 401, whoami.text
    assert whoami.json()["error"] == "invalid_token"
    assert 'error="invalid_token"' in whoami.headers["www-authenticate"]
    fhir = await http.get("/fhir/R4/Patient", headers=headers)
    assert fhir.status_code == 401, fhir.text
    assert fhir.json()["resourceType"] == "OperationOutcome"
    assert 'error="invalid_token"' in fhir.headers["www-authenticate"]


@pytest.mark.parametrize("jws", HOSTILE_JWS.values(), ids=HOSTILE_JWS.keys())
async def test_introspecting_or_revoking_a_token_with_json_python_refuses_is_inactive(
    running: Running, jws: str
) -> None:
    client_id, secret = await register_secret_client(running.services)
    introspected = await running.http.post(
        "/oauth2/introspect", data={"token": jws}, auth=(client_id, secret)
    )
    assert introspected.status_code == 200, introspected.text
    assert introspected.json() == {"active": False}
    revoked = await running.http.post(
        "/oauth2/revoke", data={"token": jws}, auth=(client_id, secret)
    )
    assert revoked.status_code == 200, revoked.text


def signed_with_raw_claims(client: SigningClient, claims_json: str) -> str:
    """An assertion signed by ``client`` over claims given as JSON text (numbers a JSON
    encoder would never write)."""
    assert isinstance(client.key, rsa.RSAPrivateKey) and client.alg == "RS384"
    header = b64(json.dumps({"alg": client.alg, "kid": client.kid, "typ": "JWT"}))
    signing_input = f"{header}.{b64(claims_json)}"
    signature = client.key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA384())
    return f"{signing_input}.{b64url_encode(signature)}"


@pytest.mark.parametrize(
    "exp",
    ["1e999", "-1e999", "NaN", "Infinity", HUGE_INT],
    ids=["1e999", "-1e999", "NaN", "Infinity", "huge-int"],
)
async def test_a_signed_assertion_with_an_unrepresentable_exp_is_invalid_client(
    http: httpx.AsyncClient, make_client: MakeClient, exp: str
) -> None:
    client = await make_client()
    claims = (
        f'{{"iss":"{client.client_id}","sub":"{client.client_id}","aud":"{client.token_url}",'
        f'"jti":"{secrets.token_urlsafe(8)}","iat":{int(time.time())},"exp":{exp}}}'
    )
    response = await http.post(
        "/oauth2/token", data=assertion_form(signed_with_raw_claims(client, claims))
    )
    assert response.status_code == 401, response.text
    assert response.json()["error"] == "invalid_client"
