"""The FHIR interactions independent of HTTP: each checks the type and id, the token's scope,
the resource (shape and validation) and a user's references, then asks the store — for a
REST request and for an entry of a batch or transaction Bundle alike."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlencode

from sqlalchemy.ext.asyncio import AsyncConnection

from fhirgate.fhir.access import Access, InsufficientScope, Restriction
from fhirgate.fhir.errors import Gone, Invalid, NotFound
from fhirgate.fhir.search import (
    Binder,
    SearchRequest,
    limit_repeats,
    parse_search,
    restricted_to,
)
from fhirgate.fhir.store import ResourceStore, StoredResource
from fhirgate.fhir.validation import validate
from fhirgate.fhir.versions import R4, FhirVersion

__all__ = ["MAX_DEPTH", "Interactions", "checked", "checked_content", "depth", "may_read"]

_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")  # FHIR R4 §2.24.0.1 id
#: Deeper than any real resource (nested extensions included), shallow enough for every walk.
MAX_DEPTH = 64


def checked(resource_type: str, resource_id: str | None = None, version: FhirVersion = R4) -> None:
    """A resource type of ``version`` (else 404) and a well-formed id (else 400)."""
    if resource_type not in version.resource_types:
        raise NotFound(f"unknown resource type {resource_type[:64]!r}")
    if resource_id is not None and not _ID.fullmatch(resource_id):
        raise Invalid("a resource id is 1-64 letters, digits, '-' or '.'")


def depth(content: Any) -> int:
    """How deeply JSON nests, measured without recursion (the validators and the reference
    walk recurse: a body the JSON parser accepts must not exhaust their stack)."""
    deepest, stack = 0, [(content, 1)]
    while stack:
        value, level = stack.pop()
        deepest = max(deepest, level)
        if level > MAX_DEPTH:
            break
        children = value.values() if isinstance(value, dict) else value
        if isinstance(value, dict | list):
            stack.extend((child, level + 1) for child in children)
    return deepest


def checked_content(resource_type: str, content: Any, version: FhirVersion = R4) -> dict[str, Any]:
    """A resource of ``resource_type`` that passes validation (FHIR R4 §3.1.0.1.5)."""
    if not isinstance(content, dict):
        raise Invalid("the resource is not a JSON object")
    if depth(content) > MAX_DEPTH:
        raise Invalid(f"the resource nests deeper than {MAX_DEPTH} levels")
    if content.get("resourceType") != resource_type:
        raise Invalid(f"the resource's resourceType must be {resource_type}")
    validate(resource_type, content, version.models)
    return content


def may_read(access: Access, resource_type: str) -> bool:
    """Included resources appear only where the token may read their type outright."""
    try:
        access.require(resource_type, "read")
    except InsufficientScope:
        return False
    return True


class Interactions:
    """read, create, update and delete, authorized and validated."""

    def __init__(
        self, store: ResourceStore, version: FhirVersion = R4, max_repeats: int = 10
    ) -> None:
        self.store = store
        self.version = version
        self.max_repeats = max_repeats

    async def read(
        self,
        access: Access,
        resource_type: str,
        resource_id: str,
        conn: AsyncConnection | None = None,
    ) -> StoredResource:
        """FHIR R4 §3.1.0.2: 404 when unknown or not visible, 410 when deleted."""
        checked(resource_type, resource_id, self.version)
        restrictions = access.grants(resource_type, "read")
        stored = await self.store.read(access.partition, resource_type, resource_id, conn=conn)
        if stored is not None and restrictions is not None:
            await self.require_match(access, resource_type, resource_id, restrictions)
        if stored is None:
            raise NotFound(f"{resource_type}/{resource_id} is not known")
        if stored.content is None:
            raise Gone(f"{resource_type}/{resource_id} was deleted")
        return stored

    async def search(
        self,
        access: Access,
        resource_type: str,
        pairs: Sequence[tuple[str, str]],
        base: str,
        *,
        lenient: bool = False,
        conn: AsyncConnection | None = None,
    ) -> dict[str, Any]:
        """Type search (FHIR R4 §3.1.1): a ``searchset`` Bundle of one page — the matches, the
        included resources the token may read, the total and the paging links (which repeat
        the parameters used, under ``base``)."""
        wanted = self.search_request(access, resource_type, pairs, lenient)
        subset = wanted.subset
        found, more, total = await self.store.search(
            access.partition, resource_type, wanted, conn=conn
        )
        extra = await self.store.included(access.partition, found, wanted, conn=conn)

        def page(offset: int) -> dict[str, str]:
            query = [*wanted.used, *wanted.controls, ("_count", str(wanted.count))]
            query.append(("_offset", str(offset)))
            return {"url": f"{base}/{resource_type}?{urlencode(query)}"}

        links = [{"relation": "self", **page(wanted.offset)}]
        if more:
            links.append({"relation": "next", **page(wanted.offset + wanted.count)})
        if wanted.offset > 0:
            links.append({"relation": "previous", **page(max(0, wanted.offset - wanted.count))})
        bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
        if total is not None:
            bundle["total"] = total
        bundle["link"] = links
        if subset.count_only:
            return bundle
        bundle["entry"] = [
            {
                "fullUrl": f"{base}/{stored.resource_type}/{stored.resource_id}",
                "resource": subset.apply(stored.content, elements=mode == "match"),
                "search": {"mode": mode},
            }
            for stored, mode in [
                *((item, "match") for item in found),
                *((item, "include") for item in extra if may_read(access, item.resource_type)),
            ]
            if stored.content is not None
        ]
        return bundle

    def search_request(
        self,
        access: Access,
        resource_type: str,
        pairs: Sequence[tuple[str, str]],
        lenient: bool = False,
    ) -> SearchRequest:
        """What a search asks for, checked without the database: the type, the token's scope,
        the parameters and how often ``_include``, ``_revinclude`` and ``_sort`` repeat."""
        checked(resource_type, None, self.version)
        restrictions = access.grants(resource_type, "search")
        limit_repeats(pairs, self.max_repeats)
        wanted = parse_search(resource_type, pairs, lenient)
        wanted.subset.check_version(self.version is R4)
        if wanted.subset.count_only:  # _summary=count: the total, no entries (R4 §3.1.1.5.8)
            wanted.count, wanted.total = 0, True
        if restrictions is not None:  # granular scopes: only what they allow is searched
            wanted.conditions.append(restricted_to(resource_type, restrictions, wanted.bind))
        return wanted

    async def require_match(
        self,
        access: Access,
        resource_type: str,
        resource_id: str,
        restrictions: list[Restriction],
    ) -> None:
        """A resource the token reads only through restricted scopes must match one of them;
        one that does not is answered like a missing one (404)."""
        bind = Binder()
        condition = restricted_to(resource_type, restrictions, bind)
        partition = access.partition
        if not await self.store.matches(partition, resource_type, resource_id, condition, bind):
            raise NotFound(f"{resource_type}/{resource_id} is not known")

    async def create(
        self,
        access: Access,
        resource_type: str,
        content: Any,
        conn: AsyncConnection | None = None,
        resource_id: str | None = None,
    ) -> StoredResource:
        """FHIR R4 §3.1.0.7: the server assigns the id."""
        checked(resource_type, version=self.version)
        access.require(resource_type, "create")
        resource = checked_content(resource_type, content, self.version)
        await access.check_references(self.store, resource, conn)
        return await self.store.create(
            access.partition, resource_type, resource, conn=conn, resource_id=resource_id
        )

    async def update(
        self,
        access: Access,
        resource_type: str,
        resource_id: str,
        content: Any,
        if_match: int | None = None,
        conn: AsyncConnection | None = None,
    ) -> tuple[StoredResource, bool]:
        """FHIR R4 §3.1.0.4: update, or update-as-create; ``(resource, created)``."""
        checked(resource_type, resource_id, self.version)
        access.require(resource_type, "update")
        resource = checked_content(resource_type, content, self.version)
        if resource.get("id") != resource_id:
            raise Invalid("the resource's id must equal the id in the URL")
        await access.check_references(self.store, resource, conn)
        return await self.store.update(
            access.partition, resource_type, resource_id, resource, if_match, conn=conn
        )

    async def delete(
        self,
        access: Access,
        resource_type: str,
        resource_id: str,
        conn: AsyncConnection | None = None,
    ) -> None:
        """FHIR R4 §3.1.0.6: 404 when unknown or not visible."""
        checked(resource_type, resource_id, self.version)
        access.require(resource_type, "delete")
        if not await self.store.delete(access.partition, resource_type, resource_id, conn=conn):
            raise NotFound(f"{resource_type}/{resource_id} is not known")
