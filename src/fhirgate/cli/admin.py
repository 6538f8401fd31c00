"""``fhirgate admin``: the dashboard's people from the command line — the first owner of an
organization, and changes of role."""

from __future__ import annotations

import sys

import click

from fhirgate.cli.context import Storage, emit, run_storage
from fhirgate.dashboard.passwords import PasswordRejected, hash_password
from fhirgate.domain.organizations import EnvironmentKind, EnvironmentRole, OrganizationRole
from fhirgate.storage.accounts import AccountRepo, DashboardUser
from fhirgate.storage.repos import DEFAULT_ORG_SLUG

__all__ = ["admin"]

_ORG_ROLES = [role.value for role in OrganizationRole]
_ENV_ROLES = [role.value for role in EnvironmentRole]


@click.group()
def admin() -> None:
    """Dashboard users: create them, change their roles."""


def _password(password: str | None, from_stdin: bool) -> str:
    if password is not None and from_stdin:
        raise click.UsageError("give --password or --password-stdin, not both")
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    if password is not None:
        return password
    entered: str = click.prompt("Password", hide_input=True, confirmation_prompt=True, err=True)
    return entered


@admin.command("create-user")
@click.option("--email", required=True, help="The person's email; they sign in with it.")
@click.option("--password", help="The password (visible to other users of this machine: prefer "
              "--password-stdin or the prompt).")  # fmt: skip
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line "
              "of standard input.")  # fmt: skip
@click.option("--org", "slug", default=DEFAULT_ORG_SLUG, show_default=True,
              help="The organization's slug.")  # fmt: skip
@click.option("--role", type=click.Choice(_ORG_ROLES), help="Their role in the organization "
              "[default: owner for an organization without one, else member].")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def create_user(
    email: str,
    password: str | None,
    password_stdin: bool,
    slug: str,
    role: str | None,
    as_json: bool,
) -> None:
    """Create a dashboard user in an organization (the first one becomes its owner)."""
    secret = _password(password, password_stdin)
    try:
        hashed = hash_password(secret, email)
    except PasswordRejected as exc:
        raise click.ClickException(str(exc)) from exc

    async def job(storage: Storage) -> tuple[DashboardUser, str, str]:
        if slug == DEFAULT_ORG_SLUG:
            await storage.organizations.default_environment()  # creates it on first use
        organization_id = (
            await storage.organizations.environment(slug, "development")
        ).organization_id
        accounts = AccountRepo(storage.engine)
        chosen = OrganizationRole(role) if role else (
            OrganizationRole.MEMBER if await accounts.owners(organization_id)
            else OrganizationRole.OWNER
        )  # fmt: skip
        user = await accounts.create(email, hashed, organization_id, chosen)
        await storage.audit.record(
            "dashboard.user_created",
            actor="cli",
            detail=f"{user.email} {slug} {chosen.value}",
            organization_id=organization_id,
        )
        return user, slug, chosen.value

    user, org, held = run_storage(job)
    emit(
        {"id": user.id, "email": user.email, "organization": org, "role": held},
        as_json,
        f"created {user.email}: {held} of {org}",
    )


@admin.command("set-role")
@click.option("--email", required=True, help="The person's email.")
@click.option("--org", "slug", help="The organization's slug [default: their only one].")
@click.option("--env", "environment", type=click.Choice([k.value for k in EnvironmentKind],
              case_sensitive=False), help="Set the role in this environment instead "
              "(engineer, support or viewer).")  # fmt: skip
@click.option("--role", required=True, type=click.Choice(_ORG_ROLES + _ENV_ROLES),
              help="owner, admin or member; with --env: engineer, support or viewer.")  # fmt: skip
def set_role(email: str, slug: str | None, environment: str | None, role: str) -> None:
    """Change a dashboard user's role in an organization, or in one of its environments. The
    last owner of an organization cannot be demoted."""
    if (environment is None) != (role in _ORG_ROLES):
        wanted = "engineer, support or viewer" if environment else "owner, admin or member"
        raise click.UsageError(f"--role must be {wanted}{' with --env' if environment else ''}")

    async def job(storage: Storage) -> str:
        accounts = AccountRepo(storage.engine)
        found = await accounts.find(email)
        if found is None:
            raise click.ClickException(f"no dashboard user {email!r}")
        user = found[0]
        memberships = await accounts.memberships(user.id)
        chosen = [m for m in memberships if slug is None or m.organization_slug == slug]
        if len(chosen) != 1:
            where = f"of {slug!r}" if slug else "of exactly one organization: give --org"
            raise click.ClickException(f"{user.email} is not a member {where}")
        membership = chosen[0]
        if environment is None:
            await accounts.set_organization_role(
                user.id, membership.organization_id, OrganizationRole(role)
            )
            done = f"{user.email} is now {role} of {membership.organization_slug}"
        else:
            kind = environment.lower()
            env = await storage.organizations.environment(membership.organization_slug, kind)
            await accounts.set_environment_role(user.id, env.id, EnvironmentRole(role))
            done = f"{user.email} is now {role} in {membership.organization_slug}/{kind}"
        await storage.audit.record(
            "dashboard.role_changed",
            actor="cli",
            detail=done,
            organization_id=membership.organization_id,
        )
        return done

    click.echo(run_storage(job))
