"""Per-user delegated access (1upHealth dialect): an application acts for its own users.

An application (a secret client) creates users and asks for an authorization code for one of
them (``/user-management/v1/...``); the code's scope defaults to ``user/*.*`` and must lie within
the application's allowed scopes (``system/`` scopes are never granted to a user; ``openid`` and
the other identity scopes always may be). ``POST /oauth2/token`` then exchanges the code
(``grant_type=authorization_code``, RFC 6749 §4.1.3) for an access token, a refresh token and,
with ``openid``, an id_token, and refreshes them (``grant_type=refresh_token``, §6: the scope may
narrow, never widen; the refresh token rotates). Deactivating a user, or revoking the
application's grant for it, ends every token at once: the resource guard checks the grant on
every request (:meth:`GrantRepo.live`).
"""

from __future__ import annotations

import dataclasses
import re
import time

from fhirgate.domain.app_users import AppUser
from fhirgate.domain.clients import AuthMethod, Client
from fhirgate.domain.stores import AppUserStore, GrantStore, OpaqueTokenStore
from fhirgate.domain.tokens import OpaqueKind, Redemption
from fhirgate.oauth.client_auth import ClientAuthenticator, SecretCredentials
from fhirgate.oauth.errors import InsufficientScope, InvalidGrant, InvalidRequest, InvalidScope
from fhirgate.oauth.id_tokens import IdTokenIssuer
from fhirgate.oauth.scopes import IDENTITY_SCOPES, ScopeError, ScopeSet, narrow, parse_scopes
from fhirgate.oauth.tokens import AccessTokenService, IssuedToken, Principal

__all__ = [
    "ALL_USERS",
    "APPLICATION_METHODS",
    "DEFAULT_USER_SCOPE",
    "Delegation",
    "UserInactive",
    "authenticate_application",
]

DEFAULT_USER_SCOPE = "user/*.*"
#: ``x-oneup-user-id: client``: the application over all of its users.
ALL_USERS = "client"
#: Applications are secret clients; their credentials may come as Basic, form fields, query
#: parameters or 1upHealth's ``client_id``/``client_secret`` headers, whichever they registered.
APPLICATION_METHODS = (AuthMethod.CLIENT_SECRET_BASIC, AuthMethod.CLIENT_SECRET_POST)
_USER_NUMBER = re.compile(r"[0-9]{1,18}")


def _user_scopes(client: Client) -> ScopeSet:
    """The application's scopes a user principal may hold: all but ``system/`` ones (a header
    principal acts as users, never as the backend system)."""
    scopes = parse_scopes(client.scope)
    kept = [scope.text for scope in scopes.resource_scopes if scope.context != "system"] + list(
        scopes.other_scopes
    )
    if not kept:
        raise InsufficientScope(
            "this application may not act for its users (no user scopes)", check="no_user_scopes"
        )
    return parse_scopes(" ".join(kept))


async def authenticate_application(
    authenticator: ClientAuthenticator, client_id: str, secret: str, source: str
) -> Client:
    """An application by its ``client_id`` and ``client_secret`` as 1upHealth sends them
    (headers, form or query), checked, throttled and audited like any client secret."""
    presented = SecretCredentials(client_id, secret, AuthMethod.CLIENT_SECRET_POST)
    return await authenticator.authenticate(presented, None, source, also=APPLICATION_METHODS)


class UserInactive(ValueError):
    """The user is deactivated: no code can be issued for it."""


