"""``fhirgate users …``: an application's users (1upHealth per-user delegated access), directly
on the database, like ``/user-management/v1`` does over HTTP.

An application is a secret client (``client_secret_basic`` or ``client_secret_post``). A user's
authorization code (``create``, ``auth-code``) is redeemed once at ``POST /oauth2/token`` with
``grant_type=authorization_code`` and the application's credentials (RFC 6749 §4.1.3); the
tokens it gives are refreshed with ``grant_type=refresh_token`` (§6). ``deactivate`` and
``revoke`` end the user's codes and tokens at once (running servers check the grant on every
request); ``deactivate`` also refuses new codes until ``activate``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import click

from fhirgate.cli.context import Storage, emit, run_storage
from fhirgate.domain.app_users import AppUser
from fhirgate.domain.clients import Client
from fhirgate.oauth.delegation import APPLICATION_METHODS, Delegation
from fhirgate.oauth.scopes import ScopeError
from fhirgate.storage.app_users import AppUserRepo
from fhirgate.storage.opaque_tokens import OpaqueTokenRepo
from fhirgate.storage.ttl_sets import SqlTTLSet
from fhirgate.storage.user_grants import GrantRepo

__all__ = ["users"]

_F = TypeVar("_F", bound=Callable[..., Any])
_PAGE = 1000


@dataclass(frozen=True)
class IssuedCode:
    """A user's new authorization code, the scope it carries and its lifetime (seconds)."""

    user: AppUser
    code: str
    scope: str
    expires_in: int

    def describe(self) -> dict[str, Any]:
        return {**_describe(self.user), "code": self.code, "scope": self.scope,
                "expires_in": self.expires_in}  # fmt: skip

    def text(self) -> str:
        return (
            f"oneup_user_id: {self.user.oneup_user_id}\napp_user_id: {self.user.app_user_id}\n"
            f"scope: {self.scope}\ncode: {self.code}\n"
            f"Redeem it once, within {self.expires_in} s, at POST /oauth2/token with "
            "grant_type=authorization_code and the application's credentials."
        )


@dataclass
class Application:
    """One application's users and grants, over the command's storage."""

    storage: Storage
    client: Client
    users: AppUserRepo
    grants: GrantRepo

    @property
    def client_id(self) -> str:
        return self.client.client_id

    async def user(self, app_user_id: str | None, oneup_user_id: int | None) -> AppUser:
        """The user with the given ids (both must match when both are given)."""
        found = await self.users.find(
            self.client_id, app_user_id=app_user_id, oneup_user_id=oneup_user_id
        )
        if found is None:
            ids = [f"{name} {value!r}" for name, value in
                   (("app_user_id", app_user_id), ("oneup_user_id", oneup_user_id))
                   if value is not None]  # fmt: skip
            raise click.ClickException(f"client {self.client_id} has no user {' and '.join(ids)}")
        return found

    async def issue_code(self, user: AppUser, scope: str | None) -> IssuedCode:
        """A new code for ``user`` (as ``Delegation.issue_code``)."""
        granted = _code_scope(self.client, scope)
        if not user.active:
            raise click.ClickException(
                f"user {user.oneup_user_id} is not active: activate it first"
            )
        ttl = self.storage.settings.auth_code_ttl
        code = await self.grants.issue_code(self.client_id, user.oneup_user_id, granted, ttl)
        return IssuedCode(user, code, granted, ttl)

    async def set_active(self, user: AppUser, active: bool) -> AppUser:
        """(De)activate; deactivation ends the user's codes and grants in the same transaction."""
        change = self.users.activate if active else self.users.deactivate
        return await change(self.client_id, user.oneup_user_id)

    async def audit(self, event: str, user: AppUser) -> None:
        await self.storage.audit.record(
            event,
            client_id=self.client_id,
            actor="cli",
            detail=f"oneup_user_id={user.oneup_user_id}",
        )


