"""The FHIR resource store: current versions, history and partitions, in the main database.

Reads and searches are single statements of SQL text (:mod:`fhirgate.storage.direct`) whose
values are all bound parameters (table and column names are constants of this module and of
:mod:`fhirgate.fhir.search`); writes go through SQLAlchemy in one transaction each.

Every read and write is confined to a :class:`Partition` in the SQL itself, so a resource
outside it is indistinguishable from one that does not exist:

* a system partition (backend services, secret and legacy clients) is a whole environment;
* an application partition (1upHealth's ``x-oneup-user-id: client``) is the data of every user
  of one application in that environment;
* a user partition is one user's data, plus the resources other users of the same application
  shared with it (``fhir_permissions``) — shared ones for reading only.

Each write bumps ``meta.versionId`` and sets ``meta.lastUpdated`` (FHIR R4 §3.1.0.4, "version
history"), keeps the previous version in ``fhir_resource_versions``, and checks ``If-Match``
against the current version inside the same transaction.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Any

from sqlalchemy import and_, delete, exists, false, insert, or_, select, true, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from fhirgate.domain.instants import as_datetime
from fhirgate.fhir.errors import Forbidden, NotFound, PreconditionFailed
from fhirgate.fhir.indexing import index
from fhirgate.fhir.search import Binder, SearchRequest
from fhirgate.storage.direct import Statements, as_json
from fhirgate.storage.models import (
    FhirDateIndexRow,
    FhirPermissionRow,
    FhirReferenceIndexRow,
    FhirResourceRow,
    FhirStringIndexRow,
    FhirTokenIndexRow,
    FhirVersionRow,
)

__all__ = ["MAX_INCLUDED", "Partition", "Reach", "ResourceStore", "StoredResource"]

#: The most resources one ``_include`` or ``_revinclude`` adds to a page.
MAX_INCLUDED = 1000


class Reach(Enum):
    """How far a partition reaches in its environment: the one statement of the sharing rule,
    which :meth:`Partition.visible` and :meth:`Partition.visible_sql` render for SQLAlchemy and
    for the direct statements."""

    #: A system principal: every resource of the environment, read and written.
    ENVIRONMENT = "environment"
    #: An application over all its users (``x-oneup-user-id: client``): its resources, read
    #: only.
    APPLICATION = "application"
    #: An application acting for one user: that user's resources, read and written, and the
    #: application's resources shared with the user, read only.
    USER = "user"


@dataclass(frozen=True, slots=True)
class Partition:
    """Whose data a request may reach in one environment."""

    environment_id: str
    application_id: str | None = None  # None: the whole environment (a system principal)
    user_id: int | None = None  # with an application: one user; None: all its users

    @property
    def reach(self) -> Reach:
        if self.application_id is None:
            return Reach.ENVIRONMENT
        return Reach.APPLICATION if self.user_id is None else Reach.USER

    def visible(self, *, for_writing: bool = False) -> Any:
        """The SQL condition that keeps a resource row inside this partition (:class:`Reach`)."""
        row = FhirResourceRow
        reach = self.reach
        if reach is Reach.ENVIRONMENT:
            return true()
        mine = row.application_id == self.application_id
        if reach is Reach.APPLICATION:
            return false() if for_writing else mine
        owned = and_(mine, row.owner_user_id == self.user_id)
        if for_writing:
            return owned
        shared = exists().where(
            FhirPermissionRow.row_id == row.row_id,
            FhirPermissionRow.oneup_user_id == self.user_id,
        )
        return or_(owned, and_(mine, shared))

    def visible_sql(self) -> tuple[str, dict[str, Any]]:
        """:meth:`visible` (for reading) as SQL text over ``fhir_resources`` and its
        parameters, for the single statements of :mod:`fhirgate.storage.direct`."""
        reach = self.reach
        if reach is Reach.ENVIRONMENT:
            return "", {}
        mine = " AND fhir_resources.application_id = :application_id"
        if reach is Reach.APPLICATION:
            return mine, {"application_id": self.application_id}
        owned_or_shared = (
            " AND (fhir_resources.owner_user_id = :user_id OR EXISTS (SELECT 1"
            " FROM fhir_permissions p"
            " WHERE p.row_id = fhir_resources.row_id AND p.oneup_user_id = :user_id))"
        )
        params = {"application_id": self.application_id, "user_id": self.user_id}
        return mine + owned_or_shared, params


@dataclass(frozen=True, slots=True)
class StoredResource:
    row_id: int
    resource_type: str
    resource_id: str
    version_id: int
    last_updated: datetime
    deleted: bool
    content: dict[str, Any] | None


def fhir_instant(value: datetime) -> str:
    """An ``instant`` (FHIR R4 §2.24.0.1): UTC, milliseconds, ``Z``."""
    return as_datetime(value).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _with_meta(
    content: dict[str, Any], resource_id: str, version: int, at: datetime
) -> dict[str, Any]:
    meta = dict(content.get("meta") or {})
    meta["versionId"] = str(version)
    meta["lastUpdated"] = fhir_instant(at)
    return {**content, "id": resource_id, "meta": meta}


_CURRENT = (
    FhirResourceRow.row_id,
    FhirResourceRow.resource_type,
    FhirResourceRow.resource_id,
    FhirResourceRow.version_id,
    FhirResourceRow.last_updated,
    FhirResourceRow.deleted,
    FhirResourceRow.content,
)


_COLUMNS = (
    "SELECT fhir_resources.row_id, fhir_resources.resource_type, fhir_resources.resource_id,"
    " fhir_resources.version_id, fhir_resources.last_updated, fhir_resources.deleted,"
    " fhir_resources.content FROM fhir_resources WHERE"
)
_IN_VERSION = (
    " fhir_resources.environment_id = :environment_id"
    " AND fhir_resources.fhir_version = :fhir_version"
)
_KEY = (
    f"{_IN_VERSION} AND fhir_resources.resource_type = :resource_type"
    " AND fhir_resources.resource_id = :resource_id"
)
_READ = _COLUMNS + _KEY


def _resource(
    row_id: int,
    resource_type: str,
    resource_id: str,
    version_id: int,
    last_updated: datetime | str,
    deleted: bool,
    content: dict[str, Any] | str | None,
) -> StoredResource:
    return StoredResource(
        int(row_id),
        resource_type,
        resource_id,
        int(version_id),
        as_datetime(last_updated),
        bool(deleted),
        None if deleted else as_json(content),
    )


_INDEX_TABLES = (FhirStringIndexRow, FhirTokenIndexRow, FhirReferenceIndexRow, FhirDateIndexRow)


async def _reindex(
    conn: AsyncConnection, row_id: int, resource_type: str, content: dict[str, Any] | None
) -> None:
    """Replace the search values of a resource (none once it is deleted), in the write's own
    transaction: a search never sees a version its index does not describe."""
    for table in _INDEX_TABLES:
        await conn.execute(delete(table).where(table.row_id == row_id))
    if content is not None:
        await _index(conn, row_id, resource_type, content)


async def _index(
    conn: AsyncConnection, row_id: int, resource_type: str, content: dict[str, Any]
) -> None:
    """Store the search values of a new resource (a new row has none to replace: four
    statements fewer per create, inside the write lock on SQLite)."""
    entries = index(resource_type, content)
    batches: list[tuple[Any, list[dict[str, Any]]]] = [
        (FhirStringIndexRow, [
            {"row_id": row_id, "name": n, "normalized": v, "exact": e}
            for n, v, e in entries.strings
        ]),
        (FhirTokenIndexRow, [
            {"row_id": row_id, "name": n, "system": s, "code": c} for n, s, c in entries.tokens
        ]),
        (FhirReferenceIndexRow, [
            {"row_id": row_id, "name": n, "target_type": t, "target_id": i}
            for n, t, i in entries.references
        ]),
        (FhirDateIndexRow, [
            {"row_id": row_id, "name": n, "low": lo, "high": hi} for n, lo, hi in entries.dates
        ]),
    ]  # fmt: skip
    for table, rows in batches:
        if rows:
            await conn.execute(insert(table), rows)


class ResourceStore:
    """Resources of one FHIR version (``R4``, ``STU3``, ``DSTU2``)."""

    def __init__(self, engine: AsyncEngine, fhir_version: str, statements: Statements) -> None:
        self._engine = engine
        self.fhir_version = fhir_version
        self._statements = statements

    @contextlib.asynccontextmanager
    async def _using(
        self, conn: AsyncConnection | None, *, write: bool
    ) -> AsyncIterator[AsyncConnection]:
        """The caller's connection (a transaction Bundle's), or a new one: a transaction to
        write in, a plain connection to read with."""
        if conn is not None:
            yield conn
        elif write:
            async with self._engine.begin() as own:
                yield own
        else:
            async with self._engine.connect() as own:
                yield own

    def _seen_by(self, partition: Partition) -> tuple[str, dict[str, Any]]:
        """What the partition may see of this version (deleted resources included), as SQL
        text to follow a key or :data:`_IN_VERSION`, and its parameters."""
        visible, params = partition.visible_sql()
        params.update(environment_id=partition.environment_id, fhir_version=self.fhir_version)
        return visible, params

    def _live(self, partition: Partition, bind: Binder) -> str:
        """The live resources of this version the partition may see: SQL text (after
        ``WHERE``), its parameters bound in ``bind``."""
        visible, params = self._seen_by(partition)
        bind.params.update(params)
        return f"{_IN_VERSION} AND NOT fhir_resources.deleted{visible}"

    def _key(self, partition: Partition, resource_type: str, resource_id: str) -> Any:
        row = FhirResourceRow
        return and_(
            row.environment_id == partition.environment_id,
            row.fhir_version == self.fhir_version,
            row.resource_type == resource_type,
            row.resource_id == resource_id,
        )

    async def read(
        self,
        partition: Partition,
        resource_type: str,
        resource_id: str,
        *,
        conn: AsyncConnection | None = None,
    ) -> StoredResource | None:
        """The current version (possibly a deletion) if the partition may see it: one
        statement (:mod:`fhirgate.storage.direct`), the hottest path of the API."""
        visible, params = self._seen_by(partition)
        params.update(resource_type=resource_type, resource_id=resource_id)
        row = await self._statements.fetchrow(_READ + visible, params, conn)
        return None if row is None else _resource(*row)

    async def matches(
        self,
        partition: Partition,
        resource_type: str,
        resource_id: str,
        condition: str,
        bind: Binder,
    ) -> bool:
        """Whether the resource, in the partition, meets ``condition`` (search SQL whose
        parameters are in ``bind``)."""
        visible, params = self._seen_by(partition)
        params.update(bind.params, resource_type=resource_type, resource_id=resource_id)
        sql = f"SELECT fhir_resources.row_id FROM fhir_resources WHERE{_KEY}{visible}"  # noqa: S608
        return await self._statements.fetchrow(f"{sql} AND {condition}", params) is not None

    async def owns(
        self,
        partition: Partition,
        resource_type: str,
        resource_id: str,
        *,
        conn: AsyncConnection | None = None,
    ) -> bool:
        """Whether the resource exists, is not deleted, and the partition may write it."""
        stmt = select(FhirResourceRow.row_id).where(
            self._key(partition, resource_type, resource_id),
            partition.visible(for_writing=True),
            FhirResourceRow.deleted.is_(False),
        )
        async with self._using(conn, write=False) as conn:
            return (await conn.execute(stmt)).first() is not None

    async def history(
        self, partition: Partition, resource_type: str, resource_id: str
    ) -> list[StoredResource]:
        """Every version, newest first ([] when the partition may not see the resource)."""
        version = FhirVersionRow
        stmt = (
            select(
                version.row_id,
                version.version_id,
                version.last_updated,
                version.deleted,
                version.content,
            )
            .join(FhirResourceRow, FhirResourceRow.row_id == version.row_id)
            .where(self._key(partition, resource_type, resource_id), partition.visible())
            .order_by(version.version_id.desc())
        )
        async with self._engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        return [
            _resource(row_id, resource_type, resource_id, version, at, deleted, content)
            for row_id, version, at, deleted, content in rows
        ]

    async def create(
        self,
        partition: Partition,
        resource_type: str,
        content: dict[str, Any],
        *,
        conn: AsyncConnection | None = None,
        resource_id: str | None = None,
    ) -> StoredResource:
        """A new resource with a server-assigned id (FHIR R4 §3.1.0.7: the body's id is
        ignored; a transaction assigns it ahead, to resolve ``urn:uuid`` references), owned
        by the partition's user."""
        resource_id = resource_id or str(uuid.uuid4())
        async with self._using(conn, write=True) as conn:
            return await self._insert(conn, partition, resource_type, resource_id, content)

    async def _insert(
        self,
        conn: AsyncConnection,
        partition: Partition,
        resource_type: str,
        resource_id: str,
        content: dict[str, Any],
    ) -> StoredResource:
        if partition.application_id is not None and partition.user_id is None:
            raise Forbidden("acting for all users of an application allows reading only")
        now = datetime.now(UTC)
        body = _with_meta(content, resource_id, 1, now)
        row_id = (
            await conn.execute(
                insert(FhirResourceRow)
                .values(
                    environment_id=partition.environment_id,
                    fhir_version=self.fhir_version,
                    resource_type=resource_type,
                    resource_id=resource_id,
                    version_id=1,
                    last_updated=now,
                    deleted=False,
                    application_id=partition.application_id,
                    owner_user_id=partition.user_id,
                    content=body,
                )
                .returning(FhirResourceRow.row_id)
            )
        ).scalar_one()
        await self._add_version(conn, int(row_id), 1, now, "create", body)
        await _index(conn, int(row_id), resource_type, body)
        return StoredResource(int(row_id), resource_type, resource_id, 1, now, False, body)

    @staticmethod
    async def _add_version(
        conn: AsyncConnection,
        row_id: int,
        version: int,
        at: datetime,
        method: str,
        content: dict[str, Any] | None,
    ) -> None:
        await conn.execute(
            insert(FhirVersionRow).values(
                row_id=row_id,
                version_id=version,
                last_updated=at,
                method=method,
                deleted=content is None,
                content=content,
            )
        )

    async def _current_for_writing(
        self, conn: AsyncConnection, partition: Partition, resource_type: str, resource_id: str
    ) -> tuple[int, int, bool, bool, bool] | None:
        """(row_id, version, deleted, visible, writable) of the resource, locked until the
        transaction ends; ``None`` when there is no such resource at all."""
        stmt = (
            select(
                FhirResourceRow.row_id,
                FhirResourceRow.version_id,
                FhirResourceRow.deleted,
                partition.visible(),
                partition.visible(for_writing=True),
            )
            .where(self._key(partition, resource_type, resource_id))
            .with_for_update()
        )
        row = (await conn.execute(stmt)).first()
        if row is None:
            return None
        row_id, version, deleted, visible, writable = row
        return int(row_id), int(version), bool(deleted), bool(visible), bool(writable)

    async def update(
        self,
        partition: Partition,
        resource_type: str,
        resource_id: str,
        content: dict[str, Any],
        if_match: int | None = None,
        *,
        conn: AsyncConnection | None = None,
    ) -> tuple[StoredResource, bool]:
        """Update, or create with the client's id (update-as-create, FHIR R4 §3.1.0.4.3) —
        for system principals only; ``(resource, created)``."""
        async with self._using(conn, write=True) as conn:
            current = await self._current_for_writing(conn, partition, resource_type, resource_id)
            if current is None or not current[3]:  # no such resource, or one it cannot see
                if partition.application_id is not None:
                    # an application's users never choose ids: were they allowed to, creating
                    # or not would tell another user's ids from free ones
                    raise NotFound(f"{resource_type}/{resource_id} is not known")
                if if_match is not None:
                    raise PreconditionFailed(f"{resource_type}/{resource_id} does not exist")
                stored = await self._insert(conn, partition, resource_type, resource_id, content)
                return stored, True
            row_id, version, _, _, writable = current
            if not writable:  # seen but not its own: shared with it, or the application's
                raise Forbidden(f"{resource_type}/{resource_id} may not be written by this token")
            if if_match is not None and if_match != version:
                raise PreconditionFailed(
                    f"If-Match version {if_match} is not the current version {version}"
                )
            now, new_version = datetime.now(UTC), version + 1
            body = _with_meta(content, resource_id, new_version, now)
            await self._write(conn, row_id, new_version, now, "update", body)
            await _reindex(conn, row_id, resource_type, body)
        return StoredResource(
            row_id, resource_type, resource_id, new_version, now, False, body
        ), False

    async def _write(
        self,
        conn: AsyncConnection,
        row_id: int,
        version: int,
        at: datetime,
        method: str,
        content: dict[str, Any] | None,
    ) -> None:
        values: dict[str, Any] = {"version_id": version, "last_updated": at}
        values["deleted"] = content is None
        if content is not None:
            values["content"] = content
        await conn.execute(
            update(FhirResourceRow).where(FhirResourceRow.row_id == row_id).values(**values)
        )
        await self._add_version(conn, row_id, version, at, method, content)

    async def delete(
        self,
        partition: Partition,
        resource_type: str,
        resource_id: str,
        *,
        conn: AsyncConnection | None = None,
    ) -> bool:
        """Delete (a new version marked deleted; history stays); ``False`` when there is no
        live resource the partition can see."""
        async with self._using(conn, write=True) as conn:
            current = await self._current_for_writing(conn, partition, resource_type, resource_id)
            if current is None or not current[3] or current[2]:  # unknown, unseen or deleted
                return False
            row_id, version, _, _, writable = current
            if not writable:
                raise Forbidden(f"{resource_type}/{resource_id} may not be deleted by this token")
            await self._write(conn, row_id, version + 1, datetime.now(UTC), "delete", None)
            await _reindex(conn, row_id, resource_type, None)  # a deleted resource is not found
        return True

    async def share(
        self,
        partition: Partition,
        resource_type: str,
        resource_id: str,
        user_id: int,
        *,
        conn: AsyncConnection | None = None,
    ) -> str:
        """Let ``user_id`` (a user of the same application) read a resource the partition's
        user owns: ``"shared"`` (sharing twice is harmless), ``"owner"`` when ``user_id`` is
        the owner, ``"unknown"`` when the partition owns no such live resource."""
        async with self._using(conn, write=True) as conn:
            current = await self._current_for_writing(conn, partition, resource_type, resource_id)
            if current is None or not current[4] or current[2]:  # not owned here, or deleted
                return "unknown"
            if user_id == partition.user_id:
                return "owner"
            known = await conn.execute(
                select(FhirPermissionRow.row_id).where(
                    FhirPermissionRow.row_id == current[0],
                    FhirPermissionRow.oneup_user_id == user_id,
                )
            )
            if known.first() is None:
                await conn.execute(
                    insert(FhirPermissionRow).values(row_id=current[0], oneup_user_id=user_id)
                )
        return "shared"

    async def search(
        self,
        partition: Partition,
        resource_type: str,
        request: SearchRequest,
        *,
        conn: AsyncConnection | None = None,
    ) -> tuple[list[StoredResource], bool, int | None]:
        """One page of the live resources of ``resource_type`` in the partition matching the
        request: ``(page, more_after_it, total or None)``. One statement for the page, one
        for the total."""
        bind = request.bind
        live = self._live(partition, bind)
        where = " AND ".join(
            [live, "fhir_resources.resource_type = :resource_type", *request.conditions]
        )
        bind.params.update(resource_type=resource_type)
        rows: list[Any] = []
        if request.count:
            page = (
                f"{_COLUMNS} {where} ORDER BY {', '.join(request.order)}"
                f" LIMIT {bind(request.count + 1)} OFFSET {bind(request.offset)}"
            )
            rows = await self._statements.fetch(page, bind.params, conn)
        total = None
        if request.total:
            counted = f"SELECT count(*) FROM fhir_resources WHERE {where}"  # noqa: S608
            found = await self._statements.fetchrow(counted, bind.params, conn)
            total = int(found[0]) if found is not None else 0
        matches = [_resource(*item) for item in rows[: request.count]]
        return matches, len(rows) > request.count, total

    async def included(
        self,
        partition: Partition,
        matches: list[StoredResource],
        request: SearchRequest,
        *,
        conn: AsyncConnection | None = None,
    ) -> list[StoredResource]:
        """The resources ``_include`` and ``_revinclude`` add to a page of ``matches`` — only
        those the partition may see, none twice, none already a match (FHIR R4 §3.1.1.5.4)."""
        if not matches or not (request.includes or request.revincludes):
            return []
        found: dict[int, StoredResource] = {}
        for _source, param, target in request.includes:
            bind = Binder()
            rows = ", ".join(bind(match.row_id) for match in matches)
            pointed = f"row_id IN ({rows}) AND name = {bind(param)}"
            if target is not None:
                pointed += f" AND target_type = {bind(target)}"
            sql = (
                f"{_COLUMNS} {self._live(partition, bind)} AND"  # noqa: S608
                " (fhir_resources.resource_type, fhir_resources.resource_id) IN"
                f" (SELECT target_type, target_id FROM fhir_index_references WHERE {pointed})"
                f" LIMIT {MAX_INCLUDED}"
            )
            for item in await self._statements.fetch(sql, bind.params, conn):
                found.setdefault(int(item[0]), _resource(*item))
        for source, param, target in request.revincludes:
            ids = [match.resource_id for match in matches if match.resource_type == target]
            if not ids:
                continue
            bind = Binder()
            pointing = (
                f"name = {bind(param)} AND target_type = {bind(target)}"
                f" AND target_id IN ({', '.join(bind(item) for item in ids)})"
            )
            sql = (
                f"{_COLUMNS} {self._live(partition, bind)}"  # noqa: S608
                f" AND fhir_resources.resource_type = {bind(source)}"
                " AND fhir_resources.row_id IN"
                f" (SELECT row_id FROM fhir_index_references WHERE {pointing})"
                f" LIMIT {MAX_INCLUDED}"
            )
            for item in await self._statements.fetch(sql, bind.params, conn):
                found.setdefault(int(item[0]), _resource(*item))
        already = {match.row_id for match in matches}
        return [resource for row_id, resource in found.items() if row_id not in already]

    async def compartment(
        self, partition: Partition, patient_id: str, offset: int, count: int
    ) -> tuple[list[StoredResource], bool]:
        """One page of the live resources the partition may see that reference
        ``Patient/{patient_id}`` (its compartment, for ``$everything``): ``(page, more)``."""
        bind = Binder()
        pointing = f"target_type = 'Patient' AND target_id = {bind(patient_id)}"
        sql = (
            f"{_COLUMNS} {self._live(partition, bind)} AND fhir_resources.row_id IN"  # noqa: S608
            f" (SELECT row_id FROM fhir_index_references WHERE {pointing})"
            f" ORDER BY fhir_resources.row_id LIMIT {bind(count + 1)} OFFSET {bind(offset)}"
        )
        rows = await self._statements.fetch(sql, bind.params)
        return [_resource(*item) for item in rows[:count]], len(rows) > count
