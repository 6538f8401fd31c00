"""batch and transaction Bundles posted to a FHIR base (FHIR R4 §3.1.0.11).

Each entry is one interaction — ``POST Type`` (create), ``PUT Type/id`` (update),
``DELETE Type/id``, ``GET Type/id`` (read), ``GET Type?params`` (search: a ``searchset``
Bundle as the entry's resource) — authorized and validated exactly like its REST request
(:class:`~fhirgate.fhir.interactions.Interactions`). Conditional create, update and delete
(a query on a write) are refused.

A Bundle has a :class:`Budget` (``FHIRGATE_BUNDLE_MAX_*``): entries, resources answered,
seconds. Past it the answer is a 400 ``too-costly`` OperationOutcome, as below.

* batch: entries run one by one, each in its own transaction; each gets its own status, a
  failure — whatever the exception — its own OperationOutcome (``batch-response``): 4xx for
  the client's fault, 500 (logged with a reference) for an internal one; the other entries'
  results stand. More entries than the budget: the whole Bundle is refused before any runs.
  Once the budget of resources or seconds is spent, the entries left are answered 400
  ``too-costly`` without running (a search whose answer would pass the resource budget is
  dropped and answered so too).
* transaction: first every check that needs no data — each read's and search's type, id,
  scope and parameters, and the most resources its searches may answer (``_count`` plus the
  include limit per ``_include``/``_revinclude``) against the budget; then the writes, in the
  order the specification fixes (DELETE, POST, PUT; §3.1.0.11.2), in one database transaction
  that is refused and rolled back past the time budget; then, after the commit, the reads
  (§3.1.0.11.2: GET last, seeing the writes). The reads therefore never run inside the write
  transaction: on SQLite they would hold its write lock — which every other request's audit
  row needs — for as long as they take. ``urn:uuid`` full URLs of created resources are
  replaced by their new ``Type/id`` in every reference. A failing check or write — a
  validation error, a forbidden reference, a missing scope, an exception — fails the whole
  transaction and nothing is committed. What only the committed data can tell a read (the
  resource is not there: 404/410) and a read past the time budget are answered in that
  entry of the ``transaction-response``, as in a batch: the writes are committed by then.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from fhirgate.fhir.access import Access
from fhirgate.fhir.errors import FhirError, Invalid, TooCostly, operation_outcome
from fhirgate.fhir.interactions import MAX_DEPTH, Interactions, checked, depth
from fhirgate.fhir.store import MAX_INCLUDED, StoredResource, fhir_instant

__all__ = ["Budget", "BundleProcessor", "ParsedBundle"]

log = logging.getLogger("fhirgate.errors")

_ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "GET": 3}


@dataclass(frozen=True, slots=True)
class Budget:
    """What one Bundle may cost: entries, resources in its answer, seconds of work
    (``FHIRGATE_BUNDLE_MAX_ENTRIES``, ``_RESOURCES``, ``_SECONDS``)."""

    entries: int
    resources: int
    seconds: float


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


class _Meter:
    """What a Bundle has spent of its :class:`Budget` so far."""

    def __init__(self, budget: Budget) -> None:
        self.budget = budget
        self.resources = 0
        self._deadline = time.monotonic() + budget.seconds

    def late(self) -> TooCostly | None:
        """The refusal past the deadline."""
        if time.monotonic() <= self._deadline:
            return None
        return TooCostly(f"the Bundle ran past its budget of {self.budget.seconds:g} seconds")

    def refusal(self) -> TooCostly | None:
        """Why no further entry may run, if the budget is spent."""
        if self.resources >= self.budget.resources:
            return TooCostly(f"the Bundle's answer reached its {self.budget.resources} resources")
        return self.late()

    def carry(self, entry: _Entry, answer: dict[str, Any]) -> TooCostly | None:
        """Count the resources of an entry's answer; for a read that would pass the budget, the
        refusal that replaces it (and leaves no room for any later entry)."""
        carried = _resources(answer)
        if entry.method == "GET" and self.resources + carried > self.budget.resources:
            self.resources = self.budget.resources
            return TooCostly(
                f"entry {entry.index} would take the Bundle's answer past its budget of"
                f" {self.budget.resources} resources"
            )
        self.resources += carried
        return None


def _resources(answer: dict[str, Any]) -> int:
    """How many resources an entry's answer carries (a searchset's entries)."""
    resource = answer.get("resource")
    if resource is None:
        return 0
    if resource.get("resourceType") == "Bundle":
        return len(resource.get("entry", []))
    return 1


def _failure(error: FhirError) -> dict[str, Any]:
    status = f"{error.status_code} {HTTPStatus(error.status_code).phrase}"
    return {"response": {"status": status, "outcome": error.outcome()}}


def _internal_failure(entry: _Entry, exc: Exception, unavailable: bool) -> dict[str, Any]:
    """A fault that is not the client's, in one entry: logged with a reference; a generic
    OperationOutcome in that entry's response (nothing internal in it) — 503 when the storage
    could not answer, else 500."""
    status, text = (503, "storage unavailable") if unavailable else (500, "internal error")
    ref = secrets.token_hex(6)
    log.error("%s [%s] in Bundle entry %d", text, ref, entry.index, exc_info=exc)
    outcome = operation_outcome("exception", f"{text} (request id {ref})")
    return {"response": {"status": f"{status} {HTTPStatus(status).phrase}", "outcome": outcome}}


@contextlib.contextmanager
def _naming(entry: _Entry) -> Iterator[None]:
    """A transaction's error names the entry that failed it."""
    try:
        yield
    except FhirError as error:
        error.diagnostics = f"entry {entry.index}: {error.diagnostics}"
        raise


