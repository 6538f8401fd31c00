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
from datetime import date
from typing import Any

from fhirgate.fhir.search_params import COMMON, PARAMETERS, SearchParam

__all__ = ["FAR_FUTURE", "FAR_PAST", "Index", "date_range", "index", "normalize", "reference_of"]

FAR_PAST = -(2**62)
FAR_FUTURE = 2**62
_MAX_TEXT = 255

#: FHIR R4 §2.24.0.1 date, dateTime and instant, ASCII digits only (``\d`` would take any
#: script's digits); fields out of range are refused by :func:`date_range`.
_DATE = re.compile(
    r"(?P<y>[0-9]{4})(?:-(?P<m>[0-9]{2})(?:-(?P<d>[0-9]{2})"
    r"(?:T(?P<H>[0-9]{2}):(?P<M>[0-9]{2})(?::(?P<S>[0-9]{2})(?:\.(?P<f>[0-9]+))?)?"
    r"(?P<tz>Z|[+-][0-9]{2}:[0-9]{2})?)?)?)?"
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


_EPOCH_DAY = date(1970, 1, 1).toordinal()
_DAY = 86400


def _midnight(year: int, month: int, day: int) -> int:
    """Epoch seconds of a day's start in UTC; ``ValueError`` for a day that does not exist."""
    return (date(year, month, day).toordinal() - _EPOCH_DAY) * _DAY


def _zone_offset(zone: str | None) -> int | None:
    """Seconds east of UTC of a FHIR zone (``Z``, ``+hh:mm`` up to ``+14:00``); ``None`` if it
    is not one."""
    if zone is None or zone == "Z":
        return 0
    hours, minutes = int(zone[1:3]), int(zone[4:6])
    if minutes > 59 or hours > 14 or (hours == 14 and minutes):
        return None
    return (1 if zone[0] == "+" else -1) * (hours * 3600 + minutes * 60)


def date_range(text: str) -> tuple[int, int] | None:
    """The ``[low, high)`` epoch-second range a FHIR date/dateTime/instant covers; ``None`` if
    the text is not one. Without a zone, UTC. Integer arithmetic throughout: the edges of the
    calendar (``0001-01-01T00:00+14:00``, ``9999-12-31T23:59-14:00``) are ranges like any
    other, outside what ``datetime`` can hold."""
    match = _DATE.fullmatch(text.strip())
    if match is None:
        return None
    parts = match.groupdict()
    try:
        year = int(parts["y"])
        if parts["m"] is None:
            low = _midnight(year, 1, 1)
            return low, low + (366 if calendar.isleap(year) else 365) * _DAY
        month = int(parts["m"])
        if parts["d"] is None:
            low = _midnight(year, month, 1)
            return low, low + calendar.monthrange(year, month)[1] * _DAY
        low = _midnight(year, month, int(parts["d"]))
    except ValueError:  # 0000, 2023-02-30 and the like
        return None
    if parts["H"] is None:
        return low, low + _DAY
    hour, minute, offset = int(parts["H"]), int(parts["M"]), _zone_offset(parts["tz"])
    if hour > 23 or minute > 59 or offset is None:
        return None
    moment = low + hour * 3600 + minute * 60 - offset
    if parts["S"] is None:
        return moment, moment + 60
    second = int(parts["S"])
    if second > 60:  # 60: a leap second
        return None
    return moment + second, moment + second + 1


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
