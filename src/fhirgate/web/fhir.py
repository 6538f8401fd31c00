"""The FHIR REST API (FHIR R4 §3.1.0 "RESTful API"): read, vread, instance history, create,
update (and update-as-create), delete, search, batch and transaction — R4 at ``/fhir/R4`` and at
the vendors' aliases ``/r4`` (1upHealth) and ``/fhir/R4/{organization}/{Environment}`` (Redox);
STU3 at ``/stu3`` and DSTU2 at ``/dstu2`` (1upHealth), each its own store.

Every request is authorized before the store is touched (:mod:`fhirgate.fhir.access`) and the
store only ever sees the caller's partition (:mod:`fhirgate.fhir.store`), so another user's or
organization's resource answers exactly like a missing one. Every error, authentication
failures included, is an OperationOutcome (``application/fhir+json``).

The API is one plain ASGI app (:class:`FhirApi`) with a router shaped like FHIR's URL grammar
(``[base]/[type]/[id]/_history/[vid]`` …): a read is the hottest request a FHIR server answers,
and FastAPI's route list and dependency solver cost more than the read itself
(docs/benchmarks.md). The CapabilityStatement, not the OpenAPI schema, describes it.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from email.utils import format_datetime
from typing import Any
from urllib.parse import parse_qsl

import orjson
from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from fhirgate.fhir.access import Access, InsufficientScope
from fhirgate.fhir.bundles import Budget, BundleProcessor
from fhirgate.fhir.capabilities import capability_statement
from fhirgate.fhir.errors import (
    FhirError,
    Forbidden,
    Gone,
    Invalid,
    NotAcceptable,
    NotFound,
    UnsupportedMediaType,
)
from fhirgate.fhir.interactions import Interactions, checked, may_read
from fhirgate.fhir.search import (
    DEFAULT_COUNT,
    MAX_COUNT,
    page_number,
)
from fhirgate.fhir.store import Partition, ResourceStore, StoredResource, fhir_instant
from fhirgate.fhir.subsetting import Subset, parse_subset
from fhirgate.fhir.versions import R4, VERSIONS, FhirVersion
from fhirgate.oauth.tokens import Principal
from fhirgate.services import Services
from fhirgate.web.discovery import smart_configuration
from fhirgate.web.failures import (
    STORAGE_ERRORS,
    BodyTooLarge,
    error_response,
    is_fhir,
    read_body,
    replaying,
    storage_unavailable,
    too_large,
    unexpected_error,
)
from fhirgate.web.guard import BearerError, authenticate, bearer_error_parts
from fhirgate.web.token import source_address

__all__ = ["FHIR_JSON", "FhirApi"]

FHIR_JSON = "application/fhir+json; charset=utf-8"
_ACCEPTED_BODIES = ("application/fhir+json", "application/json")
#: What ``_format`` may name (FHIR R4 http.html#mime-type: ``json`` and the JSON media types).
_JSON_FORMATS = frozenset({"json", "application/json", "application/fhir+json", "text/json"})
#: What an ``Accept`` header may list for JSON to be acceptable.
_JSON_ACCEPTED = _JSON_FORMATS | {"*/*", "application/*", "text/*"}
_USER_NUMBER = re.compile(r"[0-9]{1,9}")
_CORS = {"Access-Control-Allow-Origin": "*"}


class FhirAuthError(FhirError):
    """The resource guard's refusal (401, 403, 429), as an OperationOutcome with the same
    status and ``WWW-Authenticate`` challenge."""

    def __init__(self, exc: BearerError) -> None:
        error, self.headers = bearer_error_parts(exc)
        super().__init__(error.description or error.error)
        self.status_code = error.status_code  # type: ignore[misc]
        self.code = _AUTH_CODES.get(error.status_code, "forbidden")  # type: ignore[misc]
        #: audited in the guard's per-address tally, not by a row of its own
        self.tallied = exc.tallied


#: OperationOutcome issue codes (FHIR R4 valueset-issue-type) of the guard's refusals.
_AUTH_CODES = {401: "login", 429: "throttled"}


def fhir_response(
    body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(orjson.dumps(body), status, headers, FHIR_JSON)


def fhir_error_response(exc: FhirError) -> Response:
    headers = dict(getattr(exc, "headers", {}))
    if isinstance(exc, InsufficientScope):
        headers["WWW-Authenticate"] = (
            f'Bearer realm="fhirgate", error="insufficient_scope", scope="{exc.scope}"'
        )
    return fhir_response(exc.outcome(), exc.status_code, headers)


async def _access(request: Request) -> Access:
    """Who is asking (the resource guard) and which partition of the store they reach."""
    try:
        principal = await authenticate(request)
    except BearerError as exc:
        raise FhirAuthError(exc) from exc
    request.state.principal = principal
    services: Services = request.app.state.services
    environment = await services.organizations.environment_of(
        principal.organization_id, principal.environment
    )
    if environment is None:  # the client's organization is gone
        raise Forbidden("the token's environment no longer exists")
    tenant = request.path_params.get("organization")
    if tenant is not None:  # the Redox path names the organization and environment
        named = request.path_params["environment"].lower()
        if (tenant, named) != (environment.organization_slug, environment.kind):
            raise Forbidden("the token is not for this organization and environment")
    if principal.user_id is not None or principal.all_users:
        partition = Partition(environment.id, principal.client_id, principal.user_id)
    else:
        partition = Partition(environment.id)
    return Access(principal, partition)


def _interactions(request: Request) -> Interactions:
    """The interactions of the FHIR version whose base the request came through."""
    services: Services = request.app.state.services
    return services.fhir[request.scope["fhir_version"]]


def _check(request: Request, resource_type: str, resource_id: str | None = None) -> None:
    checked(resource_type, resource_id, _interactions(request).version)


def _store(request: Request) -> ResourceStore:
    return _interactions(request).store


def _base(request: Request) -> str:
    """This request's FHIR base URL: the public URL and the base path it came through (the
    router's prefix, with the Redox alias's organization and environment filled in)."""
    services: Services = request.app.state.services
    prefix: str = request.scope["fhir_base"]
    return services.settings.url(prefix.format_map(request.path_params))


def _headers(request: Request, stored: StoredResource, location: bool = False) -> dict[str, str]:
    headers = {
        "ETag": f'W/"{stored.version_id}"',
        "Last-Modified": format_datetime(stored.last_updated, usegmt=True),
    }
    if location:
        headers["Location"] = (
            f"{_base(request)}/{stored.resource_type}/{stored.resource_id}"
            f"/_history/{stored.version_id}"
        )
    return headers


def _check_acceptable(request: Request) -> None:
    """FHIR R4 http.html#mime-type: answers are JSON only. ``_format`` overrides ``Accept``;
    either one that admits no JSON (XML, Turtle, …) is a 406 rather than an answer the client
    did not ask for. No ``Accept`` or ``_format`` means JSON."""
    wanted = request.query_params.get("_format")
    if wanted is not None:
        _check_format(wanted)
        return
    accept = request.headers.get("accept", "").strip()
    if accept and not any(_admits_json(item) for item in accept.split(",")):
        raise NotAcceptable("Accept admits no JSON: ask for application/fhir+json")


def _check_format(wanted: str) -> None:
    if wanted.split(";", 1)[0].strip().lower() not in _JSON_FORMATS:
        raise NotAcceptable(f"_format={wanted[:40]} is not served: use _format=json")


def _admits_json(item: str) -> bool:
    """One ``Accept`` member (RFC 9110 §12.5.1): a JSON media type or a wildcard, not q=0."""
    media, *params = (part.strip().lower() for part in item.split(";"))
    for param in params:
        name, _, value = param.partition("=")
        if name.strip() == "q" and value.strip() in ("0", "0.", "0.0", "0.00", "0.000"):
            return False
    return media in _JSON_ACCEPTED


async def _body(request: Request) -> Any:
    """The JSON body of a write (``application/fhir+json``, or ``application/json``)."""
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type not in _ACCEPTED_BODIES:
        raise UnsupportedMediaType("send the resource as application/fhir+json")
    try:
        return orjson.loads(await request.body())
    except orjson.JSONDecodeError as exc:
        raise Invalid("the body is not JSON") from exc


def _if_match(request: Request) -> int | None:
    value = request.headers.get("if-match")
    if value is None:
        return None
    match = re.fullmatch(r'(?:W/)?"(\d{1,9})"', value.strip())
    if match is None:
        raise Invalid('If-Match must be a version ETag like W/"3"')
    return int(match.group(1))


async def search(request: Request, access: Access, resource_type: str) -> Response:
    """Type search (FHIR R4 §3.1.1) by GET."""
    return await _search(request, access, resource_type, request.query_params.multi_items())


async def search_by_post(request: Request, access: Access, resource_type: str) -> Response:
    """Type search by ``POST [type]/_search`` with a form body (FHIR R4 §3.1.1.3.2);
    query and body parameters combine."""
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type != "application/x-www-form-urlencoded":
        raise UnsupportedMediaType("POST _search takes application/x-www-form-urlencoded")
    try:
        body = parse_qsl((await request.body()).decode(), strict_parsing=False)
    except (UnicodeDecodeError, ValueError) as exc:
        raise Invalid("the body is not a valid form") from exc
    for name, value in body:
        if name == "_format":  # in the body as in the query string (checked before)
            _check_format(value)
    pairs = [*request.query_params.multi_items(), *body]
    return await _search(request, access, resource_type, pairs)


async def _search(
    request: Request, access: Access, resource_type: str, pairs: list[tuple[str, str]]
) -> Response:
    prefer = request.headers.get("prefer", "").replace(" ", "").lower()
    bundle = await _interactions(request).search(
        access, resource_type, pairs, _base(request), lenient="handling=lenient" in prefer
    )
    _audited_ids(request, _carried(bundle))
    return fhir_response(bundle)


def _carried(bundle: dict[str, Any]) -> list[str]:
    """``Type/id`` of every resource a Bundle carries, those of the Bundles inside it too
    (search entries of a batch)."""
    carried = []
    for entry in bundle.get("entry", []):
        resource = entry.get("resource") or {}
        if resource.get("resourceType") == "Bundle":
            carried += _carried(resource)
        elif "id" in resource:
            carried.append(f"{resource['resourceType']}/{resource['id']}")
    return carried


def _audited_ids(request: Request, ids: list[str]) -> None:
    """The resources a response carries, for its audit row (identifiers, never content)."""
    request.state.audit_ids = ids


async def bundle(request: Request, access: Access) -> Response:
    """batch and transaction (FHIR R4 §3.1.0.11): a Bundle posted to the base."""
    services: Services = request.app.state.services
    settings = services.settings
    budget = Budget(
        settings.bundle_max_entries, settings.bundle_max_resources, settings.bundle_max_seconds
    )

    async def audit_writes(conn: AsyncConnection, written: Sequence[str]) -> None:
        """A committed part of the Bundle (a transaction's writes, a batch's write entry) and
        its audit row are one transaction."""
        await _write_audit(request, "bundle.write", 200, request.state.request_id, conn, written)

    processor = BundleProcessor(
        _interactions(request), services.engine, budget, STORAGE_ERRORS, audit_writes
    )
    parsed = processor.parse(await _body(request))
    _audited_ids(request, parsed.targets)  # audited as tried, even if refused or rolled back
    answer = await processor.process(access, parsed, _base(request))
    _audited_ids(request, list(dict.fromkeys([*parsed.targets, *_carried(answer)])))
    return fhir_response(answer)


async def everything(request: Request, access: Access, resource_id: str) -> Response:
    """``Patient/{id}/$everything`` (FHIR R4 patient-operation-everything): the Patient and
    every resource of its compartment the token may read, paged with ``_count`` and
    ``_offset``."""
    _check(request, "Patient", resource_id)
    access.require("Patient", "read")
    store = _store(request)
    patient = await store.read(access.partition, "Patient", resource_id)
    if patient is None or patient.content is None:
        raise NotFound(f"Patient/{resource_id} is not known")
    params = dict(request.query_params)
    count = page_number("_count", params.get("_count", str(DEFAULT_COUNT)), MAX_COUNT)
    offset = page_number("_offset", params.get("_offset", "0"), 10**9)
    page, more = await store.compartment(access.partition, resource_id, offset, count)
    base = _base(request)
    url = f"{base}/Patient/{resource_id}/$everything"
    links = [{"relation": "self", "url": f"{url}?_count={count}&_offset={offset}"}]
    if more:
        links.append({"relation": "next", "url": f"{url}?_count={count}&_offset={offset + count}"})
    members = [patient] if offset == 0 else []
    members += [item for item in page if may_read(access, item.resource_type)]
    entries = [
        {"fullUrl": f"{base}/{item.resource_type}/{item.resource_id}", "resource": item.content}
        for item in members
    ]
    bundle = {"resourceType": "Bundle", "type": "searchset", "link": links, "entry": entries}
    _audited_ids(request, [f"{item.resource_type}/{item.resource_id}" for item in members])
    return fhir_response(bundle)


def _subset(request: Request, resource_type: str) -> Subset:
    """``_summary`` and ``_elements`` of a read or vread (FHIR R4 http.html §3.1.0.1.7)."""
    subset = parse_subset(resource_type, request.query_params.multi_items(), search=False)
    subset.check_version(_interactions(request).version is R4)
    return subset


async def read(request: Request, access: Access, resource_type: str, resource_id: str) -> Response:
    """read (FHIR R4 §3.1.0.2), with ``_summary`` and ``_elements``."""
    subset = _subset(request, resource_type)
    stored = await _interactions(request).read(access, resource_type, resource_id)
    assert stored.content is not None
    return fhir_response(subset.apply(stored.content), headers=_headers(request, stored))


async def vread(
    request: Request,
    access: Access,
    resource_type: str,
    resource_id: str,
    version_id: str,
) -> Response:
    """vread (FHIR R4 §3.1.0.3), with ``_summary`` and ``_elements``."""
    _check(request, resource_type, resource_id)
    access.require(resource_type, "vread")
    subset = _subset(request, resource_type)
    history = await _store(request).history(access.partition, resource_type, resource_id)
    for stored in history:
        if str(stored.version_id) == version_id:
            if stored.content is None:
                raise Gone(f"{resource_type}/{resource_id} was deleted in that version")
            return fhir_response(subset.apply(stored.content), headers=_headers(request, stored))
    raise NotFound(f"{resource_type}/{resource_id}/_history/{version_id[:16]} is not known")


async def history(
    request: Request, access: Access, resource_type: str, resource_id: str
) -> Response:
    """Instance history (FHIR R4 §3.1.0.11): a ``history`` Bundle, newest first."""
    _check(request, resource_type, resource_id)
    access.require(resource_type, "history")
    versions = await _store(request).history(access.partition, resource_type, resource_id)
    if not versions:
        raise NotFound(f"{resource_type}/{resource_id} is not known")
    base = _base(request)
    entries = [_history_entry(base, stored) for stored in versions]
    bundle = {
        "resourceType": "Bundle",
        "type": "history",
        "total": len(entries),
        "entry": entries,
    }
    return fhir_response(bundle)


async def create(request: Request, access: Access, resource_type: str) -> Response:
    """create (FHIR R4 §3.1.0.7): 201 with ``Location``; the body's ``id`` is replaced."""
    _check(request, resource_type)
    access.require(resource_type, "create")  # before reading the body
    stored = await _interactions(request).create(
        access, resource_type, await _body(request), _written(request)
    )
    assert stored.content is not None
    return fhir_response(stored.content, 201, _headers(request, stored, location=True))


