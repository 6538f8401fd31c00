"""batch and transaction Bundles posted to a FHIR base (FHIR R4 §3.1.0.11).

Each entry is one interaction — ``POST Type`` (create), ``PUT Type/id`` (update),
``DELETE Type/id``, ``GET Type/id`` (read), ``GET Type?params`` (search: a ``searchset``
Bundle as the entry's resource) — authorized and validated exactly like its REST request
(:class:`~fhirgate.fhir.interactions.Interactions`). Conditional create, update and delete
(a query on a write) are refused.

* batch: entries run one by one, each in its own transaction; each gets its own status, a
  failure an OperationOutcome (``batch-response``).
* transaction: all entries in one database transaction, in the order the specification fixes
  (DELETE, POST, PUT, GET; §3.1.0.11.2); ``urn:uuid`` full URLs of created resources are
  replaced by their new ``Type/id`` in every reference. One failing entry — a validation error,
  a forbidden reference, a missing scope — fails the whole transaction and nothing is committed.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from fhirgate.fhir.access import Access
from fhirgate.fhir.errors import FhirError, Invalid
from fhirgate.fhir.interactions import MAX_DEPTH, Interactions, depth
from fhirgate.fhir.store import StoredResource, fhir_instant

__all__ = ["MAX_ENTRIES", "BundleProcessor", "ParsedBundle"]

MAX_ENTRIES = 1000
_ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "GET": 3}


@dataclass(frozen=True, slots=True)
class _Entry:
    index: int
    method: str
    resource_type: str
    resource_id: str | None
    resource: Any
    full_url: str | None
    if_match: int | None
    #: A search's parameters (``GET Type?…``); ``None`` for every other interaction.
    query: list[tuple[str, str]] | None = None


@dataclass(frozen=True, slots=True)
class ParsedBundle:
    """A batch or transaction whose entries are well formed (not yet authorized or run)."""

    kind: str
    entries: list[_Entry]

    @property
    def targets(self) -> list[str]:
        """``Type/id`` of every resource an entry names (read, update, delete), in order: what
        the request tried to touch, for its audit row whatever each entry's outcome."""
        named = (f"{e.resource_type}/{e.resource_id}" for e in self.entries if e.resource_id)
        return list(dict.fromkeys(named))


def _if_match(value: Any) -> int | None:
    if value is None:
        return None
    text = str(value).strip()
    number = text.removeprefix("W/").strip('"')
    if not number.isdigit() or len(number) > 9:
        raise Invalid('ifMatch must be a version ETag like W/"3"')
    return int(number)


def _entry(index: int, raw: Any) -> _Entry:
    if not isinstance(raw, dict) or not isinstance(raw.get("request"), dict):
        raise Invalid(f"entry {index} has no request")
    request = raw["request"]
    method, url = request.get("method"), request.get("url")
    if method not in _ORDER or not isinstance(url, str) or not url:
        raise Invalid(f"entry {index}: request.method must be GET, POST, PUT or DELETE with a url")
    path, searching, query = url.partition("?")
    parts = path.strip("/").split("/")
    if searching or (method == "GET" and len(parts) == 1):  # GET Type[?…]: a search
        if method != "GET" or len(parts) != 1:
            raise Invalid(f"entry {index}: conditional requests are not supported")
        try:
            pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=False)
        except ValueError as exc:
            raise Invalid(f"entry {index}: the search is not a valid query") from exc
        return _Entry(index, method, parts[0], None, None, None, None, pairs)
    if len(parts) > 2 or (method == "POST") != (len(parts) == 1):
        raise Invalid(f"entry {index}: {method} takes {'Type' if method == 'POST' else 'Type/id'}")
    full_url = raw.get("fullUrl")
    return _Entry(
        index,
        method,
        parts[0],
        parts[1] if len(parts) == 2 else None,
        raw.get("resource"),
        full_url if isinstance(full_url, str) else None,
        _if_match(request.get("ifMatch")),
    )


def _rewrite(resource: Any, ids: dict[str, str]) -> None:
    """Replace ``urn:uuid`` references by the created resources' ``Type/id`` (no recursion:
    the resource has not been through the depth check yet)."""
    stack = [resource]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            reference = value.get("reference")
            if isinstance(reference, str) and reference in ids:
                value["reference"] = ids[reference]
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)


