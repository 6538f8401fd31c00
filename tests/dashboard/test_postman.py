"""The Postman export of an API key (collection v2.1.0 + environment), run by newman against a
started ``fhirgate serve``: the pre-request script signs RS384 and ES384 assertions in Postman's
sandbox, a wrong key gets 401, a missing key stops with a clear message."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from fhirgate.dashboard import postman
from fhirgate.oauth.jose import b64url_decode, b64url_encode, jwk_from_public_key
from tests.test_quickstart import Served, run, start_served_with_log

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_NEWMAN = ROOT / "tools" / "node_modules" / ".bin" / "newman"
KID = "pm-key"
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def newman() -> str:
    """``FHIRGATE_NEWMAN`` (set by ``make test``), else tools/node_modules/.bin/newman."""
    for candidate in (os.environ.get("FHIRGATE_NEWMAN"), str(DEFAULT_NEWMAN)):
        if candidate and Path(candidate).is_file():
            return candidate
    pytest.fail(
        "newman is not installed: run `make tools` (npm ci in tools/) or set FHIRGATE_NEWMAN "
        f"to its path (looked at $FHIRGATE_NEWMAN and {DEFAULT_NEWMAN})"
    )


# --- keys -------------------------------------------------------------------------------------


def _b64(value: int, size: int | None = None) -> str:
    return b64url_encode(value.to_bytes(size or (value.bit_length() + 7) // 8, "big"))


def new_key(alg: str) -> PrivateKey:
    if alg == "RS384":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP384R1())


def private_jwk(key: PrivateKey, alg: str, *, crt: bool = True) -> dict[str, Any]:
    """The private JWK (RFC 7518 §6.3.2 / §6.2.2) the browser would put in the environment."""
    jwk: dict[str, Any] = jwk_from_public_key(key.public_key(), KID, alg)
    if isinstance(key, rsa.RSAPrivateKey):
        nums = key.private_numbers()
        jwk["d"] = _b64(nums.d)
        if crt:
            jwk |= {
                "p": _b64(nums.p),
                "q": _b64(nums.q),
                "dp": _b64(nums.dmp1),
                "dq": _b64(nums.dmq1),
                "qi": _b64(nums.iqmp),
            }
    else:
        jwk["d"] = _b64(key.private_numbers().private_value, 48)
    return jwk


# --- the served fhirgate, its log, newman -----------------------------------------------------


@dataclass
class Live:
    served: Served
    tmp: Path
    log: list[str]

    @property
    def token_url(self) -> str:
        return f"{self.served.base}/oauth2/token"

    def register(self, key: PrivateKey, name: str) -> str:
        pem = self.tmp / f"{name}.pem"
        pem.write_bytes(
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        created = run(
            self.served.env,
            "clients",
            "create",
            "--auth",
            "private_key_jwt",
            "--name",
            name,
            "--public-key-file",
            str(pem),
            "--kid",
            KID,
            "--json",
        )
        return str(json.loads(created)["client_id"])

    def export(
        self, client_id: str, alg: str, jwk: dict[str, Any] | None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        coll = postman.collection(name="fhirgate test key", client_id=client_id, alg=alg)
        env = postman.environment(
            name="fhirgate test key",
            base_url=self.served.base,
            token_url=self.token_url,
            client_id=client_id,
            kid=KID,
            alg=alg,
            private_jwk=jwk,
        )
        return coll, env


@dataclass
class NewmanRun:
    returncode: int
    output: str
    report: dict[str, Any]

    @property
    def executions(self) -> list[dict[str, Any]]:
        return list(self.report["run"]["executions"])

    def execution(self, name: str) -> dict[str, Any]:
        return next(e for e in self.executions if e["item"]["name"] == name)

    def body(self, name: str) -> Any:
        return json.loads(bytes(self.execution(name)["response"]["stream"]["data"]))

    def assertion(self) -> str:
        form = self.execution("Get access token")["request"]["body"]["urlencoded"]
        return str(next(p["value"] for p in form if p["key"] == "client_assertion"))


def run_newman(tmp: Path, coll: dict[str, Any], env: dict[str, Any], tag: str) -> NewmanRun:
    paths = {part: tmp / f"{tag}.{part}.json" for part in ("collection", "environment", "out")}
    paths["collection"].write_text(json.dumps(coll))
    paths["environment"].write_text(json.dumps(env))
    done = subprocess.run(
        [
            newman(),
            "run",
            str(paths["collection"]),
            "-e",
            str(paths["environment"]),
            "--reporters",
            "cli,json",
            "--reporter-json-export",
            str(paths["out"]),
            "--color",
            "off",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = done.stdout + done.stderr
    assert paths["out"].is_file(), f"newman wrote no report:\n{output}"
    return NewmanRun(done.returncode, output, json.loads(paths["out"].read_text()))


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """One server for the module (with sample patients), its log collected as it is written."""
    tmp = tmp_path_factory.mktemp("postman")
    with start_served_with_log(tmp) as (served, log):
        run(served.env, "fhir", "load-sample", "--patients", "1", "--json")
        yield Live(served, tmp, log)


def wait_for_log(live: Live, *fragments: str) -> str:
    """The first server log line holding every fragment (the server logs as it answers)."""
    for _ in range(50):
        for line in list(live.log):
            if all(fragment in line for fragment in fragments):
                return line
        threading.Event().wait(0.1)
    pytest.fail(f"no server log line with {fragments}:\n{''.join(live.log)[-3000:]}")


# --- checks on what newman did ----------------------------------------------------------------


def assert_green(result: NewmanRun) -> None:
    assert result.returncode == 0, result.output
    assert [e["item"]["name"] for e in result.executions] == list(postman.REQUEST_NAMES)
    stats = result.report["run"]["stats"]
    assert stats["requests"] == {"total": 3, "pending": 0, "failed": 0}
    assert stats["assertions"] == {"total": 6, "pending": 0, "failed": 0}, result.output
    assert result.report["run"]["failures"] == []
    for execution in result.executions:
        assert execution["response"]["code"] == 200, execution["item"]["name"]
        assertions = execution.get("assertions", [])
        assert len(assertions) == 2, execution["item"]["name"]
        assert all("error" not in a for a in assertions), assertions


def check_assertion(
    assertion: str, key: PrivateKey, alg: str, client_id: str, token_url: str
) -> None:
    """The JWT the sandbox signed: header, claims (RFC 7523 §3) and a valid signature; the
    signature equals the one a reference implementation makes (both schemes are
    deterministic here: PKCS #1 v1.5, and ECDSA with RFC 6979 nonces)."""
    header_b64, claims_b64, signature_b64 = assertion.split(".")
    header = json.loads(b64url_decode(header_b64))
    claims = json.loads(b64url_decode(claims_b64))
    assert header == {"alg": alg, "typ": "JWT", "kid": KID}
    assert claims["iss"] == claims["sub"] == client_id
    assert claims["aud"] == token_url
    assert claims["exp"] - claims["iat"] == 300
    assert uuid.UUID(claims["jti"]).version == 4
    signing_input = f"{header_b64}.{claims_b64}".encode()
    signature = b64url_decode(signature_b64)
    if isinstance(key, rsa.RSAPrivateKey):
        key.public_key().verify(signature, signing_input, padding.PKCS1v15(), hashes.SHA384())
        assert signature == key.sign(signing_input, padding.PKCS1v15(), hashes.SHA384())
        return
    assert len(signature) == 96
    r, s = int.from_bytes(signature[:48], "big"), int.from_bytes(signature[48:], "big")
    der = utils.encode_dss_signature(r, s)
    key.public_key().verify(der, signing_input, ec.ECDSA(hashes.SHA384()))
    reference = key.sign(signing_input, ec.ECDSA(hashes.SHA384(), deterministic_signing=True))
    assert utils.decode_dss_signature(reference) == (r, s), "k is not RFC 6979's"


def check_server_issued(live: Live, result: NewmanRun, client_id: str) -> None:
    token = result.body("Get access token")["access_token"]
    claims = json.loads(b64url_decode(token.split(".")[1]))
    wait_for_log(live, "token issued", f"client_id={client_id}", f"jti={claims['jti']}")
    assert result.body("Who am I")["client_id"] == client_id
    bundle = result.body("Search patients")
    assert bundle["total"] >= 1
    assert {e["resource"]["resourceType"] for e in bundle["entry"]} == {"Patient"}


# --- newman against the server ----------------------------------------------------------------


def test_rs384_key_runs_green(live: Live) -> None:
    key = new_key("RS384")
    client_id = live.register(key, "postman-rs384")
    for crt in (True, False):  # with p, q, dp, dq, qi (CRT), and with d alone
        coll, env = live.export(client_id, "RS384", private_jwk(key, "RS384", crt=crt))
        result = run_newman(live.tmp, coll, env, f"rs384-{crt}")
        assert_green(result)
        check_assertion(result.assertion(), key, "RS384", client_id, live.token_url)
        check_server_issued(live, result, client_id)


def test_es384_key_runs_green(live: Live) -> None:
    key = new_key("ES384")
    client_id = live.register(key, "postman-es384")
    coll, env = live.export(client_id, "ES384", private_jwk(key, "ES384"))
    result = run_newman(live.tmp, coll, env, "es384")
    assert_green(result)
    check_assertion(result.assertion(), key, "ES384", client_id, live.token_url)
    check_server_issued(live, result, client_id)


@pytest.mark.parametrize("alg", ["RS384", "ES384"])
def test_a_different_private_key_gets_401(live: Live, alg: str) -> None:
    registered, other = new_key(alg), new_key(alg)
    client_id = live.register(registered, f"postman-wrong-{alg}")
    coll, env = live.export(client_id, alg, private_jwk(other, alg))
    result = run_newman(live.tmp, coll, env, f"wrong-{alg}")
    assert result.returncode != 0, result.output
    token = result.execution("Get access token")
    assert token["response"]["code"] == 401
    assert result.body("Get access token")["error"] == "invalid_client"
    # The assertion itself was well formed and signed, only by the wrong key.
    with pytest.raises(InvalidSignature):
        check_assertion(result.assertion(), registered, alg, client_id, live.token_url)
    check_assertion(result.assertion(), other, alg, client_id, live.token_url)
    failed = [a["assertion"] for a in token["assertions"] if "error" in a]
    assert "token request succeeded (200)" in failed
    assert result.report["run"]["stats"]["assertions"]["failed"] >= 2
    assert wait_for_log(live, "token request rejected")
    assert not any(f"client_id={client_id}" in line for line in live.log)


def test_an_environment_without_the_private_key_stops_with_a_clear_message(
    live: Live,
) -> None:
    key = new_key("ES384")
    client_id = live.register(key, "postman-nokey")
    coll, env = live.export(client_id, "ES384", None)
    values = {v["key"]: v for v in env["values"]}
    assert values["privateKey"]["value"] == ""
    assert values["privateKey"]["type"] == "secret"
    assert "paste" in values["note"]["value"] and "browser" in values["note"]["value"]
    result = run_newman(live.tmp, coll, env, "nokey")
    assert result.returncode != 0
    errors = [
        f["error"]["message"]
        for f in result.report["run"]["failures"]
        if f["at"] == "prerequest-script"
    ]
    assert len(errors) == 1, result.report["run"]["failures"]
    assert errors[0].startswith("The private key is not in the environment")
    assert "Paste your private JWK" in errors[0] and "browser" in errors[0]
    assert "The private key is not in the environment" in result.output
    assert result.execution("Get access token")["response"]["code"] != 200


# --- the files themselves ---------------------------------------------------------------------


def test_collection_structure_and_no_secret() -> None:
    key = new_key("RS384")
    jwk = private_jwk(key, "RS384")
    coll = postman.collection(name="My key", client_id="client-123", alg="RS384")
    assert coll["info"]["schema"] == postman.COLLECTION_SCHEMA
    assert coll["info"]["schema"].endswith("/collection/v2.1.0/collection.json")
    assert coll["info"]["name"] == "My key"
    assert [item["name"] for item in coll["item"]] == [
        "Get access token",
        "Who am I",
        "Search patients",
    ]
    token, whoami, search = coll["item"]
    assert token["request"]["method"] == "POST"
    assert token["request"]["url"]["raw"] == "{{tokenUrl}}"
    form = {p["key"]: p["value"] for p in token["request"]["body"]["urlencoded"]}
    assert form == {
        "grant_type": "client_credentials",
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": "{{clientAssertion}}",
        "scope": "{{scope}}",
    }
    events = {e["listen"]: e["script"] for e in token["event"]}
    assert events["prerequest"]["type"] == "text/javascript"
    script = "\n".join(events["prerequest"]["exec"])
    assert script == postman.prerequest_script().rstrip("\n")
    assert "require('crypto-js')" in script and "BigInt" in script
    assert "pm.environment.set('accessToken'" in "\n".join(events["test"]["exec"])
    assert whoami["request"]["url"]["raw"] == "{{baseUrl}}/whoami"
    assert search["request"]["url"]["raw"] == "{{baseUrl}}/fhir/R4/Patient?_count=10"
    for item in (whoami, search):
        headers = {h["key"]: h["value"] for h in item["request"]["header"]}
        assert headers["Authorization"] == "Bearer {{accessToken}}"
        assert [e["listen"] for e in item["event"]] == ["test"]
    assert {h["key"]: h["value"] for h in search["request"]["header"]}["Accept"] == (
        "application/fhir+json"
    )
    text = json.dumps(coll)
    for member in ("d", "p", "q", "dp", "dq", "qi"):
        assert jwk[member] not in text
    assert "client-123" not in text and 'privateKey": "{' not in text
    # Stable ids: the same key downloads the same file; another key gets another id.
    assert coll == postman.collection(name="My key", client_id="client-123", alg="RS384")
    other = postman.collection(name="My key", client_id="client-456", alg="RS384")
    assert other["info"]["_postman_id"] != coll["info"]["_postman_id"]
    with pytest.raises(ValueError, match="alg"):
        postman.collection(name="x", client_id="c", alg="HS256")


def test_environment_keys_and_private_key() -> None:
    key = new_key("ES384")
    jwk = private_jwk(key, "ES384")
    kwargs: dict[str, Any] = {
        "name": "My key",
        "base_url": "https://fhir.example.org/",
        "token_url": "https://fhir.example.org/oauth2/token",
        "client_id": "client-123",
        "kid": KID,
        "alg": "ES384",
    }
    with_key = postman.environment(**kwargs, private_jwk=jwk)
    without = postman.environment(**kwargs)
    for env in (with_key, without):
        assert set(env) == {"id", "name", "values", "_postman_variable_scope"}
        assert env["_postman_variable_scope"] == "environment"
        assert [v["key"] for v in env["values"]] == list(postman.ENVIRONMENT_KEYS)
        assert all(set(v) == {"key", "value", "type", "enabled"} for v in env["values"])
        assert all(v["enabled"] is True and isinstance(v["value"], str) for v in env["values"])
    assert with_key["id"] == without["id"] == postman.environment(**kwargs)["id"]
    values = {v["key"]: v for v in with_key["values"]}
    assert values["privateKey"]["type"] == "secret"
    assert json.loads(values["privateKey"]["value"]) == jwk
    assert values["baseUrl"]["value"] == "https://fhir.example.org"
    assert values["clientId"]["value"] == "client-123"
    assert values["accessToken"]["value"] == ""
    assert values["note"]["value"] == postman.PRIVATE_KEY_NOTE
    assert {v["key"]: v["value"] for v in without["values"]}["privateKey"] == ""
    public = {k: v for k, v in jwk.items() if k != "d"}
    with pytest.raises(ValueError, match="private"):
        postman.environment(**kwargs, private_jwk=public)
    with pytest.raises(ValueError, match="ES384"):
        postman.environment(**kwargs, private_jwk=private_jwk(new_key("RS384"), "RS384"))