class Delegation:
    """Users' codes, the code and refresh grants, and principals from 1upHealth's headers."""

    def __init__(
        self,
        users: AppUserStore,
        grants: GrantStore,
        opaque: OpaqueTokenStore,
        tokens: AccessTokenService,
        id_tokens: IdTokenIssuer,
        *,
        code_ttl: int,
    ) -> None:
        self.users = users
        self.grants = grants
        self._opaque = opaque
        self._tokens = tokens
        self._id_tokens = id_tokens
        self._code_ttl = code_ttl

    @staticmethod
    def code_scope(client: Client, requested: str | None) -> str:
        """The scope a code may carry: ``requested`` (default ``user/*.*``) if the application
        may grant all of it to a user; else :class:`ScopeError`."""
        scopes = parse_scopes(requested or DEFAULT_USER_SCOPE)
        if any(scope.context == "system" for scope in scopes.resource_scopes):
            raise ScopeError("system scopes cannot be granted to a user")
        allowed = parse_scopes(f"{client.scope} {IDENTITY_SCOPES}")
        return str(narrow(scopes, allowed))

    async def create_user(
        self, client: Client, app_user_id: str, scope: str | None = None
    ) -> tuple[AppUser, str]:
        """A new user and a first code for it (1upHealth answers user creation with one)."""
        granted = self.code_scope(client, scope)  # checked before anything is written
        user = await self.users.create(client.client_id, app_user_id)
        return user, await self.grants.issue_code(
            client.client_id, user.oneup_user_id, granted, self._code_ttl
        )

    async def issue_code(self, client: Client, user: AppUser, scope: str | None = None) -> str:
        granted = self.code_scope(client, scope)
        if not user.active:
            raise UserInactive("this user is not active")
        return await self.grants.issue_code(
            client.client_id, user.oneup_user_id, granted, self._code_ttl
        )

    async def set_active(self, client: Client, oneup_user_id: int, active: bool) -> AppUser:
        """(De)activate a user; deactivation also ends its codes and grants, in one
        transaction."""
        change = self.users.activate if active else self.users.deactivate
        return await change(client.client_id, oneup_user_id)

    async def revoke(self, client: Client, oneup_user_id: int) -> AppUser:
        """Revoke the application's grant for the user: its codes and every token end now; the
        user stays active and may be given a new code."""
        user = await self.users.get(client.client_id, oneup_user_id=oneup_user_id)
        await self.grants.revoke_user(client.client_id, oneup_user_id)
        return user

    async def exchange_code(self, client: Client, code: str) -> IssuedToken:
        """``grant_type=authorization_code`` (RFC 6749 §4.1.3)."""
        redemption = await self.grants.redeem_code(client.client_id, code)
        if redemption is None:
            raise InvalidGrant(check="code_invalid", detail="unknown, expired, used or foreign")
        return self._issue(client, redemption, parse_scopes(redemption.grant.scope))

    async def refresh(
        self, client: Client, refresh_token: str, wanted: ScopeSet | None
    ) -> IssuedToken:
        """``grant_type=refresh_token`` (RFC 6749 §6): a too-wide scope is refused before the
        refresh token is spent, so the client keeps it; a token that cannot be spent (unknown,
        foreign, revoked, reused) is ``invalid_grant`` whatever scope was asked."""
        scope = None
        if wanted is not None:
            record = await self._opaque.find(refresh_token)
            spendable = (
                record is not None
                and record.kind == OpaqueKind.REFRESH
                and record.client_id == client.client_id
                and record.live(time.time())
            )
            if spendable:  # else the refresh below refuses it (and detects reuse)
                assert record is not None
                scope = self._narrow(wanted, record.scope)
        redemption = await self.grants.refresh(client.client_id, refresh_token)
        if redemption is None:
            raise InvalidGrant(
                check="refresh_token_invalid", detail="unknown, expired, revoked or foreign"
            )
        granted = scope or parse_scopes(redemption.grant.scope)
        return self._issue(client, redemption, granted)

    @staticmethod
    def _narrow(wanted: ScopeSet, original: str) -> ScopeSet:
        try:
            return narrow(wanted, parse_scopes(original))
        except ScopeError as exc:
            raise InvalidScope(
                f"beyond the scope originally granted: {exc}", check="scope_widened"
            ) from exc

    def _issue(self, client: Client, redemption: Redemption, scope: ScopeSet) -> IssuedToken:
        grant = redemption.grant
        issued = self._tokens.issue(client, str(scope), grant)
        id_token = self._id_tokens.issue(grant) if "openid" in scope.other_scopes else None
        return dataclasses.replace(
            issued, refresh_token=redemption.refresh_token, id_token=id_token
        )

    async def header_principal(
        self, client: Client, oneup_user_id: str | None, app_user_id: str | None, method: str
    ) -> Principal:
        """The principal of 1upHealth's system-level headers: ``x-oneup-user-id: <id>`` (or
        ``x-app-user-id``) acts as that user of the application; ``x-oneup-user-id: client``
        acts over all of its users, for reads only. Either way with the application's scopes
        except ``system/`` ones."""
        base = Principal(
            client_id=client.client_id,
            subject=client.client_id,
            scopes=_user_scopes(client),
            expires_at=int(time.time()),
            issued_at=int(time.time()),
            jti="",
            organization_id=client.environment.organization_id,
            environment=client.environment.kind,
        )
        if oneup_user_id == ALL_USERS and app_user_id is None:
            if method not in ("GET", "HEAD"):
                raise InsufficientScope(
                    "x-oneup-user-id: client allows reads only", check="all_users_write"
                )
            return dataclasses.replace(base, all_users=True)
        user = await self._header_user(client, oneup_user_id, app_user_id)
        return dataclasses.replace(
            base, subject=str(user.oneup_user_id), user_id=user.oneup_user_id
        )

    async def _header_user(
        self, client: Client, oneup_user_id: str | None, app_user_id: str | None
    ) -> AppUser:
        if oneup_user_id is None and app_user_id is None:
            raise InvalidRequest(
                "x-oneup-user-id or x-app-user-id is required with client credentials",
                check="user_header_missing",
            )
        number = None
        if oneup_user_id is not None:
            if (
                not oneup_user_id.isascii()
                or not oneup_user_id.isdigit()
                or len(oneup_user_id) > 18
            ):
                raise InvalidRequest(
                    "x-oneup-user-id must be a user's number or 'client'", check="user_header"
                )
            number = int(oneup_user_id)
        user = await self.users.find(
            client.client_id, app_user_id=app_user_id, oneup_user_id=number
        )
        if user is None or not user.active:
            raise InsufficientScope(
                "no active user of this application matches the user headers",
                check="user_unknown",
            )
        return user
