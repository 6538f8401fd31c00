"""FHIR search parameters to SQL over the index tables (FHIR R4 §3.1.1).

Each parameter becomes a ``row_id IN (SELECT row_id FROM <index table> WHERE …)``;
parameters combine with AND, comma-separated values with OR (§3.1.1.3). Semantics:

* string: "starts with", accents and case ignored; ``:exact``; ``:contains`` (§3.1.1.5.9);
* token: ``code``, ``system|code``, ``|code`` (no system), ``system|`` (§3.1.1.5.7);
* reference: ``Type/id``, ``id`` (the type from a ``:Type`` modifier or the parameter), or an
  absolute URL ending in ``Type/id`` (§3.1.1.5.8);
* date: prefixes ``eq ne lt gt le ge sa eb ap`` compared as ranges, a partial date being the
  whole of its year, month or day (§3.1.1.5.3);
* ``_id``, ``_lastUpdated``, ``_tag``, ``_profile``; ``_count`` (default 50, at most 500),
  ``_offset`` (fhirgate's paging cursor), ``_total`` (``none`` skips counting), ``_sort`` by
  ``_id``, ``_lastUpdated`` or a string, token or date parameter (``-`` for descending),
  ``_include`` and ``_revinclude`` (not iterating; the included resources are confined to the
  caller's partition like the matches).

An unknown parameter, modifier or malformed value is a 400 OperationOutcome — unless the request
carries ``Prefer: handling=lenient``, when unknown parameters are ignored (§3.1.1.3.1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import ColumnElement, and_, false, func, not_, or_, select

from fhirgate.fhir.errors import Invalid
from fhirgate.fhir.indexing import date_range, normalize, reference_of
from fhirgate.fhir.search_params import SearchParam, parameter
from fhirgate.storage.models import (
    FhirDateIndexRow,
    FhirReferenceIndexRow,
    FhirResourceRow,
    FhirStringIndexRow,
    FhirTokenIndexRow,
)

__all__ = [
    "DEFAULT_COUNT",
    "MAX_COUNT",
    "SearchRequest",
    "page_number",
    "parse_search",
    "restricted_to",
]

DEFAULT_COUNT = 50
MAX_COUNT = 500
_PREFIXES = ("eq", "ne", "lt", "gt", "le", "ge", "sa", "eb", "ap")
_CONTROL = {"_count", "_offset", "_total", "_sort", "_format"}
_MAX_VALUES = 100
_SORTABLE: dict[str, Any] = {
    "_id": FhirResourceRow.resource_id,
    "_lastUpdated": FhirResourceRow.last_updated,
}


@dataclass
class SearchRequest:
    """What a search asks for, as SQL conditions on ``fhir_resources`` plus paging."""

    conditions: list[ColumnElement[bool]] = field(default_factory=list)
    count: int = DEFAULT_COUNT
    offset: int = 0
    total: bool = True
    order: list[Any] = field(default_factory=list)
    #: The parameters that made the conditions, and ``_sort``/``_total`` as given: the
    #: Bundle's links repeat them.
    used: list[tuple[str, str]] = field(default_factory=list)
    controls: list[tuple[str, str]] = field(default_factory=list)
    #: ``_include`` / ``_revinclude``: (source type, reference parameter, target type or None).
    includes: list[tuple[str, str, str | None]] = field(default_factory=list)
    revincludes: list[tuple[str, str, str | None]] = field(default_factory=list)


def _having(table: Any, *conditions: Any) -> ColumnElement[bool]:
    """Resources with an index row matching ``conditions``: ``row_id IN (SELECT …)``, which
    the planners answer from the index on (name, value) — never a probe per resource."""
    return FhirResourceRow.row_id.in_(select(table.row_id).where(*conditions))


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _string(param: SearchParam, modifier: str | None, value: str) -> ColumnElement[bool]:
    row = FhirStringIndexRow
    if modifier == "exact":
        match = row.exact == value
    elif modifier == "contains":
        match = row.normalized.like(f"%{_escape_like(normalize(value))}%", escape="\\")
    elif modifier is None:
        match = row.normalized.like(f"{_escape_like(normalize(value))}%", escape="\\")
    else:
        raise Invalid(f"modifier :{modifier} is not supported on {param.name}")
    return _having(row, row.name == param.name, match)


def _token(param: SearchParam, modifier: str | None, value: str) -> ColumnElement[bool]:
    row = FhirTokenIndexRow
    if modifier not in (None, "not"):
        raise Invalid(f"modifier :{modifier} is not supported on {param.name}")
    conditions: list[ColumnElement[bool]] = [row.name == param.name]
    if "|" in value:
        system, _, code = value.partition("|")
        conditions.append(row.system.is_(None) if system == "" else row.system == system)
        if code:
            conditions.append(row.code == code)
    else:
        conditions.append(row.code == value)
    found = _having(row, *conditions)
    return not_(found) if modifier == "not" else found


def _reference(param: SearchParam, modifier: str | None, value: str) -> ColumnElement[bool]:
    row = FhirReferenceIndexRow
    target = reference_of(value)
    if target is None:
        wanted_type = modifier or param.target
        if modifier is not None and not modifier[:1].isupper():
            raise Invalid(f"modifier :{modifier} is not supported on {param.name}")
        target_id = value
        conditions = [row.target_id == target_id]
        if wanted_type is not None:
            conditions.append(row.target_type == wanted_type)
    else:
        conditions = [row.target_type == target[0], row.target_id == target[1]]
    return _having(row, row.name == param.name, *conditions)


def _prefixed(value: str) -> tuple[str, tuple[int, int]]:
    prefix = value[:2] if value[:2] in _PREFIXES else "eq"
    text = value[2:] if value[:2] in _PREFIXES else value
    covered = date_range(text)
    if covered is None:
        raise Invalid(f"{value[:40]!r} is not a FHIR date")
    return prefix, covered


def _compare(prefix: str, low: Any, high: Any, search: tuple[Any, Any]) -> ColumnElement[bool]:
    """FHIR R4 §3.1.1.5.3: the target range ``[low, high)`` against the search range."""
    start, end = search
    within = and_(low >= start, high <= end)
    condition: Any = {
        "eq": within,
        "ne": not_(within),
        "lt": low < start,
        "gt": high > end,
        "le": low < end,
        "ge": high > start,
        "sa": low >= end,
        "eb": high <= start,
        "ap": and_(low < end, high > start),  # approximately: overlapping
    }[prefix]
    return cast(ColumnElement[bool], condition)


def _date(param: SearchParam, modifier: str | None, value: str) -> ColumnElement[bool]:
    if modifier is not None:
        raise Invalid(f"modifier :{modifier} is not supported on {param.name}")
    prefix, search = _prefixed(value)
    row = FhirDateIndexRow
    return _having(row, row.name == param.name, _compare(prefix, row.low, row.high, search))


def _last_updated(value: str) -> ColumnElement[bool]:
    prefix, (start, end) = _prefixed(value)
    moment = FhirResourceRow.last_updated
    as_time = (datetime.fromtimestamp(start, UTC), datetime.fromtimestamp(end, UTC))
    # the column is an instant: its range is the instant itself
    return _compare(prefix, moment, moment, as_time)


_BUILDERS = {"string": _string, "token": _token, "reference": _reference, "date": _date}


def _condition(resource_type: str, name: str, value: str, lenient: bool) -> Any:
    base, _, modifier = name.partition(":")
    values = value.split(",")
    if len(values) > _MAX_VALUES or not all(values):
        raise Invalid(f"parameter {base} has an empty or too long list of values")
    if base == "_id":
        return FhirResourceRow.resource_id.in_(values)
    if base == "_lastUpdated":
        return or_(*(_last_updated(item) for item in values))
    param = parameter(resource_type, base)
    if param is None:
        if lenient:
            return None
        raise Invalid(f"unknown search parameter {base[:64]!r} for {resource_type}")
    build = _BUILDERS[param.type]
    return or_(*(build(param, modifier or None, item) for item in values))


def page_number(name: str, value: str, top: int) -> int:
    """A ``_count`` or ``_offset`` value: a whole number, capped at ``top``."""
    if not value.isdigit() or len(value) > 9:
        raise Invalid(f"{name} must be a whole number")
    return min(int(value), top)


#: What a resource sorts by for a parameter of each type (its smallest value ascending, its
#: largest descending; FHIR R4 §3.1.1.5.10 leaves multi-valued elements to the server).
_SORT_VALUE: dict[str, tuple[Any, Any, Any]] = {
    "string": (FhirStringIndexRow, FhirStringIndexRow.normalized, FhirStringIndexRow.normalized),
    "token": (FhirTokenIndexRow, FhirTokenIndexRow.code, FhirTokenIndexRow.code),
    "date": (FhirDateIndexRow, FhirDateIndexRow.low, FhirDateIndexRow.high),
}


def _sort_key(resource_type: str, key: str) -> Any:
    """One ``_sort`` key as an ORDER BY term; resources without a value come last."""
    descending, name = key.startswith("-"), key.lstrip("-")
    column = _SORTABLE.get(name)
    if column is not None:
        return column.desc() if descending else column.asc()
    param = parameter(resource_type, name)
    if param is None or param.type not in _SORT_VALUE:
        raise Invalid(f"_sort by {name[:64]!r} is not supported for {resource_type}")
    table, low, high = _SORT_VALUE[param.type]
    value = (
        select(func.max(high) if descending else func.min(low))
        .where(table.row_id == FhirResourceRow.row_id, table.name == param.name)
        .scalar_subquery()
    )
    return (value.desc() if descending else value.asc()).nulls_last()


def _control(request: SearchRequest, name: str, value: str, resource_type: str) -> None:
    if name == "_count":
        request.count = page_number(name, value, MAX_COUNT)
    elif name == "_offset":
        request.offset = page_number(name, value, 10**9)
    elif name == "_total":
        if value not in ("none", "estimate", "accurate"):
            raise Invalid("_total must be none, estimate or accurate")
        request.total = value != "none"
    elif name == "_sort":
        request.order.extend(_sort_key(resource_type, key) for key in value.split(",")[:5])


def _inclusion(request: SearchRequest, resource_type: str, name: str, value: str) -> None:
    """``_include=Source:param[:Target]`` (Source must be the searched type) or
    ``_revinclude=Source:param[:Target]`` (FHIR R4 §3.1.1.5.4; not iterating)."""
    parts = value.split(":")
    if len(parts) not in (2, 3) or ":iterate" in name:
        raise Invalid(f"{name} takes Type:parameter[:targetType]")
    source, param_name = parts[0], parts[1]
    target = parts[2] if len(parts) == 3 else None
    param = parameter(source, param_name)
    if param is None or param.type != "reference":
        raise Invalid(f"{source[:64]}:{param_name[:64]} is not a reference search parameter")
    if name == "_include":
        if source != resource_type:
            raise Invalid(f"_include must name the searched type {resource_type}")
        request.includes.append((source, param_name, target))
    else:
        request.revincludes.append((source, param_name, target or resource_type))


def parse_search(
    resource_type: str, pairs: Sequence[tuple[str, str]], lenient: bool
) -> SearchRequest:
    """The conditions, paging and order of a search of ``resource_type``."""
    request = SearchRequest()
    for name, value in pairs:
        if name in _CONTROL:
            _control(request, name, value, resource_type)
            if name in ("_sort", "_total"):
                request.controls.append((name, value))
            continue
        if name in ("_include", "_revinclude"):
            _inclusion(request, resource_type, name, value)
            request.controls.append((name, value))
            continue
        condition = _condition(resource_type, name, value, lenient)
        if condition is not None:
            request.conditions.append(condition)
            request.used.append((name, value))
    request.order.append(FhirResourceRow.row_id.asc())  # a stable order for paging
    return request


def restricted_to(resource_type: str, restrictions: Sequence[frozenset[tuple[str, str]]]) -> Any:
    """The SQL condition a set of restricted scopes allows: any one scope's restrictions, all
    of them (SMART App Launch 2.x, scopes §finer-grained-resource-constraints-using-search-
    parameters). A restriction fhirgate cannot evaluate matches nothing (fail closed)."""
    allowed = []
    for restriction in restrictions:
        try:
            parsed = parse_search(resource_type, sorted(restriction), lenient=False)
        except Invalid:
            continue
        allowed.append(and_(*parsed.conditions))
    return or_(*allowed) if allowed else false()
