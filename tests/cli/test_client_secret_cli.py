"""``fhirgate clients`` for secret clients: ``create --auth client_secret_basic|
client_secret_post|legacy_api_key`` (the secret printed once), token lifetimes, and
``rotate-secret``. Every secret the CLI prints is tried with a real token request through the
app, on the database the CLI wrote."""

from __future__ import annotations

import asyncio
import base64
import json
import re
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner, Result
from tests.support import BASE, start

from fhirgate.cli.main import cli
from fhirgate.config import Settings
from fhirgate.oauth.client_auth import SecretHasher
from fhirgate.server_secret import server_secret
from fhirgate.storage.audit import AuditEvent, AuditLog
from fhirgate.storage.db import create_engine

BASIC, POST = "client_secret_basic", "client_secret_post"
JWKS_URL = "https://keys.example.com/jwks.json"
SECRET = re.compile(r"[A-Za-z0-9_-]{43}")  # base64url, no padding: 256 bits


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {
        "FHIRGATE_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/cli.db",
        "FHIRGATE_VAR_DIR": str(tmp_path / "var"),
        "FHIRGATE_PUBLIC_URL": BASE,
    }


def invoke(env: dict[str, str], *args: str) -> Result:
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def create(env: dict[str, str], *args: str) -> dict[str, object]:
    result = invoke(env, "clients", "create", "--name", "lab", "--json", *args)
    assert result.exit_code == 0, result.output
    created: dict[str, object] = json.loads(result.stdout)
    return created


def secret_client(env: dict[str, str], method: str = BASIC, *args: str) -> tuple[str, str]:
    created = create(env, "--auth", method, *args)
    return str(created["client_id"]), str(created["client_secret"])


def rotate(env: dict[str, str], client_id: str, *args: str) -> dict[str, object]:
    result = invoke(env, "clients", "rotate-secret", client_id, "--json", *args)
    assert result.exit_code == 0, result.output
    rotated: dict[str, object] = json.loads(result.stdout)
    return rotated


def settings_of(env: dict[str, str]) -> Settings:
    return Settings(
        database_url=env["FHIRGATE_DATABASE_URL"],
        var_dir=Path(env["FHIRGATE_VAR_DIR"]),
        public_url=BASE,
    )


def token_response(
    env: dict[str, str], client_id: str, secret: str, method: str = BASIC
) -> httpx.Response:
    """A client_credentials grant at ``/oauth2/token`` of a freshly started app (no cache
    carried over) on the CLI's database and server key."""

    async def run() -> httpx.Response:
        server, stack = await start(settings_of(env))
        try:
            form = {"grant_type": "client_credentials", "scope": "system/*.rs"}
            if method == POST:
                form.update(client_id=client_id, client_secret=secret)
                return await server.http.post("/oauth2/token", data=form)
            basic = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
            headers = {"Authorization": f"Basic {basic}"}
            return await server.http.post("/oauth2/token", data=form, headers=headers)
        finally:
            await stack.aclose()

    return asyncio.run(run())


def audit_events(env: dict[str, str], client_id: str) -> list[AuditEvent]:
    async def run() -> list[AuditEvent]:
        engine = create_engine(env["FHIRGATE_DATABASE_URL"])
        try:
            return list(await AuditLog(engine).recent(client_id))
        finally:
            await engine.dispose()

    return asyncio.run(run())


# --- create -----------------------------------------------------------------------------------


@pytest.mark.parametrize("method", [BASIC, POST])
def test_create_prints_the_client_id_and_a_256_bit_secret_that_works(
    env: dict[str, str], method: str
) -> None:
    created = create(env, "--auth", method)
    secret = str(created["client_secret"])
    assert SECRET.fullmatch(secret), secret
    assert len(base64.urlsafe_b64decode(secret + "=")) == 32
    assert created["auth_method"] == method
    assert created["token_lifetime"] is None
    assert "secret_hash" not in created
    response = token_response(env, str(created["client_id"]), secret, method)
    assert response.status_code == 200, response.text
    assert response.json()["expires_in"] == 3600


