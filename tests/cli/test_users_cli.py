"""``fhirgate users``: an application's users (1upHealth per-user delegated access) on the
database, and their effect on an app started on that database: every code the CLI prints is
redeemed at ``/oauth2/token``; deactivation and revocation are checked with real tokens."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from click.testing import CliRunner, Result
from tests.support import BASE, start

from fhirgate.cli.main import cli
from fhirgate.config import Settings
from fhirgate.storage.audit import AuditLog
from fhirgate.storage.db import create_engine

JWKS_URL = "https://keys.example.com/jwks.json"
SUBCOMMANDS = ("create", "list", "update", "auth-code", "deactivate", "activate", "revoke")
_T = TypeVar("_T")


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {
        "FHIRGATE_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/cli.db",
        "FHIRGATE_VAR_DIR": str(tmp_path / "var"),
        "FHIRGATE_PUBLIC_URL": BASE,
    }


@pytest.fixture
def app(env: dict[str, str]) -> tuple[str, str]:
    """An application: a client_secret_post client allowed ``user/*.*``; (id, secret)."""
    created = ok_json(env, "clients", "create", "--name", "app", "--auth", "client_secret_post",
                      "--scope", "user/*.*")  # fmt: skip
    return str(created["client_id"]), str(created["client_secret"])


def invoke(env: dict[str, str], *args: str) -> Result:
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def ok_json(env: dict[str, str], *args: str) -> Any:
    result = invoke(env, *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def users(env: dict[str, str], command: str, client_id: str, *args: str) -> Any:
    """``fhirgate users <command> --client-id <id> <args> --json``: the printed JSON."""
    return ok_json(env, "users", command, "--client-id", client_id, *args)


def fails(env: dict[str, str], *args: str) -> str:
    """Run a command that must fail with exit code 1; its error message."""
    result = invoke(env, *args)
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("Error: "), result.stderr
    return result.stderr


def settings_of(env: dict[str, str]) -> Settings:
    return Settings(
        database_url=env["FHIRGATE_DATABASE_URL"], var_dir=Path(env["FHIRGATE_VAR_DIR"]),
        public_url=BASE,
    )  # fmt: skip


def with_app(env: dict[str, str], use: Callable[[httpx.AsyncClient], Awaitable[_T]]) -> _T:
    """``use`` the HTTP client of an app freshly started on the CLI's database."""

    async def run() -> _T:
        server, stack = await start(settings_of(env))
        try:
            return await use(server.http)
        finally:
            await stack.aclose()

    return asyncio.run(run())


def redeem(env: dict[str, str], app: tuple[str, str], code: str) -> httpx.Response:
    """``grant_type=authorization_code`` at ``/oauth2/token`` (RFC 6749 §4.1.3)."""
    form = {"grant_type": "authorization_code", "code": code, "client_id": app[0],
            "client_secret": app[1]}  # fmt: skip
    return with_app(env, lambda http: http.post("/oauth2/token", data=form))


def refresh(env: dict[str, str], app: tuple[str, str], refresh_token: str) -> httpx.Response:
    form = {"grant_type": "refresh_token", "refresh_token": refresh_token,
            "client_id": app[0], "client_secret": app[1]}  # fmt: skip
    return with_app(env, lambda http: http.post("/oauth2/token", data=form))


def whoami(env: dict[str, str], access_token: str) -> httpx.Response:
    headers = {"Authorization": f"Bearer {access_token}"}
    return with_app(env, lambda http: http.get("/whoami", headers=headers))


def tokens_for(env: dict[str, str], app: tuple[str, str], code: str) -> dict[str, Any]:
    response = redeem(env, app, code)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


# --------------------------------------------------------------------------- help


def test_help_lists_the_users_group_and_every_subcommand(env: dict[str, str]) -> None:
    assert "users" in invoke(env, "--help").output
    result = invoke(env, "users", "--help")
    assert result.exit_code == 0
    for command in SUBCOMMANDS:
        assert command in result.output
    for command in SUBCOMMANDS:
        helped = invoke(env, "users", command, "--help")
        assert helped.exit_code == 0 and "--client-id" in helped.output, command


# --------------------------------------------------------------------------- create


def test_create_prints_the_user_and_a_code_redeemable_at_the_token_endpoint(
    env: dict[str, str], app: tuple[str, str]
) -> None:
    created = users(env, "create", app[0], "--app-user-id", "alice")
    assert created == {"client_id": app[0], "oneup_user_id": created["oneup_user_id"],
                       "app_user_id": "alice", "active": True, "code": created["code"],
                       "scope": "user/*.*", "expires_in": 600}  # fmt: skip
    tokens = tokens_for(env, app, created["code"])
    assert tokens["scope"] == "user/*.*" and tokens["refresh_token"]
    who = whoami(env, tokens["access_token"])
    assert who.status_code == 200, who.text
    assert who.json()["oneup_user_id"] == created["oneup_user_id"]
    again = redeem(env, app, created["code"])  # single use
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"


def test_create_without_json_prints_the_ids_and_the_code(
    env: dict[str, str], app: tuple[str, str]
) -> None:
    result = invoke(env, "users", "create", "--client-id", app[0], "--app-user-id", "alice")
    assert result.exit_code == 0, result.output
    lines = dict(line.split(": ", 1) for line in result.output.splitlines() if ": " in line)
    assert lines["app_user_id"] == "alice" and lines["oneup_user_id"].isdigit()
    assert redeem(env, app, lines["code"]).status_code == 200


def test_create_with_openid_gives_a_code_whose_tokens_carry_an_id_token(
    env: dict[str, str], app: tuple[str, str]
) -> None:
    created = users(env, "create", app[0], "--app-user-id", "alice", "--scope", "user/*.* openid")
    assert created["scope"] == "user/*.* openid"
    assert tokens_for(env, app, created["code"])["id_token"]


def test_create_refuses_an_existing_user(env: dict[str, str], app: tuple[str, str]) -> None:
    users(env, "create", app[0], "--app-user-id", "alice")
    message = fails(env, "users", "create", "--client-id", app[0], "--app-user-id", "alice")
    assert "this user already exists" in message
    assert len(users(env, "list", app[0])) == 1


def test_create_refuses_a_scope_the_application_cannot_grant_and_writes_nothing(
    env: dict[str, str], app: tuple[str, str]
) -> None:
    message = fails(env, "users", "create", "--client-id", app[0], "--app-user-id", "alice",
                    "--scope", "system/*.rs")  # fmt: skip
    assert "system scopes cannot be granted to a user" in message
    assert users(env, "list", app[0]) == []


# --------------------------------------------------------------------------- list, update


def test_list_shows_every_user_of_the_application_and_filters(
    env: dict[str, str], app: tuple[str, str]
) -> None:
    alice = users(env, "create", app[0], "--app-user-id", "alice")["oneup_user_id"]
    bob = users(env, "create", app[0], "--app-user-id", "bob")["oneup_user_id"]
    other = ok_json(env, "clients", "create", "--name", "other", "--auth", "client_secret_basic",
                    "--scope", "user/*.*")  # fmt: skip
    users(env, "create", str(other["client_id"]), "--app-user-id", "carol")
    listed = users(env, "list", app[0])
    assert [(u["oneup_user_id"], u["app_user_id"]) for u in listed] == [(alice, "alice"),
                                                                       (bob, "bob")]  # fmt: skip
    assert all(u["active"] and u["client_id"] == app[0] for u in listed)
    assert [u["app_user_id"] for u in users(env, "list", app[0], "--app-user-id", "bob")] == ["bob"]
    by_number = users(env, "list", app[0], "--oneup-user-id", str(alice))
    assert [u["app_user_id"] for u in by_number] == ["alice"]
    assert users(env, "list", app[0], "--app-user-id", "carol") == []  # another app's user
    text = invoke(env, "users", "list", "--client-id", app[0]).output.splitlines()
    assert text[0].split() == ["oneup_id", "state", "app_user_id"]
    assert text[1].split() == [str(alice), "active", "alice"]


def test_list_of_an_application_without_users_says_so(
    env: dict[str, str], app: tuple[str, str]
) -> None:
    assert invoke(env, "users", "list", "--client-id", app[0]).output == "No users.\n"


def test_update_renames_a_user_and_its_new_name_gets_codes(
    env: dict[str, str], app: tuple[str, str]
) -> None:
    number = str(users(env, "create", app[0], "--app-user-id", "alice")["oneup_user_id"])
    renamed = users(env, "update", app[0], "--oneup-user-id", number, "--app-user-id", "alicia")
    assert renamed == {"client_id": app[0], "oneup_user_id": int(number),
                       "app_user_id": "alicia", "active": True}  # fmt: skip
    code = users(env, "auth-code", app[0], "--app-user-id", "alicia")["code"]
    assert redeem(env, app, code).status_code == 200
    text = invoke(env, "users", "update", "--client-id", app[0], "--oneup-user-id", number,
                  "--app-user-id", "ali")  # fmt: skip
    assert text.exit_code == 0 and text.output == f"User {number} is now 'ali'.\n"


def test_update_refuses_a_taken_name_and_an_unknown_user(
    env: dict[str, str], app: tuple[str, str]
) -> None:
    number = str(users(env, "create", app[0], "--app-user-id", "alice")["oneup_user_id"])
    users(env, "create", app[0], "--app-user-id", "bob")
    taken = fails(env, "users", "update", "--client-id", app[0], "--oneup-user-id", number,
                  "--app-user-id", "bob")  # fmt: skip
    assert "this user already exists: 'bob'" in taken
    unknown = fails(env, "users", "update", "--client-id", app[0], "--oneup-user-id", "999",
                    "--app-user-id", "zed")  # fmt: skip
    assert f"client {app[0]} has no user oneup_user_id 999" in unknown


# --------------------------------------------------------------------------- auth-code


@pytest.mark.parametrize("by", ["--app-user-id", "--oneup-user-id", "both"])
def test_auth_code_by_either_id_is_redeemable(
    env: dict[str, str], app: tuple[str, str], by: str
) -> None:
    created = users(env, "create", app[0], "--app-user-id", "alice")
    number = str(created["oneup_user_id"])
    ids = {"--app-user-id": ["--app-user-id", "alice"], "--oneup-user-id": ["--oneup-user-id",
           number], "both": ["--app-user-id", "alice", "--oneup-user-id", number]}[by]  # fmt: skip
    issued = users(env, "auth-code", app[0], *ids)
    assert issued["oneup_user_id"] == created["oneup_user_id"]
    assert issued["code"] != created["code"] and issued["scope"] == "user/*.*"
    tokens = tokens_for(env, app, issued["code"])
    assert whoami(env, tokens["access_token"]).json()["oneup_user_id"] == int(number)


def test_auth_code_text_output_carries_the_code(env: dict[str, str], app: tuple[str, str]) -> None:
    users(env, "create", app[0], "--app-user-id", "alice")
    result = invoke(env, "users", "auth-code", "--client-id", app[0], "--app-user-id", "alice",
                    "--scope", "user/Patient.rs")  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = dict(line.split(": ", 1) for line in result.output.splitlines() if ": " in line)
    assert lines["scope"] == "user/Patient.rs"
    assert tokens_for(env, app, lines["code"])["scope"] == "user/Patient.rs"


def test_auth_code_needs_a_user_id_and_a_known_user(
    env: dict[str, str], app: tuple[str, str]
) -> None:
    usage = invoke(env, "users", "auth-code", "--client-id", app[0])
    assert usage.exit_code == 2 and "give --app-user-id or --oneup-user-id" in usage.stderr
    ghost = fails(env, "users", "auth-code", "--client-id", app[0], "--app-user-id", "ghost")
    assert f"client {app[0]} has no user app_user_id 'ghost'" in ghost
    number = str(users(env, "create", app[0], "--app-user-id", "alice")["oneup_user_id"])
    mismatch = fails(env, "users", "auth-code", "--client-id", app[0], "--app-user-id", "bob",
                     "--oneup-user-id", number)  # fmt: skip
    assert f"has no user app_user_id 'bob' and oneup_user_id {number}" in mismatch


# --------------------------------------------------------------------------- deactivate, revoke


def test_deactivate_ends_the_users_tokens_and_codes_until_activated(
    env: dict[str, str], app: tuple[str, str]
) -> None:
    created = users(env, "create", app[0], "--app-user-id", "alice")
    tokens = tokens_for(env, app, created["code"])
    pending = users(env, "auth-code", app[0], "--app-user-id", "alice")["code"]
    deactivated = users(env, "deactivate", app[0], "--app-user-id", "alice")
    assert deactivated == {"client_id": app[0], "oneup_user_id": created["oneup_user_id"],
                           "app_user_id": "alice", "active": False}  # fmt: skip
    assert whoami(env, tokens["access_token"]).status_code == 401
    assert refresh(env, app, tokens["refresh_token"]).json()["error"] == "invalid_grant"
    assert redeem(env, app, pending).json()["error"] == "invalid_grant"
    refused = fails(env, "users", "auth-code", "--client-id", app[0], "--app-user-id", "alice")
    assert "is not active" in refused
    activated = users(env, "activate", app[0], "--oneup-user-id", str(created["oneup_user_id"]))
    assert activated["active"] is True
    assert whoami(env, tokens["access_token"]).status_code == 401  # old tokens stay dead
    code = users(env, "auth-code", app[0], "--app-user-id", "alice")["code"]
    assert whoami(env, tokens_for(env, app, code)["access_token"]).status_code == 200


def test_revoke_ends_the_grant_but_the_user_stays_active(
    env: dict[str, str], app: tuple[str, str]
) -> None:
    created = users(env, "create", app[0], "--app-user-id", "alice")
    tokens = tokens_for(env, app, created["code"])
    pending = users(env, "auth-code", app[0], "--app-user-id", "alice")["code"]
    revoked = users(env, "revoke", app[0], "--app-user-id", "alice")
    assert revoked == {"client_id": app[0], "oneup_user_id": created["oneup_user_id"],
                       "app_user_id": "alice", "active": True, "revoked": True}  # fmt: skip
    assert whoami(env, tokens["access_token"]).status_code == 401
    assert refresh(env, app, tokens["refresh_token"]).json()["error"] == "invalid_grant"
    assert redeem(env, app, pending).json()["error"] == "invalid_grant"
    assert users(env, "list", app[0])[0]["active"] is True
    code = users(env, "auth-code", app[0], "--app-user-id", "alice")["code"]
    assert whoami(env, tokens_for(env, app, code)["access_token"]).status_code == 200


def test_text_output_of_deactivate_activate_and_revoke(
    env: dict[str, str], app: tuple[str, str]
) -> None:
    number = users(env, "create", app[0], "--app-user-id", "alice")["oneup_user_id"]
    base = ["users", "--client-id", app[0], "--app-user-id", "alice"]
    outputs = {}
    for command in ("deactivate", "activate", "revoke"):
        result = invoke(env, base[0], command, *base[1:])
        assert result.exit_code == 0, result.output
        outputs[command] = result.output
    assert outputs["deactivate"].startswith(f"Deactivated user {number} ('alice')")
    assert outputs["activate"] == f"Activated user {number} ('alice').\n"
    assert outputs["revoke"].startswith(f"Revoked {app[0]}'s grant for user {number} ('alice')")


def test_changes_are_audited_as_the_cli(env: dict[str, str], app: tuple[str, str]) -> None:
    number = str(users(env, "create", app[0], "--app-user-id", "alice")["oneup_user_id"])
    users(env, "update", app[0], "--oneup-user-id", number, "--app-user-id", "alicia")
    users(env, "deactivate", app[0], "--oneup-user-id", number)
    users(env, "activate", app[0], "--oneup-user-id", number)
    users(env, "revoke", app[0], "--oneup-user-id", number)

    async def events() -> list[tuple[str, str | None, str]]:
        engine = create_engine(env["FHIRGATE_DATABASE_URL"])
        try:
            found = await AuditLog(engine).recent(app[0])
            return [(e.event, e.actor, e.detail) for e in found if e.event.startswith("app_user")]
        finally:
            await engine.dispose()

    recorded = asyncio.run(events())
    expected = ["app_user.created", "app_user.renamed", "app_user.deactivated",
                "app_user.activated", "app_user.grant_revoked"]  # fmt: skip
    assert sorted(event for event, _, _ in recorded) == sorted(expected)
    assert all(actor == "cli" and detail == f"oneup_user_id={number}"
               for _, actor, detail in recorded)  # fmt: skip


# --------------------------------------------------------------------------- the application


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_command_refuses_an_unknown_client(env: dict[str, str], command: str) -> None:
    message = fails(env, "users", command, "--client-id", "nope", *_ids(command))
    assert "no client 'nope'" in message


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_command_refuses_a_client_without_a_secret(env: dict[str, str], command: str) -> None:
    client = ok_json(env, "clients", "create", "--name", "backend", "--jwks-url", JWKS_URL)
    client_id = str(client["client_id"])
    message = fails(env, "users", command, "--client-id", client_id, *_ids(command))
    assert f"client {client_id} authenticates with private_key_jwt" in message
    assert "client_secret_basic or client_secret_post" in message


def _ids(command: str) -> list[str]:
    if command == "create":
        return ["--app-user-id", "alice"]
    if command == "update":
        return ["--oneup-user-id", "1", "--app-user-id", "alice"]
    return ["--oneup-user-id", "1"]