async def update(
    request: Request, access: Access, resource_type: str, resource_id: str
) -> Response:
    """update (FHIR R4 §3.1.0.4), update-as-create when there is no such resource, and
    version-aware update with ``If-Match`` (§3.1.0.4.2)."""
    _check(request, resource_type, resource_id)
    access.require(resource_type, "update")  # before reading the body
    stored, created = await _interactions(request).update(
        access,
        resource_type,
        resource_id,
        await _body(request),
        _if_match(request),
        _written(request),
    )
    assert stored.content is not None
    status = 201 if created else 200
    return fhir_response(stored.content, status, _headers(request, stored, location=created))


async def delete(
    request: Request, access: Access, resource_type: str, resource_id: str
) -> Response:
    """delete (FHIR R4 §3.1.0.6): 204; an unknown (or unseen) resource is 404."""
    await _interactions(request).delete(access, resource_type, resource_id, _written(request))
    return Response(status_code=204)


async def share(
    request: Request,
    access: Access,
    resource_type: str,
    resource_id: str,
    oneup_user_id: str,
) -> Response:
    """1upHealth's sharing: the owning user lets another user of the same application read
    the resource. Answers in 1upHealth's shape: ``{"success": true}``, or for the owner
    itself ``{"error": "the resource owner permissions cannot be altered", "success":
    false}``."""
    _check(request, resource_type, resource_id)
    access.require(resource_type, "update")
    if access.partition.user_id is None:
        raise Forbidden("only an application user shares its resources")
    if not _USER_NUMBER.fullmatch(oneup_user_id):
        raise Invalid("oneup_user_id must be a number")
    services: Services = request.app.state.services
    target = await services.delegation.users.find(
        access.principal.client_id, oneup_user_id=int(oneup_user_id)
    )
    if target is None:
        raise NotFound(f"no user {oneup_user_id} in this application")
    outcome = await _store(request).share(
        access.partition, resource_type, resource_id, target.oneup_user_id, conn=_written(request)
    )
    if outcome == "unknown":
        raise NotFound(f"{resource_type}/{resource_id} is not known")
    if outcome == "owner":
        body = {"error": "the resource owner permissions cannot be altered", "success": False}
        return Response(orjson.dumps(body), 400, media_type="application/json")
    return Response(orjson.dumps({"success": True}), 200, media_type="application/json")