class BundleProcessor:
    """Runs batch and transaction Bundles through the interactions."""

    def __init__(self, interactions: Interactions, engine: AsyncEngine) -> None:
        self._interactions = interactions
        self._engine = engine

    async def process(self, access: Access, bundle: ParsedBundle, base: str) -> dict[str, Any]:
        """The ``batch-response`` or ``transaction-response`` of ``bundle``."""
        if bundle.kind == "batch":
            responses = [await self._batch_entry(access, entry, base) for entry in bundle.entries]
        else:
            responses = await self._transaction(access, bundle.entries, base)
        return {"resourceType": "Bundle", "type": f"{bundle.kind}-response", "entry": responses}

    @staticmethod
    def parse(bundle: Any) -> ParsedBundle:
        """Check the Bundle's shape and each entry's request; ``Invalid`` names the first
        problem."""
        if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
            raise Invalid("POST to the base takes a Bundle")
        kind = bundle.get("type")
        if kind not in ("batch", "transaction"):
            raise Invalid("the Bundle's type must be batch or transaction")
        raw = bundle.get("entry", [])
        if not isinstance(raw, list) or len(raw) > MAX_ENTRIES:
            raise Invalid(f"a Bundle has at most {MAX_ENTRIES} entries")
        if depth(bundle) > MAX_DEPTH + 4:
            raise Invalid("the Bundle nests too deeply")
        return ParsedBundle(kind, [_entry(index, item) for index, item in enumerate(raw)])

    async def _batch_entry(self, access: Access, entry: _Entry, base: str) -> dict[str, Any]:
        try:
            return await self._run(access, entry, base, None)
        except FhirError as error:
            status = f"{error.status_code} {HTTPStatus(error.status_code).phrase}"
            return {"response": {"status": status, "outcome": error.outcome()}}

    async def _transaction(
        self, access: Access, entries: list[_Entry], base: str
    ) -> list[dict[str, Any]]:
        ids = {
            entry.full_url: f"{entry.resource_type}/{uuid.uuid4()}"
            for entry in entries
            if entry.method == "POST" and entry.full_url and entry.full_url.startswith("urn:uuid:")
        }
        for entry in entries:
            _rewrite(entry.resource, ids)
        results: dict[int, dict[str, Any]] = {}
        async with self._engine.begin() as conn:
            for entry in sorted(entries, key=lambda item: _ORDER[item.method]):
                assigned = ids.get(entry.full_url or "")
                try:
                    results[entry.index] = await self._run(
                        access, entry, base, conn, assigned.split("/")[1] if assigned else None
                    )
                except FhirError as error:
                    error.diagnostics = f"entry {entry.index}: {error.diagnostics}"
                    raise  # the transaction rolls back: nothing of it is committed
        return [results[index] for index in range(len(entries))]

    async def _run(
        self,
        access: Access,
        entry: _Entry,
        base: str,
        conn: AsyncConnection | None,
        new_id: str | None = None,
    ) -> dict[str, Any]:
        act = self._interactions
        if entry.query is not None:
            bundle = await act.search(access, entry.resource_type, entry.query, base, conn=conn)
            return {"resource": bundle, "response": {"status": "200 OK"}}
        if entry.method == "POST":
            stored = await act.create(access, entry.resource_type, entry.resource, conn, new_id)
            return _response(stored, 201, base)
        assert entry.resource_id is not None
        if entry.method == "PUT":
            stored, created = await act.update(
                access,
                entry.resource_type,
                entry.resource_id,
                entry.resource,
                entry.if_match,
                conn,
            )
            return _response(stored, 201 if created else 200, base)
        if entry.method == "DELETE":
            await act.delete(access, entry.resource_type, entry.resource_id, conn)
            return {"response": {"status": "204 No Content"}}
        stored = await act.read(access, entry.resource_type, entry.resource_id, conn)
        return _response(stored, 200, base)


def _response(stored: StoredResource, status: int, base: str) -> dict[str, Any]:
    url = f"{base}/{stored.resource_type}/{stored.resource_id}"
    response: dict[str, Any] = {
        "status": f"{status} {HTTPStatus(status).phrase}",
        "etag": f'W/"{stored.version_id}"',
        "lastModified": fhir_instant(stored.last_updated),
    }
    if status == 201:
        response["location"] = f"{url}/_history/{stored.version_id}"
    return {"fullUrl": url, "resource": stored.content, "response": response}