#: Writes the audit row of a Bundle's writes in their transaction: the connection, the
#: ``Type/id`` of each resource written.
AuditWrites = Callable[[AsyncConnection, Sequence[str]], Awaitable[None]]


class BundleProcessor:
    """Runs batch and transaction Bundles through the interactions, within a budget.

    Reads and searches go through a connection of the engine's that only reads: on SQLite its
    statements run in the driver's thread, so a Bundle's hundreds of them leave the event loop
    to other requests between them (the inline path of :mod:`fhirgate.storage.direct` would
    hold it for the whole Bundle); in WAL mode a reader never blocks a writer."""

    def __init__(
        self,
        interactions: Interactions,
        engine: AsyncEngine,
        budget: Budget,
        storage_errors: tuple[type[Exception], ...] = (),
        audit_writes: AuditWrites | None = None,
    ) -> None:
        self._interactions = interactions
        self._engine = engine
        self._budget = budget
        #: The exceptions that mean the storage could not answer (an entry's 503, not 500).
        self._storage_errors = storage_errors
        self._audit_writes = audit_writes

    async def process(self, access: Access, bundle: ParsedBundle, base: str) -> dict[str, Any]:
        """The ``batch-response`` or ``transaction-response`` of ``bundle``."""
        meter = _Meter(self._budget)
        if bundle.kind == "batch":
            async with self._engine.connect() as reading:
                responses = [
                    await self._answer(access, entry, base, meter, reading)
                    for entry in bundle.entries
                ]
        else:
            responses = await self._transaction(access, bundle.entries, base, meter)
        return {"resourceType": "Bundle", "type": f"{bundle.kind}-response", "entry": responses}

    def parse(self, bundle: Any) -> ParsedBundle:
        """Check the Bundle's shape, its number of entries and each entry's request;
        ``Invalid`` (or ``TooCostly``) names the first problem."""
        if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
            raise Invalid("POST to the base takes a Bundle")
        kind = bundle.get("type")
        if kind not in ("batch", "transaction"):
            raise Invalid("the Bundle's type must be batch or transaction")
        raw = bundle.get("entry", [])
        if not isinstance(raw, list):
            raise Invalid("the Bundle's entry must be a list")
        if len(raw) > self._budget.entries:
            raise TooCostly(f"a Bundle has at most {self._budget.entries} entries")
        if depth(bundle) > MAX_DEPTH + 4:
            raise Invalid("the Bundle nests too deeply")
        return ParsedBundle(kind, [_entry(index, item) for index, item in enumerate(raw)])

    async def _answer(
        self, access: Access, entry: _Entry, base: str, meter: _Meter, reading: AsyncConnection
    ) -> dict[str, Any]:
        """One entry run on its own (a write in its own transaction, a read on ``reading``):
        its answer, or its own error whatever the exception."""
        refused = meter.refusal()
        if refused is not None:
            return _failure(refused)
        try:
            if entry.method == "GET":
                answer = await self._run(access, entry, base, reading)
            else:  # in its own transaction, with its audit row
                async with self._engine.begin() as conn:
                    answer = await self._run(access, entry, base, conn)
                    await self._audited(conn, [(entry, answer)])
        except FhirError as error:
            return _failure(error)
        except Exception as exc:  # the entry's own 500; the other entries' results stand
            return _internal_failure(entry, exc, isinstance(exc, self._storage_errors))
        refused = meter.carry(entry, answer)
        return answer if refused is None else _failure(refused)

    def _plan(self, access: Access, entries: list[_Entry]) -> None:
        """What a transaction's reads and searches must pass before anything is written: their
        type, id, scope and parameters; and the most resources the searches may answer."""
        most = 0
        for entry in (item for item in entries if item.method == "GET"):
            with _naming(entry):
                if entry.query is None:
                    checked(entry.resource_type, entry.resource_id, self._interactions.version)
                    access.grants(entry.resource_type, "read")
                    most += 1
                    continue
                wanted = self._interactions.search_request(access, entry.resource_type, entry.query)
                inclusions = len(wanted.includes) + len(wanted.revincludes)
                most += wanted.count + MAX_INCLUDED * inclusions
        if most > self._budget.resources:
            raise TooCostly(
                f"the transaction's reads may answer {most} resources, past its budget of"
                f" {self._budget.resources}: ask for fewer (_count, _include)"
            )

    async def _transaction(
        self, access: Access, entries: list[_Entry], base: str, meter: _Meter
    ) -> list[dict[str, Any]]:
        ids = {
            entry.full_url: f"{entry.resource_type}/{uuid.uuid4()}"
            for entry in entries
            if entry.method == "POST" and entry.full_url and entry.full_url.startswith("urn:uuid:")
        }
        for entry in entries:
            _rewrite(entry.resource, ids)
        self._plan(access, entries)
        writes = sorted((e for e in entries if e.method != "GET"), key=lambda e: _ORDER[e.method])
        results: dict[int, dict[str, Any]] = {}
        if writes:
            async with self._engine.begin() as conn:  # rolled back by any exception
                for entry in writes:
                    assigned = ids.get(entry.full_url or "")
                    new_id = assigned.split("/")[1] if assigned else None
                    with _naming(entry):
                        if (late := meter.late()) is not None:
                            raise late
                        results[entry.index] = await self._run(access, entry, base, conn, new_id)
                if (late := meter.late()) is not None:
                    raise late
                await self._audited(conn, [(entry, results[entry.index]) for entry in writes])
        reads = [entry for entry in entries if entry.method == "GET"]
        if reads:
            async with self._engine.connect() as reading:  # after the commit
                for entry in reads:
                    results[entry.index] = await self._answer(access, entry, base, meter, reading)
        return [results[index] for index in range(len(entries))]

    async def _audited(
        self, conn: AsyncConnection, written: list[tuple[_Entry, dict[str, Any]]]
    ) -> None:
        """The audit row of writes about to commit, in their transaction."""
        if self._audit_writes is not None:
            await self._audit_writes(conn, [_written(entry, answer) for entry, answer in written])

    async def _run(
        self,
        access: Access,
        entry: _Entry,
        base: str,
        conn: AsyncConnection | None,
        new_id: str | None = None,
    ) -> dict[str, Any]:
        """One entry: a write in ``conn``'s transaction (a transaction Bundle's), else in its
        own; a read or search on ``conn``, a connection that only reads."""
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


def _written(entry: _Entry, answer: dict[str, Any]) -> str:
    """``Type/id`` of the resource a write entry changed (its answer names a created one)."""
    if entry.resource_id is not None:
        return f"{entry.resource_type}/{entry.resource_id}"
    return "/".join(str(answer.get("fullUrl", "")).rsplit("/", 2)[-2:])


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
