"""The ``fhirgate`` command: output, exit codes (0 ok, 1 error, 2 usage), and its effects."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from fhirgate.cli.main import cli
from fhirgate.oauth.keyset import validate_jwks


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {
        "FHIRGATE_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/cli.db",
        "FHIRGATE_VAR_DIR": str(tmp_path / "var"),
    }


def invoke(env: dict[str, str], *args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), env=env, input=input, catch_exceptions=False)


def generate(env: dict[str, str], tmp_path: Path, alg: str = "RS384") -> tuple[Path, Path]:
    key, jwks = tmp_path / f"{alg}.pem", tmp_path / f"{alg}.json"
    result = invoke(
        env,
        "keys",
        "generate",
        "--alg",
        alg,
        "--kid",
        "k1",
        "--private-key-out",
        str(key),
        "--jwks-out",
        str(jwks),
    )
    assert result.exit_code == 0, result.output
    return key, jwks


def test_help_lists_the_commands(env: dict[str, str]) -> None:
    result = invoke(env, "--help")
    assert result.exit_code == 0
    for command in ("serve", "db", "orgs", "clients", "keys", "token"):
        assert command in result.output


@pytest.mark.parametrize("alg", ["RS384", "ES384"])
def test_keys_generate_writes_a_private_key_and_a_public_jwks(
    env: dict[str, str], tmp_path: Path, alg: str
) -> None:
    key, jwks = generate(env, tmp_path, alg)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert key.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    document = json.loads(jwks.read_text())
    assert [k.kid for k in validate_jwks(document)] == ["k1"]
    assert "d" not in document["keys"][0]
    assert document["keys"][0]["alg"] == alg


def test_keys_generate_refuses_to_overwrite(env: dict[str, str], tmp_path: Path) -> None:
    generate(env, tmp_path)
    again = invoke(
        env,
        "keys",
        "generate",
        "--private-key-out",
        str(tmp_path / "RS384.pem"),
        "--jwks-out",
        str(tmp_path / "other.json"),
    )
    assert again.exit_code == 1
    assert "refusing to overwrite" in again.output


def test_clients_create_json_prints_the_client_id(env: dict[str, str], tmp_path: Path) -> None:
    _, jwks = generate(env, tmp_path)
    result = invoke(
        env,
        "clients",
        "create",
        "--auth",
        "private_key_jwt",
        "--name",
        "Lab",
        "--jwks-file",
        str(jwks),
        "--scope",
        "system/Patient.rs system/Observation.rs",
        "--json",
    )
    assert result.exit_code == 0, result.output
    created = json.loads(result.output)
    assert len(created["client_id"]) >= 22
    assert created["scope"] == "system/Patient.rs system/Observation.rs"
    assert (created["organization"], created["environment"]) == ("default", "development")
    assert created["kids"] == ["k1"]
    shown = json.loads(invoke(env, "clients", "show", created["client_id"], "--json").output)
    assert shown["client_id"] == created["client_id"]
    listed = json.loads(invoke(env, "clients", "list", "--json").output)
    assert [c["client_id"] for c in listed] == [created["client_id"]]


def test_clients_create_from_a_pem_public_key(env: dict[str, str], tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    key, _ = generate(env, tmp_path, "ES384")
    private = serialization.load_pem_private_key(key.read_bytes(), None)
    pem = tmp_path / "pub.pem"
    pem.write_bytes(
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    result = invoke(
        env, "clients", "create", "--name", "p", "--public-key-file", str(pem), "--json"
    )
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.output)["kids"][0]) == 43  # RFC 7638 thumbprint


def test_clients_create_with_a_jwks_url(env: dict[str, str]) -> None:
    result = invoke(
        env,
        "clients",
        "create",
        "--name",
        "u",
        "--jwks-url",
        "https://keys.example.com/jwks.json",
        "--json",
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["jwks_url"] == "https://keys.example.com/jwks.json"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--jwks-url", "http://keys.example.com/jwks.json"], "https"),
        (["--jwks-url", "https://user:pw@keys.example.com/jwks.json"], "credentials"),
        (["--jwks-url", "https://keys.example.com/j", "--scope", "system/Nope.read"], "scope"),
        (["--jwks-url", "https://keys.example.com/j", "--org", "nobody"], "nobody"),
    ],
)
def test_clients_create_errors_exit_1(env: dict[str, str], args: list[str], message: str) -> None:
    result = invoke(env, "clients", "create", "--name", "x", *args)
    assert result.exit_code == 1
    assert message in result.output


def test_clients_create_with_private_jwk_is_refused(env: dict[str, str], tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    from fhirgate.oauth.jose import b64url_encode, jwk_from_public_key

    private = ec.generate_private_key(ec.SECP384R1())
    jwk = jwk_from_public_key(private.public_key(), "k", "ES384")
    jwk["d"] = b64url_encode(private.private_numbers().private_value.to_bytes(48, "big"))
    leaked = tmp_path / "leaked.json"
    leaked.write_text(json.dumps({"keys": [jwk]}))
    result = invoke(env, "clients", "create", "--name", "x", "--jwks-file", str(leaked))
    assert result.exit_code == 1
    assert "private" in result.output


def test_usage_errors_exit_2(env: dict[str, str], tmp_path: Path) -> None:
    _, jwks = generate(env, tmp_path)
    both = invoke(
        env,
        "clients",
        "create",
        "--name",
        "x",
        "--jwks-file",
        str(jwks),
        "--jwks-url",
        "https://k.example/j",
    )
    assert both.exit_code == 2
    assert invoke(env, "clients", "create").exit_code == 2  # --name missing
    assert invoke(env, "clients", "frobnicate").exit_code == 2


def test_rename_revoke_delete(env: dict[str, str]) -> None:
    created = json.loads(
        invoke(
            env, "clients", "create", "--name", "a", "--jwks-url", "https://k.example/j", "--json"
        ).output
    )
    client_id = created["client_id"]
    assert invoke(env, "clients", "rename", client_id, "b").exit_code == 0
    assert invoke(env, "clients", "revoke", client_id).exit_code == 0
    shown = json.loads(invoke(env, "clients", "show", client_id, "--json").output)
    assert (shown["name"], shown["status"]) == ("b", "revoked")
    assert invoke(env, "clients", "delete", client_id, input="n\n").exit_code == 1  # aborted
    assert invoke(env, "clients", "delete", client_id, "--yes").exit_code == 0
    missing = invoke(env, "clients", "show", client_id)
    assert missing.exit_code == 1
    assert "no client" in missing.output


def test_orgs_create_and_clients_in_its_environment(env: dict[str, str]) -> None:
    assert invoke(env, "orgs", "create", "--slug", "acme", "--name", "Acme").exit_code == 0
    duplicate = invoke(env, "orgs", "create", "--slug", "acme", "--name", "Acme")
    assert duplicate.exit_code == 1
    result = invoke(
        env,
        "clients",
        "create",
        "--name",
        "p",
        "--org",
        "acme",
        "--env",
        "production",
        "--jwks-url",
        "https://k.example/j",
        "--json",
    )
    assert json.loads(result.output)["environment"] == "production"
    listed = json.loads(invoke(env, "clients", "list", "--org", "acme", "--json").output)
    assert len(listed) == 1


def test_keys_rotate_adds_a_signing_key(env: dict[str, str]) -> None:
    first = json.loads(invoke(env, "keys", "rotate", "--json").output)["kid"]
    second = json.loads(invoke(env, "keys", "rotate", "--json").output)["kid"]
    assert first != second


def test_db_upgrade(env: dict[str, str]) -> None:
    result = invoke(env, "db", "upgrade")
    assert result.exit_code == 0
    assert "up to date" in result.output


def test_unreachable_database_is_a_clear_error(tmp_path: Path) -> None:
    env = {
        "FHIRGATE_DATABASE_URL": "postgresql+asyncpg://nobody@127.0.0.1:1/none",
        "FHIRGATE_SECRET_KEY": "x",
    }
    result = CliRunner().invoke(cli, ["clients", "list"], env=env)
    assert result.exit_code == 1
    assert "unreachable" in result.output