def test_every_created_client_gets_its_own_secret(env: dict[str, str]) -> None:
    secrets = {secret_client(env)[1] for _ in range(3)}
    assert len(secrets) == 3


def test_the_secret_is_shown_once_only(env: dict[str, str]) -> None:
    client_id, secret = secret_client(env)
    stored_hash = SecretHasher(server_secret(settings_of(env))).hash(secret)
    for args in (["show", client_id], ["show", client_id, "--json"], ["list"], ["list", "--json"]):
        result = invoke(env, "clients", *args)
        assert result.exit_code == 0, result.output
        assert client_id in result.output
        assert secret not in result.output
        assert stored_hash not in result.output
        assert "secret_hash" not in result.output
        assert "client_secret:" not in result.output and '"client_secret"' not in result.output


def test_create_without_json_prints_the_secret_with_a_warning(env: dict[str, str]) -> None:
    result = invoke(env, "clients", "create", "--auth", POST, "--name", "lab")
    assert result.exit_code == 0, result.output
    match = re.search(r"^client_secret: (\S+)$", result.output, re.MULTILINE)
    assert match is not None, result.output
    assert SECRET.fullmatch(match.group(1))
    assert "cannot be shown again" in result.output


def test_create_legacy_api_key_prints_its_secret(env: dict[str, str]) -> None:
    created = create(env, "--auth", "legacy_api_key")
    assert created["auth_method"] == "legacy_api_key"
    assert SECRET.fullmatch(str(created["client_secret"]))
    text = invoke(env, "clients", "create", "--auth", "legacy_api_key", "--name", "redox")
    assert text.exit_code == 0, text.output
    assert re.search(r"^secret \(the apiKey is the client id\): \S{43}$", text.output, re.M)
    # a legacy key is no client_secret_basic client
    client_id, secret = str(created["client_id"]), str(created["client_secret"])
    assert token_response(env, client_id, secret).status_code == 401


@pytest.mark.parametrize("option", ["--jwks-url", "--jwks-file", "--public-key-file"])
@pytest.mark.parametrize("method", [BASIC, POST, "legacy_api_key"])
def test_key_options_with_a_secret_method_are_a_usage_error(
    env: dict[str, str], tmp_path: Path, option: str, method: str
) -> None:
    value = JWKS_URL
    if option != "--jwks-url":
        value = str(tmp_path / "keys")
        Path(value).write_text("{}")
    result = invoke(env, "clients", "create", "--auth", method, "--name", "x", option, value)
    assert result.exit_code == 2, result.output
    assert f"a {method} client has a secret, not keys" in result.output
    assert json.loads(invoke(env, "clients", "list", "--json").stdout) == []


# --- token lifetimes --------------------------------------------------------------------------


def test_token_lifetime_is_stored_and_used(env: dict[str, str]) -> None:
    created = create(env, "--auth", BASIC, "--token-lifetime", "120")
    assert created["token_lifetime"] == 120
    client_id, secret = str(created["client_id"]), str(created["client_secret"])
    result = invoke(env, "clients", "show", client_id, "--json")
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert shown["token_lifetime"] == 120
    response = token_response(env, client_id, secret)
    assert response.status_code == 200, response.text
    assert response.json()["expires_in"] == 120


