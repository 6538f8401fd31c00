"""Dashboard accounts: people, their organization roles (owner / admin / member) and their
roles in each environment (engineer / support / viewer).

An organization never loses its last owner: a change of role that would leave none is refused
by the ``UPDATE`` itself (it changes a role only while another owner remains), with the
organization's memberships locked first on PostgreSQL (SQLite runs one writer at a time), so
two owners demoting each other at once cannot both succeed.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import delete, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from fhirgate.domain.errors import Conflict, NotFound
from fhirgate.domain.organizations import EnvironmentRole, OrganizationRole
from fhirgate.storage.models import (
    DashboardUserRow,
    EnvironmentRoleRow,
    EnvironmentRow,
    MembershipRow,
    OrganizationRow,
)
from fhirgate.storage.repos import now

__all__ = ["AccountRepo", "DashboardUser", "LastOwner", "Membership", "normalized_email"]


class LastOwner(Conflict):
    """The change would leave an organization without an owner."""


@dataclass(frozen=True, slots=True)
class DashboardUser:
    id: str
    email: str
    active: bool


@dataclass(frozen=True, slots=True)
class Membership:
    organization_id: str
    organization_slug: str
    role: str


def normalized_email(email: str) -> str:
    """How an email is stored and looked up: trimmed, lower-cased; a clear error if it is not
    one address."""
    cleaned = email.strip().lower()
    local, at, domain = cleaned.partition("@")
    if (
        not at
        or not local
        or "." not in domain
        or len(cleaned) > 254
        or any(c.isspace() or c in "<>,;\"'" for c in cleaned)
    ):
        raise ValueError(f"not an email address: {email[:80]!r}")
    return cleaned


class AccountRepo:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def create(
        self, email: str, password_hash: str, organization_id: str, role: OrganizationRole
    ) -> DashboardUser:
        """A new person, member of one organization with ``role``; :class:`Conflict` if the
        email is taken."""
        user = DashboardUser(str(uuid.uuid4()), normalized_email(email), True)
        at = now()
        try:
            async with self._engine.begin() as conn:
                await conn.execute(
                    insert(DashboardUserRow).values(
                        id=user.id, email=user.email, password_hash=password_hash,
                        created_at=at, password_changed_at=at, active=True,
                    )
                )  # fmt: skip
                await conn.execute(
                    insert(MembershipRow).values(
                        user_id=user.id, organization_id=organization_id, role=role.value
                    )
                )
        except IntegrityError as exc:
            raise Conflict(f"a dashboard user {user.email} already exists") from exc
        return user

    async def find(self, email: str) -> tuple[DashboardUser, str] | None:
        """The person with this email and their password hash, if any."""
        try:
            wanted = normalized_email(email)
        except ValueError:
            return None
        row = DashboardUserRow
        stmt = select(row.id, row.email, row.active, row.password_hash).where(row.email == wanted)
        async with self._engine.connect() as conn:
            found = (await conn.execute(stmt)).first()
        return None if found is None else (DashboardUser(*found[:3]), str(found[3]))

    async def get(self, user_id: str) -> DashboardUser | None:
        row = DashboardUserRow
        stmt = select(row.id, row.email, row.active).where(row.id == user_id)
        async with self._engine.connect() as conn:
            found = (await conn.execute(stmt)).first()
        return None if found is None else DashboardUser(*found)

    async def set_password(self, user_id: str, password_hash: str) -> None:
        """Replace the person's password hash (the caller ends their other sessions)."""
        stmt = (
            update(DashboardUserRow)
            .where(DashboardUserRow.id == user_id)
            .values(password_hash=password_hash, password_changed_at=now())
        )
        async with self._engine.begin() as conn:
            if (await conn.execute(stmt)).rowcount == 0:
                raise NotFound("no such person")

    async def members(self, organization_id: str) -> list[tuple[DashboardUser, str]]:
        """The organization's people and their organization roles, by email."""
        user = DashboardUserRow
        stmt = (
            select(user.id, user.email, user.active, MembershipRow.role)
            .join(MembershipRow, MembershipRow.user_id == user.id)
            .where(MembershipRow.organization_id == organization_id)
            .order_by(user.email)
        )
        async with self._engine.connect() as conn:
            return [(DashboardUser(*row[:3]), str(row[3])) for row in await conn.execute(stmt)]

    async def memberships(self, user_id: str) -> list[Membership]:
        """The person's organizations and roles, by slug."""
        stmt = (
            select(MembershipRow.organization_id, OrganizationRow.slug, MembershipRow.role)
            .join(OrganizationRow, OrganizationRow.id == MembershipRow.organization_id)
            .where(MembershipRow.user_id == user_id)
            .order_by(OrganizationRow.slug)
        )
        async with self._engine.connect() as conn:
            return [Membership(*row) for row in await conn.execute(stmt)]

    async def owners(self, organization_id: str) -> int:
        stmt = select(func.count()).where(
            MembershipRow.organization_id == organization_id,
            MembershipRow.role == OrganizationRole.OWNER,
        )
        async with self._engine.connect() as conn:
            return int((await conn.execute(stmt)).scalar_one())

    async def set_organization_role(
        self, user_id: str, organization_id: str, role: OrganizationRole
    ) -> None:
        """Make the member's role ``role``; :class:`LastOwner` if that demotes the last owner,
        :class:`NotFound` if they are not a member."""
        member = (MembershipRow.user_id == user_id) & (
            MembershipRow.organization_id == organization_id
        )
        stmt = update(MembershipRow).where(member).values(role=role.value)
        if role != OrganizationRole.OWNER:  # another owner must remain, checked by the UPDATE
            other_owners = (
                select(func.count())
                .where(
                    MembershipRow.organization_id == organization_id,
                    MembershipRow.role == OrganizationRole.OWNER,
                    MembershipRow.user_id != user_id,
                )
                .scalar_subquery()
            )
            stmt = stmt.where(or_(MembershipRow.role != OrganizationRole.OWNER, other_owners > 0))
        async with self._engine.begin() as conn:
            members = await self._locked_members(conn, organization_id)
            if user_id not in members:
                raise NotFound("that person is not a member of the organization")
            if (await conn.execute(stmt)).rowcount == 0:
                raise LastOwner("the organization's last owner cannot be demoted")

    async def set_environment_role(
        self, user_id: str, environment_id: str, role: EnvironmentRole
    ) -> None:
        """The member's role in one environment of an organization they belong to."""
        async with self._engine.begin() as conn:
            organization_id = (
                await conn.execute(
                    select(EnvironmentRow.organization_id).where(
                        EnvironmentRow.id == environment_id
                    )
                )
            ).scalar_one_or_none()
            members = await self._locked_members(conn, str(organization_id))
            if organization_id is None or user_id not in members:
                raise NotFound("that person is not a member of the environment's organization")
            mine = (EnvironmentRoleRow.user_id == user_id) & (
                EnvironmentRoleRow.environment_id == environment_id
            )
            changed = await conn.execute(
                update(EnvironmentRoleRow).where(mine).values(role=role.value)
            )
            if changed.rowcount == 0:
                await conn.execute(
                    insert(EnvironmentRoleRow).values(
                        user_id=user_id, environment_id=environment_id, role=role.value
                    )
                )

    async def clear_environment_role(self, user_id: str, environment_id: str) -> None:
        """The member has no role of their own in the environment any more."""
        mine = (EnvironmentRoleRow.user_id == user_id) & (
            EnvironmentRoleRow.environment_id == environment_id
        )
        async with self._engine.begin() as conn:
            await conn.execute(delete(EnvironmentRoleRow).where(mine))

    async def environment_roles(self, user_id: str) -> dict[str, str]:
        """The person's role per environment id."""
        stmt = select(EnvironmentRoleRow.environment_id, EnvironmentRoleRow.role).where(
            EnvironmentRoleRow.user_id == user_id
        )
        async with self._engine.connect() as conn:
            return {str(env): str(role) for env, role in await conn.execute(stmt)}

    async def environment_roles_in(self, organization_id: str) -> dict[str, dict[str, str]]:
        """Every person's role per environment id, in the organization's environments: one
        query for a whole Members page."""
        stmt = (
            select(EnvironmentRoleRow.user_id, EnvironmentRoleRow.environment_id,
                   EnvironmentRoleRow.role)
            .join(EnvironmentRow, EnvironmentRow.id == EnvironmentRoleRow.environment_id)
            .where(EnvironmentRow.organization_id == organization_id)
        )  # fmt: skip
        roles: dict[str, dict[str, str]] = {}
        async with self._engine.connect() as conn:
            for user_id, environment_id, role in await conn.execute(stmt):
                roles.setdefault(str(user_id), {})[str(environment_id)] = str(role)
        return roles

    @staticmethod
    async def _locked_members(conn: AsyncConnection, organization_id: str) -> dict[str, str]:
        """Every member's role, the rows locked until the transaction ends (PostgreSQL; SQLite
        writes one transaction at a time)."""
        stmt = (
            select(MembershipRow.user_id, MembershipRow.role)
            .where(MembershipRow.organization_id == organization_id)
            .with_for_update()
        )
        return {str(user): str(role) for user, role in await conn.execute(stmt)}