def _history_entry(base: str, stored: StoredResource) -> dict[str, Any]:
    url = f"{base}/{stored.resource_type}/{stored.resource_id}"
    entry: dict[str, Any] = {"fullUrl": url}
    if stored.content is not None:
        entry["resource"] = stored.content
    method = "DELETE" if stored.deleted else ("POST" if stored.version_id == 1 else "PUT")
    entry["request"] = {"method": method, "url": f"{stored.resource_type}/{stored.resource_id}"}
    entry["response"] = {
        "status": "204" if stored.deleted else ("201" if stored.version_id == 1 else "200"),
        "etag": f'W/"{stored.version_id}"',
        "lastModified": fhir_instant(stored.last_updated),
    }
    return entry


def _written(request: Request) -> AsyncConnection:
    """The transaction a write handler writes in: :func:`_audited` opened it and adds the
    audit row to it before it commits."""
    conn: AsyncConnection = request.state.write
    return conn


async def _write_audit(
    request: Request,
    action: str,
    status: int,
    request_id: str,
    conn: AsyncConnection | None = None,
    ids: Sequence[str] | None = None,
) -> None:
    """The audit row of ``request`` (``ids``: the resources it names, by default those the
    handler set, else the path's), in ``conn``'s transaction when given."""
    services: Services = request.app.state.services
    principal: Principal | None = getattr(request.state, "principal", None)
    if ids is None:
        ids = getattr(request.state, "audit_ids", None)
    if ids is None:
        resource_id = request.path_params.get("resource_id")
        ids = [resource_id] if resource_id else []
    await services.audit.fhir_event(
        action,
        client_id=principal.client_id if principal else None,
        user_id=principal.user_id if principal else None,
        resource_type=request.path_params.get("resource_type"),
        resource_ids=ids,
        outcome=status,
        source=source_address(request.scope),
        request_id=request_id,
        conn=conn,
    )


