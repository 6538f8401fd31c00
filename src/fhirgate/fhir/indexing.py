"""Search values extracted from a resource when it is written (FHIR R4 §3.1.1), so that searches
read indexed tables and never scan JSON at query time.

* string: each text of the element (HumanName and Address parts included), normalized —
  accents removed, case folded — for the default "starts with" and ``:contains`` matches, and as
  written for ``:exact``;
* token: ``(system, code)`` of codes, Codings, CodeableConcepts, Identifiers and booleans;
* reference: ``(type, id)`` of relative or absolute references;
* date: the instant range ``[low, high)`` a date, dateTime, instant or Period covers, in epoch
  seconds (a partial date covers its whole year, month or day; FHIR R4 §3.1.1.5.3).
"""

from __future__ import annotations

import calendar
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from fhirgate.fhir.search_params import COMMON, PARAMETERS, SearchParam

__all__ = ["FAR_FUTURE", "FAR_PAST", "Index", "date_range", "index", "normalize", "reference_of"]

FAR_PAST = -(2**62)
FAR_FUTURE = 2**62
_MAX_TEXT = 255

_DATE = re.compile(
    r"(?P<y>\d{4})(?:-(?P<m>\d{2})(?:-(?P<d>\d{2})"
    r"(?:T(?P<H>\d{2}):(?P<M>\d{2})(?::(?P<S>\d{2})(?:\.(?P<f>\d+))?)?"
    r"(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?"
)
_REFERENCE = re.compile(r"(?:^|/)([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$")


@dataclass
class Index:
    """Every search value of one resource, ready for the index tables."""

    strings: list[tuple[str, str, str]] = field(default_factory=list)  # name, normalized, exact
    tokens: list[tuple[str, str | None, str]] = field(default_factory=list)  # name, system, code
    references: list[tuple[str, str, str]] = field(default_factory=list)  # name, type, id
    dates: list[tuple[str, int, int]] = field(default_factory=list)  # name, low, high


def normalize(text: str) -> str:
    """Accents removed, case folded: how string parameters compare (FHIR R4 §3.1.1.5.9)."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def _epoch(moment: datetime) -> int:
    return calendar.timegm(moment.utctimetuple())


def date_range(text: str) -> tuple[int, int] | None:
    """The ``[low, high)`` epoch-second range a FHIR date/dateTime/instant covers; ``None`` if
    the text is not one. Without a zone, UTC."""
    match = _DATE.fullmatch(text.strip())
    if match is None:
        return None
    parts = match.groupdict()
    try:
        year = int(parts["y"])
        if parts["m"] is None:
            start = datetime(year, 1, 1, tzinfo=UTC)
            return _epoch(start), _epoch(start.replace(year=year + 1))
        month = int(parts["m"])
        if parts["d"] is None:
            start = datetime(year, month, 1, tzinfo=UTC)
            days = calendar.monthrange(year, month)[1]
            return _epoch(start), _epoch(start + timedelta(days=days))
        day = datetime(year, month, int(parts["d"]), tzinfo=UTC)
        if parts["H"] is None:
            return _epoch(day), _epoch(day + timedelta(days=1))
        moment = day.replace(hour=int(parts["H"]), minute=int(parts["M"]))
        zone = parts["tz"]
        if zone and zone != "Z":
            sign = 1 if zone[0] == "+" else -1
            moment -= sign * timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6]))
        if parts["S"] is None:
            return _epoch(moment), _epoch(moment) + 60
        moment = moment.replace(second=int(parts["S"]))
        return _epoch(moment), _epoch(moment) + 1
    except ValueError:  # 2023-02-30 and the like
        return None


def _walk(value: Any, path: list[str]) -> Iterator[Any]:
    if isinstance(value, list):
        for item in value:
            yield from _walk(item, path)
        return
    if not path:
        yield value
        return
    if isinstance(value, dict) and path[0] in value:
        yield from _walk(value[path[0]], path[1:])


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):  # HumanName, Address
        for key in ("text", "family", "given", "prefix", "suffix", "line", "city", "district",
                    "state", "postalCode", "country"):  # fmt: skip
            item = value.get(key)
            for text in item if isinstance(item, list) else [item]:
                if isinstance(text, str):
                    yield text


def _tokens(value: Any) -> Iterator[tuple[str | None, str]]:
    if isinstance(value, bool):
        yield None, "true" if value else "false"
    elif isinstance(value, str):
        yield None, value
    elif isinstance(value, dict):
        if isinstance(value.get("coding"), list):  # CodeableConcept
            for coding in value["coding"]:
                yield from _tokens(coding)
        code = value.get("code", value.get("value"))  # Coding / Identifier
        if isinstance(code, str):
            system = value.get("system")
            yield (system if isinstance(system, str) else None), code


def reference_of(text: str) -> tuple[str, str] | None:
    """``(type, id)`` of a relative or absolute reference."""
    match = _REFERENCE.search(text)
    return None if match is None else (match.group(1), match.group(2))


def _dates(value: Any) -> Iterator[tuple[int, int]]:
    if isinstance(value, str):
        covered = date_range(value)
        if covered is not None:
            yield covered
    elif isinstance(value, dict) and ("start" in value or "end" in value):  # Period
        start = date_range(value["start"]) if isinstance(value.get("start"), str) else None
        end = date_range(value["end"]) if isinstance(value.get("end"), str) else None
        yield (start[0] if start else FAR_PAST), (end[1] if end else FAR_FUTURE)


def _add(entries: Index, param: SearchParam, value: Any) -> None:
    if param.type == "string":
        for text in _strings(value):
            entries.strings.append((param.name, normalize(text)[:_MAX_TEXT], text[:_MAX_TEXT]))
    elif param.type == "token":
        for system, code in _tokens(value):
            entries.tokens.append((param.name, system, code[:_MAX_TEXT]))
    elif param.type == "reference":
        written = value.get("reference") if isinstance(value, dict) else None
        target = reference_of(written) if isinstance(written, str) else None
        if target is not None and param.target in (None, target[0]):
            entries.references.append((param.name, *target))
    elif param.type == "date":
        for low, high in _dates(value):
            entries.dates.append((param.name, low, high))


def index(resource_type: str, content: dict[str, Any]) -> Index:
    """The search values of ``content``."""
    entries = Index()
    for param in (*PARAMETERS.get(resource_type, ()), *COMMON):
        for path in param.paths:
            for value in _walk(content, path.split(".")):
                _add(entries, param, value)
    return entries
