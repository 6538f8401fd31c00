"""Invitations by link: an owner or admin invites an email to the organization with a role;
whoever opens the link either creates that account (the email is the invitation's, not theirs
to choose) or, signed in as that email, joins. A link works once and for seven days; only its
SHA-256 is stored.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from fhirgate.domain.errors import Conflict, NotFound
from fhirgate.domain.organizations import OrganizationRole
from fhirgate.storage.accounts import DashboardUser, normalized_email
from fhirgate.storage.models import DashboardUserRow, InvitationRow, MembershipRow, OrganizationRow
from fhirgate.storage.opaque_tokens import hash_token, new_token
from fhirgate.storage.repos import now

__all__ = ["INVITATION_LIFETIME", "Invitation", "InvitationRepo"]

INVITATION_LIFETIME = timedelta(days=7)


@dataclass(frozen=True, slots=True)
class Invitation:
    token_hash: str
    organization_id: str
    organization_name: str
    email: str
    role: str
    expires_at: datetime


class InvitationRepo:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def create(
        self, organization_id: str, email: str, role: OrganizationRole, invited_by: str | None
    ) -> str:
        """A new invitation; the token for the link (shown to the inviter once)."""
        token = new_token()
        at = now()
        async with self._engine.begin() as conn:
            await conn.execute(
                insert(InvitationRow).values(
                    token_hash=hash_token(token), organization_id=organization_id,
                    email=normalized_email(email), role=role.value, invited_by=invited_by,
                    created_at=at, expires_at=at + INVITATION_LIFETIME,
                )
            )  # fmt: skip
        return token

    async def pending(self, organization_id: str) -> list[Invitation]:
        """The organization's invitations not yet accepted nor expired."""
        stmt = self._select().where(
            InvitationRow.organization_id == organization_id,
            InvitationRow.accepted_at.is_(None),
            InvitationRow.expires_at > now(),
        )
        async with self._engine.connect() as conn:
            return [Invitation(*row) for row in await conn.execute(stmt)]

    async def find(self, token: str) -> Invitation | None:
        """The open invitation of a link, or ``None`` (unknown, used or expired)."""
        if not token or len(token) > 100:
            return None
        stmt = self._select().where(
            InvitationRow.token_hash == hash_token(token),
            InvitationRow.accepted_at.is_(None),
            InvitationRow.expires_at > now(),
        )
        async with self._engine.connect() as conn:
            row = (await conn.execute(stmt)).first()
        return None if row is None else Invitation(*row)

    async def accept_as_new(self, invitation: Invitation, password_hash: str) -> DashboardUser:
        """Create the invited account and its membership, spending the invitation; all or
        nothing. :class:`NotFound` if the invitation was spent meanwhile, :class:`Conflict` if
        the email has an account already (sign in, then accept)."""
        user = DashboardUser(str(uuid.uuid4()), invitation.email, True)
        at = now()
        try:
            async with self._engine.begin() as conn:
                await self._spend(conn, invitation)
                await conn.execute(
                    insert(DashboardUserRow).values(
                        id=user.id, email=user.email, password_hash=password_hash,
                        created_at=at, password_changed_at=at, active=True,
                    )
                )  # fmt: skip
                await self._join(conn, user.id, invitation)
        except IntegrityError as exc:
            raise Conflict(f"{user.email} already has an account: sign in to accept") from exc
        return user

    async def accept_as(self, invitation: Invitation, user: DashboardUser) -> None:
        """The signed-in person joins (their email must be the invited one)."""
        if user.email != invitation.email:
            raise NotFound("this invitation is for another email address")
        try:
            async with self._engine.begin() as conn:
                await self._spend(conn, invitation)
                await self._join(conn, user.id, invitation)
        except IntegrityError as exc:
            raise Conflict("you are already a member of this organization") from exc

    @staticmethod
    async def _spend(conn: AsyncConnection, invitation: Invitation) -> None:
        spent = await conn.execute(
            update(InvitationRow)
            .where(
                InvitationRow.token_hash == invitation.token_hash,
                InvitationRow.accepted_at.is_(None),
                InvitationRow.expires_at > now(),
            )
            .values(accepted_at=now())
        )
        if spent.rowcount != 1:  # of two people racing with one link, one wins
            raise NotFound("this invitation has been used or has expired")

    @staticmethod
    async def _join(conn: AsyncConnection, user_id: str, invitation: Invitation) -> None:
        await conn.execute(
            insert(MembershipRow).values(
                user_id=user_id, organization_id=invitation.organization_id, role=invitation.role
            )
        )

    @staticmethod
    def _select() -> Any:
        return select(
            InvitationRow.token_hash,
            InvitationRow.organization_id,
            OrganizationRow.name,
            InvitationRow.email,
            InvitationRow.role,
            InvitationRow.expires_at,
        ).join(OrganizationRow, OrganizationRow.id == InvitationRow.organization_id)