@pytest.mark.parametrize("lifetime", ["400", "86400"])
def test_a_secret_client_may_have_tokens_longer_than_five_minutes(
    env: dict[str, str], lifetime: str
) -> None:
    assert create(env, "--auth", BASIC, "--token-lifetime", lifetime)["token_lifetime"] == int(
        lifetime
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--jwks-url", JWKS_URL, "--token-lifetime", "400"], "private_key_jwt client is 1-300 s"),
        (["--jwks-url", JWKS_URL, "--token-lifetime", "0"], "private_key_jwt client is 1-300 s"),
        (["--auth", BASIC, "--token-lifetime", "0"], "client_secret_basic client is 1-86400 s"),
        (["--auth", POST, "--token-lifetime", "-5"], "client_secret_post client is 1-86400 s"),
        (["--auth", BASIC, "--token-lifetime", "86401"], "client_secret_basic client is 1-86400"),
    ],
    ids=["jwt-400", "jwt-0", "secret-0", "secret-negative", "secret-over-a-day"],
)
def test_a_token_lifetime_out_of_range_is_refused(
    env: dict[str, str], args: list[str], message: str
) -> None:
    result = invoke(env, "clients", "create", "--name", "x", *args)
    assert result.exit_code == 1, result.output
    assert message in result.output
    assert json.loads(invoke(env, "clients", "list", "--json").stdout) == []


def test_a_private_key_jwt_client_may_have_up_to_five_minutes(env: dict[str, str]) -> None:
    created = create(env, "--jwks-url", JWKS_URL, "--token-lifetime", "300")
    assert created["token_lifetime"] == 300
    assert "client_secret" not in created


# --- rotate-secret ----------------------------------------------------------------------------


def test_rotate_secret_prints_a_new_secret_and_retires_the_old_one(env: dict[str, str]) -> None:
    client_id, old = secret_client(env)
    rotated = rotate(env, client_id)
    new = str(rotated["client_secret"])
    assert rotated["client_id"] == client_id
    assert rotated["grace"] == 0
    assert SECRET.fullmatch(new) and new != old
    assert token_response(env, client_id, old).status_code == 401
    assert token_response(env, client_id, new).status_code == 200


def test_rotate_secret_with_grace_keeps_both_working(env: dict[str, str]) -> None:
    client_id, old = secret_client(env, POST)
    rotated = rotate(env, client_id, "--grace", "30")
    new = str(rotated["client_secret"])
    assert rotated["grace"] == 30
    assert token_response(env, client_id, old, POST).status_code == 200
    assert token_response(env, client_id, new, POST).status_code == 200


def test_rotations_are_audited_without_the_secret(env: dict[str, str]) -> None:
    client_id, old = secret_client(env)
    new = str(rotate(env, client_id, "--grace", "30")["client_secret"])
    events = audit_events(env, client_id)
    assert [(e.event, e.actor, e.detail) for e in events] == [
        ("client.secret_rotated", "cli", "grace=30"),
        ("client.created", "cli", ""),
    ]
    assert all(s not in repr(e) for e in events for s in (old, new))


def test_rotate_secret_text_output_says_what_became_of_the_old_one(env: dict[str, str]) -> None:
    client_id, _ = secret_client(env)
    now = invoke(env, "clients", "rotate-secret", client_id)
    assert now.exit_code == 0, now.output
    assert "the old one no longer works" in now.output
    later = invoke(env, "clients", "rotate-secret", client_id, "--grace", "30")
    assert "the old one works for 30 more seconds" in later.output


def test_rotate_secret_of_a_private_key_jwt_client_is_refused(env: dict[str, str]) -> None:
    client_id = str(create(env, "--jwks-url", JWKS_URL)["client_id"])
    result = invoke(env, "clients", "rotate-secret", client_id)
    assert result.exit_code == 1, result.output
    assert client_id in result.output
    assert "secret" in result.output
    assert "client_secret" not in result.output  # no secret was issued


def test_rotate_secret_of_an_unknown_client_is_refused(env: dict[str, str]) -> None:
    result = invoke(env, "clients", "rotate-secret", "no-such-client")
    assert result.exit_code == 1, result.output
    assert "no-such-client" in result.output


@pytest.mark.parametrize("grace", ["-1", "2592001", "soon"])
def test_rotate_secret_grace_out_of_range_is_a_usage_error(env: dict[str, str], grace: str) -> None:
    client_id, secret = secret_client(env)
    result = invoke(env, "clients", "rotate-secret", client_id, "--grace", grace)
    assert result.exit_code == 2, result.output
    assert token_response(env, client_id, secret).status_code == 200  # nothing rotated