async def metadata(request: Request) -> Response:
    """The CapabilityStatement (FHIR R4 §3.1.0.15); public, like every FHIR server's."""
    services: Services = request.app.state.services
    version = _interactions(request).version
    statement = capability_statement(services.settings, _base(request), version)
    return fhir_response(statement)


async def smart_configuration_here(request: Request) -> Response:
    """SMART discovery under the FHIR base too (SMART App Launch §conformance)."""
    services: Services = request.app.state.services
    body = smart_configuration(services.settings)
    return Response(orjson.dumps(body), headers=_CORS, media_type="application/json")


Handler = Callable[..., Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class _Route:
    """A path under a FHIR base, segment by segment (``{name}`` captures one non-empty
    segment), and its handler per method. ``public`` routes take no ``Access``."""

    segments: tuple[str, ...]
    handlers: dict[str, Handler]
    public: bool = False

    def match(self, parts: list[str]) -> dict[str, str] | None:
        if len(parts) != len(self.segments):
            return None
        params = {}
        for segment, part in zip(self.segments, parts, strict=True):
            if segment.startswith("{"):
                if not part:
                    return None
                params[segment[1:-1]] = part
            elif segment != part:
                return None
        return params


def _route(path: str, handlers: dict[str, Handler], public: bool = False) -> _Route:
    return _Route(tuple(path.split("/")) if path else (), handlers, public)


#: FHIR R4 §3.1.0 "RESTful API", in matching order: literal segments before ``{names}``.
ROUTES = (
    _route("metadata", {"GET": metadata}, public=True),
    _route(".well-known/smart-configuration", {"GET": smart_configuration_here}, public=True),
    _route("", {"POST": bundle}),
    _route("Patient/{resource_id}/$everything", {"GET": everything}),
    _route("{resource_type}", {"GET": search, "POST": create}),
    _route("{resource_type}/_search", {"POST": search_by_post}),
    _route("{resource_type}/{resource_id}", {"GET": read, "PUT": update, "DELETE": delete}),
    _route("{resource_type}/{resource_id}/_history", {"GET": history}),
    _route("{resource_type}/{resource_id}/_history/{version_id}", {"GET": vread}),
    _route("{resource_type}/{resource_id}/_permission/{oneup_user_id}", {"PUT": share}),
)

#: The handlers that change resources: each runs in one transaction with its audit row.
_WRITES = frozenset({create, update, delete, share})

#: The path variables of the bases (Redox's organization slug and environment, any case).
_BASE_VARIABLES = {
    "organization": "[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?",
    "environment": "(?i:development|staging|production)",
}


@dataclass(frozen=True, slots=True)
class _Base:
    pattern: re.Pattern[str]
    template: str
    version: FhirVersion


def _bases() -> list[_Base]:
    """Every version's bases, the ones with variables first (Redox's
    ``/fhir/R4/{organization}/{environment}`` before ``/fhir/R4``; a slug is lower case, so
    never a resource type)."""
    bases = [
        _Base(
            re.compile(
                "^"
                + re.sub(r"{(\w+)}", lambda m: f"(?P<{m[1]}>{_BASE_VARIABLES[m[1]]})", base)
                + "(?P<rest>/.*)?$"
            ),
            base,
            version,
        )
        for version in VERSIONS
        for base in version.bases
    ]
    return sorted(bases, key=lambda base: "{" not in base.template)


class FhirApi:
    """The FHIR REST API under every base of every version: :meth:`base_of` finds the base a
    path is under, :meth:`serve` answers the request."""

    def __init__(self, body_limit: int) -> None:
        self._bases = _bases()
        self._body_limit = body_limit

    def base_of(self, path: str) -> tuple[_Base, re.Match[str]] | None:
        """The base ``path`` is under, if any."""
        if not is_fhir(path):
            return None
        for base in self._bases:
            matched = base.pattern.match(path)
            if matched is not None:
                return base, matched
        return None

    async def serve(
        self, found: tuple[_Base, re.Match[str]], scope: Scope, receive: Receive, send: Send
    ) -> None:
        """The request under the base :meth:`base_of` found, as an ASGI app would."""
        base, matched = found
        params = {k: v for k, v in matched.groupdict().items() if k != "rest" and v is not None}
        rest = (matched["rest"] or "").removeprefix("/").removesuffix("/")
        chosen, allowed = _choose(scope["method"], rest.split("/") if rest else [])
        if chosen is None:
            status = 405 if allowed else 404
            headers = {"Allow": ", ".join(sorted(allowed))} if allowed else None
            text = "method not allowed" if allowed else "not found"
            response = error_response(scope["path"], status, "invalid_request", text, headers)
            await response(scope, receive, send)
            return
        route, handler, path_params = chosen
        scope["path_params"] = {**params, **path_params}
        scope["fhir_base"] = base.template
        scope["fhir_version"] = base.version.name
        try:
            body = await read_body(scope, receive, self._body_limit)
        except BodyTooLarge:
            await too_large(scope["path"])(scope, receive, send)
            return
        request = Request(scope, replaying(body, receive))
        response = await _audited(request, route, handler, path_params)
        await response(scope, receive, send)


def _choose(
    method: str, parts: list[str]
) -> tuple[tuple[_Route, Handler, dict[str, str]] | None, set[str]]:
    """The first route matching the path and method; else the methods the path allows."""
    allowed: set[str] = set()
    for route in ROUTES:
        params = route.match(parts)
        if params is None:
            continue
        handler = route.handlers.get(method)
        if handler is not None:
            return (route, handler, params), allowed
        allowed.update(route.handlers)
    return None, allowed


async def _audited(
    request: Request, route: _Route, handler: Handler, params: dict[str, str]
) -> Response:
    """The handler's answer — success or error — audited before it leaves (no health data
    without its audit row: docs/security.md#audit-log). If the audit row cannot be written, the
    answer is a 503 OperationOutcome instead. A write and its audit row are one transaction: they
    commit together, or neither does. ``X-Request-Id`` ties the answer to its row."""
    request_id = request.state.request_id = secrets.token_hex(8)
    audited = False
    try:
        _check_acceptable(request)
        if route.public:
            response = await handler(request, **params)
        elif handler in _WRITES:
            access = await _access(request)
            services: Services = request.app.state.services
            async with services.engine.begin() as conn:
                request.state.write = conn
                response = await handler(request, access, **params)
                await _write_audit(
                    request, handler.__name__, response.status_code, request_id, conn
                )
            audited = True
        else:
            response = await handler(request, await _access(request), **params)
    except FhirAuthError as error:
        response = fhir_error_response(error)
        audited = error.tallied  # no credential: one tally row per address and minute
    except FhirError as error:
        response = fhir_error_response(error)
    except STORAGE_ERRORS as exc:
        response = await storage_unavailable(request, exc)
    except Exception as exc:
        response = await unexpected_error(request, exc)
    if not audited:
        try:
            await _write_audit(request, handler.__name__, response.status_code, request_id)
        except Exception as exc:  # no answer without its audit row
            return await storage_unavailable(request, exc)
    response.headers["X-Request-Id"] = request_id
    return response