async def _application(storage: Storage, client_id: str) -> Application:
    """The application ``client_id``: a secret client, else a clear error."""
    client = await storage.clients.get(client_id)
    if client is None:
        raise click.ClickException(f"no client {client_id!r}")
    if client.auth_method not in APPLICATION_METHODS:
        methods = " or ".join(APPLICATION_METHODS)
        raise click.ClickException(
            f"client {client_id} authenticates with {client.auth_method}: users belong to "
            f"applications that use {methods}"
        )
    settings = storage.settings
    grants = GrantRepo(
        storage.database,
        OpaqueTokenRepo(storage.engine),
        denied=SqlTTLSet.revoked_tokens(storage.statements),
        family_ttl=settings.grant_lifetime,
        refresh_ttl=settings.refresh_token_ttl,
    )
    return Application(storage, client, AppUserRepo(storage.engine), grants)


def _code_scope(client: Client, scope: str | None) -> str:
    try:
        return Delegation.code_scope(client, scope)
    except ScopeError as exc:
        raise click.ClickException(f"scope not allowed for {client.client_id}: {exc}") from exc


def _describe(user: AppUser) -> dict[str, Any]:
    return {"client_id": user.client_id, **user.describe()}


def _line(user: AppUser) -> str:
    state = "active" if user.active else "inactive"
    return f"{user.oneup_user_id:>8}  {state:<8}  {user.app_user_id}"


def _require_user(app_user_id: str | None, oneup_user_id: int | None) -> None:
    if app_user_id is None and oneup_user_id is None:
        raise click.UsageError("give --app-user-id or --oneup-user-id (or both)")


# --------------------------------------------------------------------------- options


def _client_option(command: _F) -> _F:
    return click.option(
        "--client-id", required=True, help="The application (a client_secret_* client)."
    )(command)


def _json_option(command: _F) -> _F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")(command)


def _scope_option(command: _F) -> _F:
    return click.option(
        "--scope",
        help='The code\'s scopes, space-separated in one value (default "user/*.*"); within '
        "the application's allowed scopes, never system/ ones; openid adds an id_token.",
    )(command)


def _user_options(command: _F) -> _F:
    command = click.option(
        "--oneup-user-id", type=click.IntRange(1), help="The user's number (from create)."
    )(command)
    return click.option("--app-user-id", help="The application's own id for the user.")(command)


# --------------------------------------------------------------------------- commands


@click.group()
def users() -> None:
    """An application's users (1upHealth per-user delegated access): create them, give them
    authorization codes, rename, deactivate, revoke."""


@users.command("create")
@_client_option
@click.option("--app-user-id", required=True, help="The application's own id for the user.")
@_scope_option
@_json_option
def create(client_id: str, app_user_id: str, scope: str | None, as_json: bool) -> None:
    """Create a user of the application and print its oneup_user_id and a first authorization
    code (single use, valid FHIRGATE_AUTH_CODE_TTL seconds)."""

    async def job(storage: Storage) -> IssuedCode:
        app = await _application(storage, client_id)
        granted = _code_scope(app.client, scope)  # checked before anything is written
        user = await app.users.create(client_id, app_user_id)
        await app.audit("app_user.created", user)
        return await app.issue_code(user, granted)

    issued = run_storage(job)
    emit(issued.describe(), as_json, f"Created user {app_user_id!r}.\n{issued.text()}")


@users.command("list")
@_client_option
@_user_options
@_json_option
def list_(
    client_id: str, app_user_id: str | None, oneup_user_id: int | None, as_json: bool
) -> None:
    """List the application's users, oldest first (all of them, or those matching the given
    ids)."""

    async def job(storage: Storage) -> list[AppUser]:
        app = await _application(storage, client_id)
        found: list[AppUser] = []
        while True:
            page = await app.users.list(
                client_id,
                app_user_id=app_user_id,
                oneup_user_id=oneup_user_id,
                offset=len(found),
                limit=_PAGE,
            )
            found.extend(page.users)
            if not page.users or len(found) >= page.total:
                return found

    found = run_storage(job)
    header = f"{'oneup_id':>8}  {'state':<8}  app_user_id"
    text = "\n".join([header, *map(_line, found)]) if found else "No users."
    emit([_describe(user) for user in found], as_json, text)


