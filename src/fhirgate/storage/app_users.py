"""Application users (1upHealth user-management): create, find, list, rename, (de)activate.

A user belongs to one application (a secret client). ``app_user_id`` is the developer's name for
the user — unique per application, changeable; ``oneup_user_id`` is the server's number for it,
assigned at creation and never changed or reused. Every query is scoped by the application's
``client_id``: one application never sees or touches another's users.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import false, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from fhirgate.domain.app_users import MAX_USER_NUMBER, AppUser, UserPage, validate_app_user_id
from fhirgate.domain.errors import Conflict, NotFound
from fhirgate.storage.models import AppUserRow
from fhirgate.storage.repos import now
from fhirgate.storage.user_grants import end_user_grants

__all__ = ["AppUser", "AppUserRepo", "UserPage", "validate_app_user_id"]

_COLUMNS = (
    AppUserRow.oneup_user_id,
    AppUserRow.client_id,
    AppUserRow.app_user_id,
    AppUserRow.active,
)


def _user(row: Sequence[Any]) -> AppUser:
    oneup_user_id, client_id, app_user_id, active = tuple(row)
    return AppUser(int(oneup_user_id), client_id, app_user_id, bool(active))


def _exists(app_user_id: str) -> Conflict:
    return Conflict(f"this user already exists: {app_user_id!r}")


class AppUserRepo:
    """The users of each application."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def create(self, client_id: str, app_user_id: str) -> AppUser:
        """A new active user; :class:`Conflict` when the application already has one of that
        ``app_user_id`` (the unique key decides, so concurrent creations yield one user)."""
        validate_app_user_id(app_user_id)
        created = now()
        try:
            async with self._engine.begin() as conn:
                result = await conn.execute(
                    insert(AppUserRow)
                    .values(
                        client_id=client_id,
                        app_user_id=app_user_id,
                        active=True,
                        created_at=created,
                        updated_at=created,
                    )
                    .returning(AppUserRow.oneup_user_id)
                )
                oneup_user_id = int(result.scalar_one())
        except IntegrityError as exc:
            raise _exists(app_user_id) from exc
        return AppUser(oneup_user_id, client_id, app_user_id, True)

    async def find(
        self,
        client_id: str,
        *,
        app_user_id: str | None = None,
        oneup_user_id: int | None = None,
        conn: AsyncConnection | None = None,
    ) -> AppUser | None:
        """The application's user with both given ids (at least one must be given)."""
        if app_user_id is None and oneup_user_id is None:
            raise ValueError("give app_user_id or oneup_user_id")
        stmt = select(*_COLUMNS).where(*self._filters(client_id, app_user_id, oneup_user_id))
        if conn is not None:
            row = (await conn.execute(stmt)).first()
        else:
            async with self._engine.connect() as own:
                row = (await own.execute(stmt)).first()
        return None if row is None else _user(row)

    async def get(self, client_id: str, **ids: Any) -> AppUser:
        """Like :meth:`find`, but :class:`NotFound` when there is no such user."""
        user = await self.find(client_id, **ids)
        if user is None:
            raise NotFound("Could not find a user matching this query")
        return user

    @staticmethod
    def _filters(client_id: str, app_user_id: str | None, oneup_user_id: int | None) -> list[Any]:
        filters: list[Any] = [AppUserRow.client_id == client_id]
        if app_user_id is not None:
            filters.append(AppUserRow.app_user_id == app_user_id)
        if oneup_user_id is not None:
            in_range = 0 < oneup_user_id <= MAX_USER_NUMBER
            filters.append(AppUserRow.oneup_user_id == oneup_user_id if in_range else false())
        return filters

    async def list(
        self,
        client_id: str,
        *,
        app_user_id: str | None = None,
        oneup_user_id: int | None = None,
        offset: int = 0,
        limit: int = 100,
    ) -> UserPage:
        """One page of the application's users, oldest first, and how many match in all."""
        filters = self._filters(client_id, app_user_id, oneup_user_id)
        page = (
            select(*_COLUMNS)
            .where(*filters)
            .order_by(AppUserRow.oneup_user_id)
            .offset(offset)
            .limit(limit)
        )
        count = select(func.count()).select_from(AppUserRow).where(*filters)
        async with self._engine.connect() as conn:
            rows = (await conn.execute(page)).all()
            total = int((await conn.execute(count)).scalar_one())
        return UserPage([_user(row) for row in rows], total)

    async def rename(self, client_id: str, oneup_user_id: int, app_user_id: str) -> AppUser:
        """Give the user a new ``app_user_id`` (its ``oneup_user_id`` never changes)."""
        validate_app_user_id(app_user_id)
        try:
            user = await self._update(client_id, oneup_user_id, app_user_id=app_user_id)
        except IntegrityError as exc:
            raise _exists(app_user_id) from exc
        return user

    async def set_active(
        self, client_id: str, oneup_user_id: int, active: bool, conn: AsyncConnection
    ) -> AppUser:
        """Activate or deactivate, inside the caller's transaction (:meth:`deactivate` also
        ends the user's grants in it)."""
        return await self._update(client_id, oneup_user_id, conn=conn, active=active)

    async def activate(self, client_id: str, oneup_user_id: int) -> AppUser:
        """Activate the user: it may be given codes again (its old tokens stay dead)."""
        async with self._engine.begin() as conn:
            return await self.set_active(client_id, oneup_user_id, True, conn)

    async def deactivate(self, client_id: str, oneup_user_id: int) -> AppUser:
        """Deactivate the user and end its codes, grants and tokens, in one transaction."""
        async with self._engine.begin() as conn:
            user = await self.set_active(client_id, oneup_user_id, False, conn)
            await end_user_grants(conn, client_id, oneup_user_id)
        return user

    async def _update(
        self,
        client_id: str,
        oneup_user_id: int,
        conn: AsyncConnection | None = None,
        **values: Any,
    ) -> AppUser:
        stmt = (
            update(AppUserRow)
            .where(*self._filters(client_id, None, oneup_user_id))
            .values(updated_at=now(), **values)
            .returning(*_COLUMNS)
        )
        if conn is not None:
            row = (await conn.execute(stmt)).first()
        else:
            async with self._engine.begin() as own:
                row = (await own.execute(stmt)).first()
        if row is None:
            raise NotFound("Could not find a user matching this query")
        return _user(row)
