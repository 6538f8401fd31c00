"""Async repositories over SQLAlchemy Core: organizations, environments and clients."""

from __future__ import annotations

import contextlib
import re
import time
import uuid
from collections.abc import Collection, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Row, delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from fhirgate.domain.clients import Client, ClientStatus, new_client_id
from fhirgate.domain.errors import Conflict, NotFound
from fhirgate.domain.organizations import Environment, EnvironmentKind
from fhirgate.storage.models import ClientRow, DashboardUserRow, EnvironmentRow, OrganizationRow

__all__ = [
    "DEFAULT_ORG_SLUG",
    "ClientRepo",
    "OrganizationRepo",
    "as_utc",
]

DEFAULT_ORG_SLUG = "default"
_MAX_CACHED_ENVIRONMENTS = 10_000
_SLUG = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


def now() -> datetime:
    return datetime.now(UTC)


_CLIENT_COLUMNS = (
    ClientRow.client_id,
    ClientRow.name,
    ClientRow.status,
    ClientRow.auth_method,
    ClientRow.jwks,
    ClientRow.jwks_url,
    ClientRow.scope,
    ClientRow.created_at,
    ClientRow.updated_at,
    ClientRow.token_lifetime,
    ClientRow.secret_hash,
    ClientRow.previous_secret_hash,
    ClientRow.previous_secret_expires_at,
    EnvironmentRow.id,
    EnvironmentRow.kind,
    OrganizationRow.id,
    OrganizationRow.slug,
    ClientRow.owner_user_id,
    DashboardUserRow.active,
)


def as_utc(value: datetime) -> datetime:
    """A stored time as an aware UTC datetime (SQLite returns naive ones)."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _client(row: Row[Any]) -> Client:
    values: tuple[Any, ...] = tuple(row)
    (client_id, name, status, method, jwks, jwks_url, scope, created, updated) = values[:9]
    lifetime, secret_hash, previous_hash, previous_expires = values[9:13]
    return Client(
        client_id,
        name,
        status,
        method,
        jwks,
        jwks_url,
        scope,
        Environment(*values[13:17]),
        as_utc(created),
        as_utc(updated),
        lifetime,
        secret_hash,
        previous_hash,
        previous_expires,
        values[17],
        values[18],
    )


def _environments() -> Any:
    """Environments with their organization, as :class:`Environment` rows."""
    return select(
        EnvironmentRow.id, EnvironmentRow.kind, OrganizationRow.id, OrganizationRow.slug
    ).join(OrganizationRow, OrganizationRow.id == EnvironmentRow.organization_id)


class OrganizationRepo:
    """Organizations and their three environments (development, staging, production)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._environments: dict[tuple[str, str], Environment] = {}

    async def create(self, slug: str, name: str) -> str:
        """Create an organization with its environments; returns its id."""
        if not _SLUG.fullmatch(slug):
            raise ValueError("slug must be 1-63 lowercase letters, digits or hyphens")
        org_id, created = str(uuid.uuid4()), now()
        try:
            async with self._engine.begin() as conn:
                await conn.execute(
                    insert(OrganizationRow).values(
                        id=org_id, slug=slug, name=name, created_at=created
                    )
                )
                await conn.execute(
                    insert(EnvironmentRow),
                    [
                        {
                            "id": str(uuid.uuid4()),
                            "organization_id": org_id,
                            "kind": kind.value,
                            "created_at": created,
                        }
                        for kind in EnvironmentKind
                    ],
                )
        except IntegrityError as exc:
            raise Conflict(f"an organization with slug {slug!r} already exists") from exc
        return org_id

    async def environment(self, slug: str, kind: str) -> Environment:
        """The environment ``kind`` of the organization ``slug``."""
        if kind not in {k.value for k in EnvironmentKind}:
            raise NotFound(f"unknown environment {kind!r} (development, staging or production)")
        stmt = _environments().where(OrganizationRow.slug == slug, EnvironmentRow.kind == kind)
        async with self._engine.connect() as conn:
            row = (await conn.execute(stmt)).first()
        if row is None:
            raise NotFound(f"no organization with slug {slug!r}")
        return Environment(*row)

    async def environment_of(self, organization_id: str, kind: str) -> Environment | None:
        """The environment ``kind`` of the organization with id ``organization_id``; cached
        for the life of the process once found (an environment never changes: it is created
        with its organization and goes only with it, its clients and data together)."""
        key = (organization_id, kind)
        known = self._environments.get(key)
        if known is not None:
            return known
        stmt = _environments().where(
            OrganizationRow.id == organization_id, EnvironmentRow.kind == kind
        )
        async with self._engine.connect() as conn:
            row = (await conn.execute(stmt)).first()
        if row is None:
            return None
        if len(self._environments) >= _MAX_CACHED_ENVIRONMENTS:
            self._environments.clear()
        environment = self._environments[key] = Environment(*row)
        return environment

    async def default_environment(self, kind: str = EnvironmentKind.DEVELOPMENT) -> Environment:
        """The default organization's environment, creating the organization on first use."""
        try:
            return await self.environment(DEFAULT_ORG_SLUG, kind)
        except NotFound:
            with contextlib.suppress(Conflict):  # created concurrently
                await self.create(DEFAULT_ORG_SLUG, "Default organization")
            return await self.environment(DEFAULT_ORG_SLUG, kind)


