"""The search result parameters ``_summary`` and ``_elements`` (FHIR R4 §3.1.1.5.8 "Summary",
§3.1.1.5.9 "Elements"), on search and on read (FHIR R4 http.html §3.1.0.1.7: they apply to
any interaction that returns resources):

* ``_summary=true``: only the elements the R4 definitions mark ``isSummary`` (in backbone
  elements too; a kept datatype is kept whole);
* ``_summary=text``: ``text``, ``id``, ``meta`` and the top-level mandatory elements;
* ``_summary=data``: everything but ``text``;
* ``_summary=count`` (search only): a ``searchset`` Bundle with ``total`` and no entries;
* ``_summary=false``: everything;
* ``_elements=a,b``: the listed top-level elements (``value`` names every ``value[x]``), the
  mandatory ones, ``id`` and ``meta``.

A subsetted resource carries the ``SUBSETTED`` tag in ``meta.tag``, so that no client writes it
back over the full one. The element lists come from :mod:`fhirgate.fhir.definitions` (R4):
the STU3 and DSTU2 bases serve ``_summary=count`` and ``false`` only. An unknown value or
element name, ``_summary`` given twice, or ``_summary`` with ``_elements`` is a 400.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fhirgate.fhir import definitions
from fhirgate.fhir.errors import Invalid

__all__ = ["SUBSETTED", "SUMMARIES", "Subset", "parse_subset"]

#: FHIR R4 §3.1.1.5.8: the tag of a resource that is not complete.
SUBSETTED = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "SUBSETTED",
    "display": "subsetted",
}
SUMMARIES = ("true", "text", "data", "count", "false")
#: Kept in every subset.
_ALWAYS = frozenset({"resourceType", "id", "meta"})
_MAX_ELEMENTS = 100


@dataclass(frozen=True, slots=True)
class Subset:
    """What part of each resource an answer carries."""

    summary: str | None = None
    #: ``_elements``: the JSON names asked for.
    elements: frozenset[str] | None = None

    @property
    def count_only(self) -> bool:
        return self.summary == "count"

    @property
    def subsets(self) -> bool:
        return self.summary in ("true", "text", "data") or self.elements is not None

    def check_version(self, r4: bool) -> None:
        """Only R4 has the definitions ``true``, ``text``, ``data`` and ``_elements`` need."""
        if self.subsets and not r4:
            raise Invalid("_summary=true|text|data and _elements are served on the R4 base only")

    def apply(self, resource: dict[str, Any], elements: bool = True) -> dict[str, Any]:
        """``resource`` as this subset shows it (a copy; the SUBSETTED tag added). With
        ``elements=False`` (included resources) ``_elements`` is not applied."""
        kind = resource.get("resourceType")
        wanted = self.elements if elements else None
        if not isinstance(kind, str) or not (self.summary in ("true", "text", "data") or wanted):
            return resource
        defs = definitions.r4()
        if self.summary == "data":
            subset = {key: value for key, value in resource.items() if key != "text"}
        elif self.summary == "true":
            subset = _summary(defs, kind, None, resource)
        else:
            keep = _mandatory(defs, kind) | (wanted or frozenset({"text"}))
            subset = {key: value for key, value in resource.items() if _named(key) in keep}
        return _tagged(subset)


def _named(key: str) -> str:
    """The element a JSON name belongs to (``_birthDate`` holds ``birthDate``'s extensions)."""
    return key[1:] if key.startswith("_") else key


def _mandatory(defs: definitions.Definitions, kind: str) -> frozenset[str]:
    names = {
        name for element in defs.elements(kind) if element.min > 0 for name in element.json_names
    }
    return _ALWAYS | names


def _summary(
    defs: definitions.Definitions, kind: str, parent: str | None, content: dict[str, Any]
) -> dict[str, Any]:
    """The summary elements of ``content`` (a resource, or a backbone element at ``parent``)."""
    named = defs.named(kind, parent)
    kept: dict[str, Any] = {}
    for key, value in content.items():
        found = named.get(_named(key))
        if key == "resourceType":
            kept[key] = value
        elif found is not None and found[0].summary:
            element = found[0]
            if element.children is not None and not key.startswith("_"):
                value = _summary_items(defs, kind, element.children, value)
            kept[key] = value
    return kept


def _summary_items(defs: definitions.Definitions, kind: str, parent: str, value: Any) -> Any:
    if isinstance(value, list):
        return [_summary_items(defs, kind, parent, item) for item in value]
    return _summary(defs, kind, parent, value) if isinstance(value, dict) else value


def _tagged(resource: dict[str, Any]) -> dict[str, Any]:
    meta = dict(resource.get("meta") or {})
    tags = [tag for tag in meta.get("tag", []) if tag != SUBSETTED]
    meta["tag"] = [*tags, SUBSETTED]
    return {**resource, "meta": meta}


def _element_names(defs: definitions.Definitions, resource_type: str, value: str) -> set[str]:
    names: set[str] = set()
    top = defs.elements(resource_type)
    by_name = {element.name.removesuffix("[x]"): element for element in top}
    named = defs.named(resource_type)
    for item in value.split(","):
        name = item.strip()
        if name in by_name:
            names.update(by_name[name].json_names)
        elif name in named or name in _ALWAYS:
            names.add(name)
        else:
            raise Invalid(f"_elements: {name[:64]!r} is not an element of {resource_type}")
    return names


def parse_subset(
    resource_type: str, pairs: Sequence[tuple[str, str]], *, search: bool = True
) -> Subset:
    """The ``_summary`` and ``_elements`` of a request's parameters (others are ignored)."""
    summaries = [value for name, value in pairs if name == "_summary"]
    listed = [value for name, value in pairs if name == "_elements"]
    if len(summaries) > 1:
        raise Invalid("_summary is given more than once")
    summary = summaries[0] if summaries else None
    if summary is not None and summary not in SUMMARIES:
        raise Invalid("_summary must be true, text, data, count or false")
    if summary == "count" and not search:
        raise Invalid("_summary=count applies to searches only")
    if not listed:
        return Subset(summary)
    if summary not in (None, "false"):
        raise Invalid("use _summary or _elements, not both")
    if sum(value.count(",") + 1 for value in listed) > _MAX_ELEMENTS:
        raise Invalid(f"_elements lists at most {_MAX_ELEMENTS} elements")
    defs = definitions.r4()
    if resource_type not in defs.types:
        raise Invalid(f"_elements is not served for {resource_type[:64]}")
    names: set[str] = set()
    for value in listed:
        names |= _element_names(defs, resource_type, value)
    return Subset(summary, frozenset(names))
