"""Who may do what with the API keys of an environment (docs/dashboard.md, "Roles, as the
server enforces them"):

* an active member of an organization (any role) **sees** the API keys of its environments;
* its owners and admins, and whoever holds the ``engineer`` role in an environment, **manage**
  that environment's keys; others get :class:`Forbidden`;
* a key or environment of another organization is :class:`NotFound`, exactly like one that
  does not exist, so ids reveal nothing;
* a **user-level** key (docs/platform-api.md) is its owner's alone: to anyone else it does
  not exist.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from fhirgate.domain.clients import Client
from fhirgate.domain.errors import NotFound
from fhirgate.domain.organizations import Environment, EnvironmentRole, OrganizationRole
from fhirgate.storage.accounts import AccountRepo
from fhirgate.storage.repos import ClientRepo

NO_SUCH_KEY: Final = "no such API key"
NO_SUCH_ENVIRONMENT: Final = "no such environment"
_MANAGERS = frozenset({OrganizationRole.OWNER.value, OrganizationRole.ADMIN.value})


class Forbidden(PermissionError):
    """The person may see this but not change it, or their account is not active."""


@dataclass(frozen=True, slots=True)
class Actor:
    """A signed-in person and their roles: organization id → role, environment id → role."""

    user_id: str
    email: str
    organizations: Mapping[str, str]
    environment_roles: Mapping[str, str]

    def can_see(self, environment: Environment) -> bool:
        return environment.organization_id in self.organizations

    def can_manage(self, environment: Environment) -> bool:
        return self.organizations.get(environment.organization_id) in _MANAGERS or (
            self.can_see(environment)
            and self.environment_roles.get(environment.id) == EnvironmentRole.ENGINEER
        )


def require_manager(actor: Actor, environment: Environment) -> None:
    """:class:`Forbidden` unless ``actor`` may change the keys of ``environment``."""
    if not actor.can_manage(environment):
        raise Forbidden(
            f"changing the API keys of {environment.kind} takes the engineer role there, "
            "or the organization's owner or admin role"
        )


class KeyAccess:
    """Finds the acting person, and the environments and keys they may see or manage."""

    def __init__(self, *, accounts: AccountRepo, clients: ClientRepo) -> None:
        self._accounts = accounts
        self._clients = clients

    async def actor(self, user_id: str) -> Actor:
        """The person and their roles; :class:`Forbidden` if the account is unknown or
        deactivated."""
        person = await self._accounts.get(user_id)
        if person is None or not person.active:
            raise Forbidden("this account is deactivated")
        memberships = await self._accounts.memberships(user_id)
        roles = await self._accounts.environment_roles(user_id)
        organizations = {m.organization_id: m.role for m in memberships}
        return Actor(user_id, person.email, organizations, roles)

    async def environment(self, actor: Actor, environment_id: str, manage: bool) -> Environment:
        """The environment if the person sees it (and manages it, with ``manage``)."""
        environment = None
        if len(environment_id) <= 36:  # environments.id
            environment = await self._clients.environment(environment_id)
        if environment is None or not actor.can_see(environment):
            raise NotFound(NO_SUCH_ENVIRONMENT)
        if manage:
            require_manager(actor, environment)
        return environment

    async def key(self, actor: Actor, client_id: str, manage: bool) -> Client:
        """The key if the person sees it (and manages it, with ``manage``); a key of another
        organization, or another person's user-level key, is "no such API key" like one that
        does not exist."""
        client = None
        if len(client_id) <= 64:  # clients.client_id
            client = await self._clients.get(client_id)
        if client is None:
            raise NotFound(NO_SUCH_KEY)
        if client.owner_user_id is not None:
            if client.owner_user_id != actor.user_id:
                raise NotFound(NO_SUCH_KEY)
            return client
        if not actor.can_see(client.environment):
            raise NotFound(NO_SUCH_KEY)
        if manage:
            require_manager(actor, client.environment)
        return client