@users.command("update")
@_client_option
@click.option("--oneup-user-id", required=True, type=click.IntRange(1), help="The user to rename.")
@click.option("--app-user-id", required=True, help="The user's new app_user_id.")
@_json_option
def update(client_id: str, oneup_user_id: int, app_user_id: str, as_json: bool) -> None:
    """Give a user a new app_user_id (its oneup_user_id, codes and tokens stay)."""

    async def job(storage: Storage) -> AppUser:
        app = await _application(storage, client_id)
        await app.user(None, oneup_user_id)  # a clear error for an unknown user
        user = await app.users.rename(client_id, oneup_user_id, app_user_id)
        await app.audit("app_user.renamed", user)
        return user

    user = run_storage(job)
    emit(_describe(user), as_json, f"User {oneup_user_id} is now {app_user_id!r}.")


@users.command("auth-code")
@_client_option
@_user_options
@_scope_option
@_json_option
def auth_code(
    client_id: str,
    app_user_id: str | None,
    oneup_user_id: int | None,
    scope: str | None,
    as_json: bool,
) -> None:
    """Print a new authorization code for an active user (single use, valid
    FHIRGATE_AUTH_CODE_TTL seconds)."""

    _require_user(app_user_id, oneup_user_id)

    async def job(storage: Storage) -> IssuedCode:
        app = await _application(storage, client_id)
        return await app.issue_code(await app.user(app_user_id, oneup_user_id), scope)

    issued = run_storage(job)
    emit(issued.describe(), as_json, issued.text())


def _set_active(
    client_id: str, app_user_id: str | None, oneup_user_id: int | None, active: bool
) -> AppUser:
    _require_user(app_user_id, oneup_user_id)

    async def job(storage: Storage) -> AppUser:
        app = await _application(storage, client_id)
        user = await app.set_active(await app.user(app_user_id, oneup_user_id), active)
        await app.audit("app_user.activated" if active else "app_user.deactivated", user)
        return user

    return run_storage(job)


@users.command("deactivate")
@_client_option
@_user_options
@_json_option
def deactivate(
    client_id: str, app_user_id: str | None, oneup_user_id: int | None, as_json: bool
) -> None:
    """Deactivate a user: its codes and tokens stop working now, and it gets no new codes
    until activated."""
    user = _set_active(client_id, app_user_id, oneup_user_id, False)
    text = (
        f"Deactivated user {user.oneup_user_id} ({user.app_user_id!r}): its codes and tokens "
        "no longer work."
    )
    emit(_describe(user), as_json, text)


@users.command("activate")
@_client_option
@_user_options
@_json_option
def activate(
    client_id: str, app_user_id: str | None, oneup_user_id: int | None, as_json: bool
) -> None:
    """Activate a deactivated user: it may be given codes again (its old tokens stay dead)."""
    user = _set_active(client_id, app_user_id, oneup_user_id, True)
    emit(_describe(user), as_json, f"Activated user {user.oneup_user_id} ({user.app_user_id!r}).")


@users.command("revoke")
@_client_option
@_user_options
@_json_option
def revoke(
    client_id: str, app_user_id: str | None, oneup_user_id: int | None, as_json: bool
) -> None:
    """End the application's grant for a user: its unused codes and every token issued for it
    stop working now; the user stays active and may be given a new code."""
    _require_user(app_user_id, oneup_user_id)

    async def job(storage: Storage) -> AppUser:
        app = await _application(storage, client_id)
        user = await app.user(app_user_id, oneup_user_id)
        await app.grants.revoke_user(client_id, user.oneup_user_id)
        await app.audit("app_user.grant_revoked", user)
        return user

    user = run_storage(job)
    text = (
        f"Revoked {client_id}'s grant for user {user.oneup_user_id} ({user.app_user_id!r}): "
        "its codes and tokens no longer work; the user stays active."
    )
    emit({**_describe(user), "revoked": True}, as_json, text)
