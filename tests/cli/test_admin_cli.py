"""``fhirgate admin``: dashboard users from the command line — argon2id passwords under the
rules, the first user of an organization its owner, role changes, and an organization that
never loses its last owner (also when two owners demote each other at once, on every
backend)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import select
from tests.support import BASE

from fhirgate.cli.main import cli
from fhirgate.config import Settings
from fhirgate.dashboard.passwords import hash_password, verify_password
from fhirgate.domain.organizations import OrganizationRole
from fhirgate.storage.accounts import AccountRepo, LastOwner
from fhirgate.storage.audit import AuditLog
from fhirgate.storage.db import create_engine, upgrade_async
from fhirgate.storage.models import DashboardUserRow
from fhirgate.storage.repos import OrganizationRepo

PASSWORD = "correct horse battery staple"


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {
        "FHIRGATE_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/admin.db",
        "FHIRGATE_VAR_DIR": str(tmp_path / "var"),
        "FHIRGATE_PUBLIC_URL": BASE,
    }


def invoke(env: dict[str, str], *args: str, stdin: str | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), env=env, input=stdin, catch_exceptions=False)


def create(env: dict[str, str], email: str, *args: str) -> Any:
    result = invoke(
        env, "admin", "create-user", "--email", email, "--password-stdin", *args, "--json",
        stdin=PASSWORD + "\n",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def stored_hash(env: dict[str, str], email: str) -> str:
    async def read() -> str:
        engine = create_engine(env["FHIRGATE_DATABASE_URL"])
        try:
            async with engine.connect() as conn:
                stmt = select(DashboardUserRow.password_hash).where(DashboardUserRow.email == email)
                return str((await conn.execute(stmt)).scalar_one())
        finally:
            await engine.dispose()

    return asyncio.run(read())


def test_the_first_user_owns_the_organization_and_the_next_is_a_member(
    env: dict[str, str],
) -> None:
    first = create(env, "Ada@Example.org")
    assert first["email"] == "ada@example.org"
    assert (first["organization"], first["role"]) == ("default", "owner")
    assert create(env, "bob@example.org")["role"] == "member"
    assert create(env, "cy@example.org", "--role", "admin")["role"] == "admin"
    hashed = stored_hash(env, "ada@example.org")
    assert hashed.startswith("$argon2id$") and PASSWORD not in hashed
    assert verify_password(hashed, PASSWORD) and not verify_password(hashed, PASSWORD + "!")


def test_passwords_that_break_the_rules_and_duplicate_emails_are_refused(
    env: dict[str, str],
) -> None:
    short = invoke(env, "admin", "create-user", "--email", "a@example.org", "--password", "short")
    assert short.exit_code == 1 and "at least 12 characters" in short.output
    same = invoke(env, "admin", "create-user", "--email", "longname@example.org",
                  "--password", "LongName@Example.org")  # fmt: skip
    assert same.exit_code == 1 and "must not be the email" in same.output
    both = invoke(env, "admin", "create-user", "--email", "a@example.org", "--password", PASSWORD,
                  "--password-stdin", stdin=PASSWORD)  # fmt: skip
    assert both.exit_code == 2 and "not both" in both.output
    bad = invoke(env, "admin", "create-user", "--email", "not-an-email", "--password", PASSWORD)
    assert bad.exit_code == 1 and "not an email address" in bad.output
    create(env, "dup@example.org")
    again = invoke(env, "admin", "create-user", "--email", "DUP@example.org", "--password-stdin",
                   stdin=PASSWORD)  # fmt: skip
    assert again.exit_code == 1 and "already exists" in again.output
    unknown_org = invoke(env, "admin", "create-user", "--email", "x@example.org", "--org", "nope",
                         "--password-stdin", stdin=PASSWORD)  # fmt: skip
    assert unknown_org.exit_code == 1 and "no organization" in unknown_org.output


def test_the_password_prompt_asks_twice_and_hides_input(env: dict[str, str]) -> None:
    result = invoke(env, "admin", "create-user", "--email", "p@example.org",
                    stdin=f"{PASSWORD}\n{PASSWORD}\n")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert PASSWORD not in result.output
    assert verify_password(stored_hash(env, "p@example.org"), PASSWORD)


def test_roles_change_and_the_last_owner_stays(env: dict[str, str]) -> None:
    create(env, "owner@example.org")
    create(env, "member@example.org")

    def set_role(*args: str) -> Result:
        return invoke(env, "admin", "set-role", *args)

    demote = set_role("--email", "owner@example.org", "--role", "admin")
    assert demote.exit_code == 1 and "last owner" in demote.output
    promote = set_role("--email", "member@example.org", "--role", "owner")
    assert promote.exit_code == 0 and "is now owner of default" in promote.output
    assert set_role("--email", "owner@example.org", "--role", "member").exit_code == 0
    engineer = set_role("--email", "owner@example.org", "--env", "Production", "--role", "engineer")
    assert engineer.exit_code == 0 and "engineer in default/production" in engineer.output
    viewer = set_role("--email", "owner@example.org", "--env", "production", "--role", "viewer")
    assert viewer.exit_code == 0
    mismatch = set_role("--email", "owner@example.org", "--env", "staging", "--role", "owner")
    assert mismatch.exit_code == 2
    assert set_role("--email", "member@example.org", "--role", "viewer").exit_code == 2
    nobody = set_role("--email", "nobody@example.org", "--role", "admin")
    assert nobody.exit_code == 1 and "no dashboard user" in nobody.output
    elsewhere = set_role("--email", "owner@example.org", "--org", "other", "--role", "admin")
    assert elsewhere.exit_code == 1 and "not a member of 'other'" in elsewhere.output


async def test_two_owners_demoting_each_other_at_once_leave_one_owner(
    backend_settings: Settings,
) -> None:
    """On every backend: the UPDATE keeps another owner (and PostgreSQL locks the members)."""
    await upgrade_async(backend_settings.database_url)
    engine = create_engine(backend_settings.database_url)
    try:
        organizations = OrganizationRepo(engine)
        organization_id = (await organizations.default_environment()).organization_id
        accounts = AccountRepo(engine)
        hashed = hash_password(PASSWORD, "x@example.org")
        owners = [
            await accounts.create(f"o{n}@example.org", hashed, organization_id,
                                  OrganizationRole.OWNER)
            for n in range(2)
        ]  # fmt: skip
        outcomes = await asyncio.gather(
            *(
                accounts.set_organization_role(owner.id, organization_id, OrganizationRole.MEMBER)
                for owner in owners
            ),
            return_exceptions=True,
        )
        assert sorted(type(outcome).__name__ for outcome in outcomes) == ["LastOwner", "NoneType"]
        assert await accounts.owners(organization_id) == 1
        assert isinstance(next(o for o in outcomes if o is not None), LastOwner)
    finally:
        await engine.dispose()


def test_an_unknown_account_costs_a_hash_too() -> None:
    assert not verify_password(None, PASSWORD)
    assert not verify_password("not a hash", PASSWORD)
    assert not verify_password(hash_password(PASSWORD, "a@example.org"), "x" * 10_000)


def test_the_changes_are_on_the_organizations_audit_page(env: dict[str, str]) -> None:
    """The dashboard's audit page reads events by organization: the CLI's changes carry it."""
    create(env, "owner@example.org")
    create(env, "member@example.org")
    changed = invoke(env, "admin", "set-role", "--email", "member@example.org", "--role", "admin")
    assert changed.exit_code == 0

    async def events() -> list[str]:
        engine = create_engine(env["FHIRGATE_DATABASE_URL"])
        try:
            org = await OrganizationRepo(engine).environment("default", "development")
            found = await AuditLog(engine).recent(organization_id=org.organization_id)
            return [event.event for event in found]
        finally:
            await engine.dispose()

    assert asyncio.run(events()) == [
        "dashboard.role_changed",
        "dashboard.user_created",
        "dashboard.user_created",
    ]
