"""FHIR search parameters to SQL over the index tables (FHIR R4 §3.1.1).

Each parameter becomes SQL text ``row_id IN (SELECT row_id FROM <index table> WHERE …)`` with
named parameters (:class:`Binder`), run as one statement (:mod:`fhirgate.storage.direct`):
building and compiling SQLAlchemy expressions cost more than the search itself
(docs/benchmarks.md). Table and column names are constants here; every value a client sends is
a bound parameter. Parameters combine with AND, comma-separated values with OR (§3.1.1.3).
Semantics:

* string: "starts with", accents and case ignored; ``:exact``; ``:contains`` (§3.1.1.5.9);
* token: ``code``, ``system|code``, ``|code`` (no system), ``system|`` (§3.1.1.5.7);
* reference: ``Type/id``, ``id`` (the type from a ``:Type`` modifier or the parameter), or an
  absolute URL ending in ``Type/id`` (§3.1.1.5.8);
* date: prefixes ``eq ne lt gt le ge sa eb ap`` compared as ranges, a partial date being the
  whole of its year, month or day (§3.1.1.5.3);
* ``_id``, ``_lastUpdated``, ``_tag``, ``_profile``; ``_count`` (default 50, at most 500: a
  larger one, of any length, is served as 500: search.html#count), ``_offset`` (fhirgate's
  paging cursor), ``_total`` (``none`` skips counting), ``_sort`` by ``_id``, ``_lastUpdated``
  or a string, token or date parameter (``-`` for descending), ``_include`` and
  ``_revinclude`` (not iterating; the included resources are confined to the caller's
  partition like the matches), ``_summary`` and ``_elements``
  (:mod:`fhirgate.fhir.subsetting`).

An unknown parameter, modifier or malformed value is a 400 OperationOutcome — unless the request
carries ``Prefer: handling=lenient``, when unknown parameters are ignored (§3.1.1.3.1). So is a
name or value with a NUL or a lone surrogate (no database stores them). :class:`Invalid` is the
only exception the parser raises, whatever the input.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from fhirgate.fhir.errors import Invalid, TooCostly
from fhirgate.fhir.indexing import date_range, normalize, reference_of
from fhirgate.fhir.search_params import SearchParam, parameter
from fhirgate.fhir.subsetting import Subset, parse_subset

__all__ = [
    "DEFAULT_COUNT",
    "MAX_COUNT",
    "Binder",
    "SearchRequest",
    "limit_repeats",
    "page_number",
    "parse_search",
    "restricted_to",
]

DEFAULT_COUNT = 50
MAX_COUNT = 500
_PREFIXES = ("eq", "ne", "lt", "gt", "le", "ge", "sa", "eb", "ap")
_CONTROL = {"_count", "_offset", "_total", "_sort", "_format"}
_SUBSET = ("_summary", "_elements")
_WHOLE_NUMBER = re.compile(r"[0-9]+")
#: What ``_lastUpdated`` compares with: instants of four-digit years (a bound beyond them is
#: moved to the edge, where it selects the same resources: none were updated before 1000).
_FIRST_INSTANT = datetime(1000, 1, 1, tzinfo=UTC)
_LAST_INSTANT = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MAX_VALUES = 100
_SORTABLE = {"_id": "fhir_resources.resource_id", "_lastUpdated": "fhir_resources.last_updated"}
#: Matches nothing (a restriction fhirgate cannot evaluate: fail closed).
NOTHING = "1 = 0"


class Binder:
    """The named parameters of one statement: each value bound gets its own ``:pN``."""

    def __init__(self) -> None:
        self.params: dict[str, Any] = {}

    def __call__(self, value: Any) -> str:
        name = f"p{len(self.params)}"
        self.params[name] = value
        return f":{name}"


def _any(conditions: Sequence[str]) -> str:
    return conditions[0] if len(conditions) == 1 else "(" + " OR ".join(conditions) + ")"


def _all(conditions: Sequence[str]) -> str:
    return conditions[0] if len(conditions) == 1 else "(" + " AND ".join(conditions) + ")"


@dataclass
class SearchRequest:
    """What a search asks for: SQL conditions on ``fhir_resources`` and their parameters,
    plus paging and order."""

    bind: Binder = field(default_factory=Binder)
    conditions: list[str] = field(default_factory=list)
    count: int = DEFAULT_COUNT
    offset: int = 0
    total: bool = True
    order: list[str] = field(default_factory=list)
    #: The parameters that made the conditions, and ``_sort``/``_total`` as given: the
    #: Bundle's links repeat them.
    used: list[tuple[str, str]] = field(default_factory=list)
    controls: list[tuple[str, str]] = field(default_factory=list)
    #: ``_include`` / ``_revinclude``: (source type, reference parameter, target type or None).
    includes: list[tuple[str, str, str | None]] = field(default_factory=list)
    revincludes: list[tuple[str, str, str | None]] = field(default_factory=list)
    #: ``_summary`` / ``_elements``: what part of each resource the Bundle carries.
    subset: Subset = field(default_factory=Subset)


def _having(table: str, conditions: Sequence[str]) -> str:
    """Resources with an index row matching ``conditions``: ``row_id IN (SELECT …)``, which
    the planners answer from the index on (name, value) — never a probe per resource."""
    where = " AND ".join(conditions)
    return f"fhir_resources.row_id IN (SELECT row_id FROM {table} WHERE {where})"  # noqa: S608


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _string(bind: Binder, param: SearchParam, modifier: str | None, value: str) -> str:
    if modifier == "exact":
        match = f"exact = {bind(value)}"
    elif modifier == "contains":
        match = f"normalized LIKE {bind(f'%{_escape_like(normalize(value))}%')} ESCAPE '\\'"
    elif modifier is None:
        match = f"normalized LIKE {bind(f'{_escape_like(normalize(value))}%')} ESCAPE '\\'"
    else:
        raise Invalid(f"modifier :{modifier} is not supported on {param.name}")
    return _having("fhir_index_strings", [f"name = {bind(param.name)}", match])


def _token(bind: Binder, param: SearchParam, modifier: str | None, value: str) -> str:
    if modifier not in (None, "not"):
        raise Invalid(f"modifier :{modifier} is not supported on {param.name}")
    conditions = [f"name = {bind(param.name)}"]
    if "|" in value:
        system, _, code = value.partition("|")
        conditions.append("system IS NULL" if system == "" else f"system = {bind(system)}")
        if code:
            conditions.append(f"code = {bind(code)}")
    else:
        conditions.append(f"code = {bind(value)}")
    found = _having("fhir_index_tokens", conditions)
    return f"NOT {found}" if modifier == "not" else found


def _reference(bind: Binder, param: SearchParam, modifier: str | None, value: str) -> str:
    target = reference_of(value)
    conditions = [f"name = {bind(param.name)}"]
    if target is None:
        wanted_type = modifier or param.target
        if modifier is not None and not modifier[:1].isupper():
            raise Invalid(f"modifier :{modifier} is not supported on {param.name}")
        conditions.append(f"target_id = {bind(value)}")
        if wanted_type is not None:
            conditions.append(f"target_type = {bind(wanted_type)}")
    else:
        conditions.append(f"target_type = {bind(target[0])}")
        conditions.append(f"target_id = {bind(target[1])}")
    return _having("fhir_index_references", conditions)


def _prefixed(value: str) -> tuple[str, tuple[int, int]]:
    prefix = value[:2] if value[:2] in _PREFIXES else "eq"
    text = value[2:] if value[:2] in _PREFIXES else value
    covered = date_range(text)
    if covered is None:
        raise Invalid(f"{value[:40]!r} is not a FHIR date")
    return prefix, covered


def _compare(bind: Binder, prefix: str, low: str, high: str, search: tuple[Any, Any]) -> str:
    """FHIR R4 §3.1.1.5.3: the target range ``[low, high)`` (SQL expressions) against the
    search range."""
    start, end = search
    if prefix in ("eq", "ne"):
        within = f"({low} >= {bind(start)} AND {high} <= {bind(end)})"
        return within if prefix == "eq" else f"NOT {within}"
    if prefix == "ap":  # approximately: overlapping
        return f"({low} < {bind(end)} AND {high} > {bind(start)})"
    column, operator, bound = {
        "lt": (low, "<", start),
        "gt": (high, ">", end),
        "le": (low, "<", end),
        "ge": (high, ">", start),
        "sa": (low, ">=", end),
        "eb": (high, "<=", start),
    }[prefix]
    return f"{column} {operator} {bind(bound)}"


def _date(bind: Binder, param: SearchParam, modifier: str | None, value: str) -> str:
    if modifier is not None:
        raise Invalid(f"modifier :{modifier} is not supported on {param.name}")
    prefix, search = _prefixed(value)
    compared = _compare(bind, prefix, "low", "high", search)
    return _having("fhir_index_dates", [f"name = {bind(param.name)}", compared])


def _instant(epoch: int) -> datetime:
    """Epoch seconds as an instant between :data:`_FIRST_INSTANT` and :data:`_LAST_INSTANT`."""
    first = int((_FIRST_INSTANT - _EPOCH).total_seconds())
    last = int((_LAST_INSTANT - _EPOCH).total_seconds())
    return _EPOCH + timedelta(seconds=min(max(epoch, first), last))


def _last_updated(bind: Binder, value: str) -> str:
    prefix, (start, end) = _prefixed(value)
    as_time = (_instant(start), _instant(end))
    moment = "fhir_resources.last_updated"  # an instant: its range is the instant itself
    return _compare(bind, prefix, moment, moment, as_time)


_BUILDERS = {"string": _string, "token": _token, "reference": _reference, "date": _date}


def _condition(
    bind: Binder, resource_type: str, name: str, value: str, lenient: bool
) -> str | None:
    base, _, modifier = name.partition(":")
    values = value.split(",")
    if len(values) > _MAX_VALUES or not all(values):
        raise Invalid(f"parameter {base} has an empty or too long list of values")
    if base == "_id":
        return f"fhir_resources.resource_id IN ({', '.join(bind(item) for item in values)})"
    if base == "_lastUpdated":
        return _any([_last_updated(bind, item) for item in values])
    param = parameter(resource_type, base)
    if param is None:
        if lenient:
            return None
        raise Invalid(f"unknown search parameter {base[:64]!r} for {resource_type}")
    build = _BUILDERS[param.type]
    return _any([build(bind, param, modifier or None, item) for item in values])


def page_number(name: str, value: str, top: int) -> int:
    """A ``_count`` or ``_offset`` value: a whole number (ASCII digits, any length), capped at
    ``top``."""
    if not _WHOLE_NUMBER.fullmatch(value):
        raise Invalid(f"{name} must be a whole number")
    digits = value.lstrip("0") or "0"
    return top if len(digits) > len(str(top)) else min(int(digits), top)


#: What a resource sorts by for a parameter of each type (its smallest value ascending, its
#: largest descending; FHIR R4 §3.1.1.5.10 leaves multi-valued elements to the server):
#: (index table, column ascending, column descending).
_SORT_VALUE = {
    "string": ("fhir_index_strings", "normalized", "normalized"),
    "token": ("fhir_index_tokens", "code", "code"),
    "date": ("fhir_index_dates", "low", "high"),
}


def _sort_key(bind: Binder, resource_type: str, key: str) -> str:
    """One ``_sort`` key as an ORDER BY term; resources without a value come last."""
    descending, name = key.startswith("-"), key.lstrip("-")
    direction = "DESC" if descending else "ASC"
    column = _SORTABLE.get(name)
    if column is not None:
        return f"{column} {direction}"
    param = parameter(resource_type, name)
    if param is None or param.type not in _SORT_VALUE:
        raise Invalid(f"_sort by {name[:64]!r} is not supported for {resource_type}")
    table, low, high = _SORT_VALUE[param.type]
    value = f"max({high})" if descending else f"min({low})"
    return (
        f"(SELECT {value} FROM {table} s WHERE s.row_id = fhir_resources.row_id"  # noqa: S608
        f" AND s.name = {bind(param.name)}) {direction} NULLS LAST"
    )


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
        keys = value.split(",")[:5]
        request.order.extend(_sort_key(request.bind, resource_type, key) for key in keys)


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


#: Parameters each of whose repetitions adds work to one search: a statement per ``_include``
#: and ``_revinclude``, ORDER BY terms per ``_sort``.
REPEATABLE = ("_include", "_revinclude", "_sort")


def limit_repeats(pairs: Sequence[tuple[str, str]], most: int) -> None:
    """At most ``most`` of each of :data:`REPEATABLE` (``_include:iterate`` counts as
    ``_include``); more is a 400 ``too-costly`` OperationOutcome, before any work."""
    counts = Counter(name.partition(":")[0] for name, _ in pairs)
    for name in REPEATABLE:
        if counts[name] > most:
            raise TooCostly(f"a search takes at most {most} {name} parameters")


def parse_search(
    resource_type: str,
    pairs: Sequence[tuple[str, str]],
    lenient: bool,
    bind: Binder | None = None,
) -> SearchRequest:
    """The conditions, paging and order of a search of ``resource_type`` (their parameters
    bound in ``bind``, a new :class:`Binder` by default)."""
    request = SearchRequest(bind or Binder())
    for name, value in pairs:
        _check_text(name, value)
    request.subset = parse_subset(resource_type, pairs)
    for name, value in pairs:
        if name in _SUBSET:
            request.controls.append((name, value))
            continue
        if name in _CONTROL:
            _control(request, name, value, resource_type)
            if name in ("_sort", "_total"):
                request.controls.append((name, value))
            continue
        if name in ("_include", "_revinclude"):
            _inclusion(request, resource_type, name, value)
            request.controls.append((name, value))
            continue
        condition = _condition(request.bind, resource_type, name, value, lenient)
        if condition is not None:
            request.conditions.append(condition)
            request.used.append((name, value))
    request.order.append("fhir_resources.row_id ASC")  # a stable order for paging
    return request


def _check_text(name: str, value: str) -> None:
    """No NUL and no lone surrogate: text every database stores (PostgreSQL refuses both)."""
    for text in (name, value):
        if "\x00" in text:
            raise Invalid("search parameters cannot contain NUL")
        try:
            text.encode()
        except UnicodeEncodeError:
            raise Invalid("search parameters must be valid Unicode text") from None


def restricted_to(
    resource_type: str, restrictions: Sequence[frozenset[tuple[str, str]]], bind: Binder
) -> str:
    """The SQL condition a set of restricted scopes allows: any one scope's restrictions, all
    of them (SMART App Launch 2.x, scopes §finer-grained-resource-constraints-using-search-
    parameters), its parameters bound in ``bind``. A restriction fhirgate cannot evaluate
    matches nothing (fail closed)."""
    allowed = []
    for restriction in restrictions:
        try:
            parsed = parse_search(resource_type, sorted(restriction), False, bind)
        except Invalid:
            continue  # values it bound before failing are never referenced
        if parsed.conditions:  # a restriction that names no resources grants none
            allowed.append(_all(parsed.conditions))
    return _any(allowed) if allowed else NOTHING