class ClientRepo:
    """Registered clients."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    @staticmethod
    def _select() -> Any:
        return (
            select(*_CLIENT_COLUMNS)
            .join(EnvironmentRow, EnvironmentRow.id == ClientRow.environment_id)
            .join(OrganizationRow, OrganizationRow.id == EnvironmentRow.organization_id)
            .outerjoin(DashboardUserRow, DashboardUserRow.id == ClientRow.owner_user_id)
        )

    async def create(
        self,
        *,
        environment: Environment,
        name: str,
        auth_method: str,
        scope: str,
        jwks: dict[str, Any] | None = None,
        jwks_url: str | None = None,
        secret_hash: str | None = None,
        token_lifetime: int | None = None,
        owner_user_id: str | None = None,
    ) -> Client:
        """A new active client; with ``owner_user_id``, a user-level API key of that person."""
        client_id, created = new_client_id(), now()
        async with self._engine.begin() as conn:
            await conn.execute(
                insert(ClientRow).values(
                    client_id=client_id,
                    environment_id=environment.id,
                    name=name,
                    status=ClientStatus.ACTIVE.value,
                    auth_method=auth_method,
                    jwks=jwks,
                    jwks_url=jwks_url,
                    scope=scope,
                    created_at=created,
                    updated_at=created,
                    secret_hash=secret_hash,
                    token_lifetime=token_lifetime,
                    owner_user_id=owner_user_id,
                )
            )
        return Client(
            client_id,
            name,
            ClientStatus.ACTIVE.value,
            auth_method,
            jwks,
            jwks_url,
            scope,
            environment,
            created,
            created,
            token_lifetime,
            secret_hash,
            owner_user_id=owner_user_id,
        )

    async def get(self, client_id: str) -> Client | None:
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(self._select().where(ClientRow.client_id == client_id))
            ).first()
        return None if row is None else _client(row)

    async def list(self, organization_slug: str | None = None) -> Sequence[Client]:
        stmt = self._select().order_by(ClientRow.created_at, ClientRow.client_id)
        if organization_slug is not None:
            stmt = stmt.where(OrganizationRow.slug == organization_slug)
        async with self._engine.connect() as conn:
            return [_client(row) for row in await conn.execute(stmt)]

    async def list_environment(self, environment_id: str) -> Sequence[Client]:
        """The API keys of one environment, oldest first; user-level keys are not among them."""
        stmt = (
            self._select()
            .where(ClientRow.environment_id == environment_id, ClientRow.owner_user_id.is_(None))
            .order_by(ClientRow.created_at, ClientRow.client_id)
        )
        async with self._engine.connect() as conn:
            return [_client(row) for row in await conn.execute(stmt)]

    async def list_owned(self, user_id: str) -> Sequence[Client]:
        """A dashboard user's own (user-level) API keys, oldest first."""
        stmt = (
            self._select()
            .where(ClientRow.owner_user_id == user_id)
            .order_by(ClientRow.created_at, ClientRow.client_id)
        )
        async with self._engine.connect() as conn:
            return [_client(row) for row in await conn.execute(stmt)]

    async def environment(self, environment_id: str) -> Environment | None:
        """The environment (with its organization) a client may be created in, by id."""
        stmt = _environments().where(EnvironmentRow.id == environment_id)
        async with self._engine.connect() as conn:
            row = (await conn.execute(stmt)).first()
        return None if row is None else Environment(*row)

    async def environments(self, organization_ids: Collection[str]) -> Sequence[Environment]:
        """Every environment of these organizations, by organization slug, then development,
        staging, production."""
        if not organization_ids:
            return []
        stmt = _environments().where(EnvironmentRow.organization_id.in_(list(organization_ids)))
        async with self._engine.connect() as conn:
            found = [Environment(*row) for row in await conn.execute(stmt)]
        order = {kind.value: index for index, kind in enumerate(EnvironmentKind)}
        return sorted(found, key=lambda env: (env.organization_slug, order.get(env.kind, 9)))

    async def update_keys(
        self,
        client_id: str,
        *,
        jwks: dict[str, Any] | None,
        jwks_url: str | None,
        name: str | None = None,
        expected_updated_at: datetime,
    ) -> bool:
        """Replace the client's JWK Set and JWKS URL (and its name, when given) if the row is
        unchanged since ``expected_updated_at`` (optimistic concurrency: two people adding a
        key at once must not lose one); ``False`` when it changed or is gone."""
        values: dict[str, Any] = {"jwks": jwks, "jwks_url": jwks_url, "updated_at": now()}
        if name is not None:
            values["name"] = name
        stmt = (
            update(ClientRow)
            .where(ClientRow.client_id == client_id, ClientRow.updated_at == expected_updated_at)
            .values(**values)
        )
        async with self._engine.begin() as conn:
            result = await conn.execute(stmt)
        return bool(result.rowcount)

    async def _update(self, conn: AsyncConnection, client_id: str, **values: Any) -> None:
        result = await conn.execute(
            update(ClientRow)
            .where(ClientRow.client_id == client_id)
            .values(updated_at=now(), **values)
        )
        if result.rowcount == 0:
            raise NotFound(f"no client {client_id!r}")

    async def rename(self, client_id: str, name: str) -> None:
        async with self._engine.begin() as conn:
            await self._update(conn, client_id, name=name)

    async def rotate_secret(self, client_id: str, secret_hash: str, grace: int) -> None:
        """Replace a secret client's secret. With ``grace`` > 0 seconds the old one keeps
        working until then; otherwise it dies now. One statement: concurrent rotations cannot
        interleave."""
        keep_old = grace > 0
        async with self._engine.begin() as conn:
            result = await conn.execute(
                update(ClientRow)
                .where(ClientRow.client_id == client_id, ClientRow.secret_hash.is_not(None))
                .values(
                    secret_hash=secret_hash,
                    previous_secret_hash=ClientRow.secret_hash if keep_old else None,
                    previous_secret_expires_at=int(time.time()) + grace if keep_old else None,
                    updated_at=now(),
                )
            )
        if result.rowcount == 0:
            raise NotFound(f"no client {client_id!r} with a secret")

    async def revoke(self, client_id: str) -> None:
        async with self._engine.begin() as conn:
            await self._update(conn, client_id, status=ClientStatus.REVOKED.value)

    async def delete(self, client_id: str) -> None:
        async with self._engine.begin() as conn:
            result = await conn.execute(delete(ClientRow).where(ClientRow.client_id == client_id))
            if result.rowcount == 0:
                raise NotFound(f"no client {client_id!r}")
