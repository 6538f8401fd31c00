"""Resource validation (FHIR R4 §3.1.0.1.5: a resource that fails validation is refused with an
OperationOutcome naming each problem, one issue per problem with its ``expression``).

Two checks, and every problem of both is reported, not only the first:

* structure, with the ``fhir.resources`` models: element names (unknown ones are refused),
  datatypes and their formats. R4 (4.0.1) resources are checked against its R4B (4.3) models —
  the one R4-line release it ships; the clinical resources this API is built around have the
  same structure in both. STU3 has its own models; DSTU2, which ``fhir.resources`` does not
  model, gets the structural checks of the REST layer only.
* for R4, against the official R4 definitions (:mod:`fhirgate.fhir.definitions`), every element
  of the resource, nested ones and contained resources included: mandatory elements present
  (``min``), at most one type of a choice element (``value[x]``), and the codes of every
  ``code`` element with a **required** binding (FHIR R4 §4.1.0.1), e.g. ``Observation.status``
  and ``Patient.contact.gender``. These replace the models' own checks of the same rules, which
  stop at the first failure.

Not checked: bindings that are not required (extensible, preferred, example), required
bindings on Coding/CodeableConcept, value sets the core package cannot enumerate (MIME types,
currencies), invariants and profiles.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache
from importlib import import_module
from typing import Any

from pydantic import ValidationError

from fhirgate.fhir import definitions
from fhirgate.fhir.errors import InvalidResource, Problem

__all__ = ["validate"]

#: The most problems one OperationOutcome lists.
MAX_PROBLEMS = 50
#: The models' checks of mandatory and choice elements, which the R4 definitions replace (the
#: models' stop at the first failure): their error types, and their choice errors' messages.
_CARDINALITY = frozenset({"missing", "model_field_validation.missing"})
_ONE_OF_MANY = ("Value error, Any of one field value is expected", "Value error, Expect any of")


def _replaced(error: Any) -> bool:
    return error["type"] in _CARDINALITY or str(error["msg"]).startswith(_ONE_OF_MANY)


@lru_cache(maxsize=512)
def _model(models: str, resource_type: str) -> Any:
    try:
        return import_module(f"fhir.resources.{models}").get_fhir_model_class(resource_type)
    except (KeyError, ValueError, LookupError):
        return None


def _path(resource_type: str, location: tuple[int | str, ...]) -> str:
    path = resource_type
    for part in location:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def _structure(model: Any, resource_type: str, content: dict[str, Any], r4: bool) -> list[Problem]:
    try:
        model.model_validate(content)
    except ValidationError as exc:
        return [
            Problem(_path(resource_type, tuple(error["loc"])), str(error["msg"]))
            for error in exc.errors(include_url=False, include_input=False)
            if not (r4 and _replaced(error))
        ]
    return []


def _items(location: str, name: str, value: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(value, list):
        for index, item in enumerate(value):
            yield f"{location}.{name}[{index}]", item
    else:
        yield f"{location}.{name}", value


def _given(content: dict[str, Any], name: str) -> bool:
    """A primitive is present with a value or with only its ``_name`` extensions."""
    return content.get(name) is not None or content.get(f"_{name}") is not None


def _walk(
    defs: definitions.Definitions,
    type_name: str,
    parent: str | None,
    content: dict[str, Any],
    location: str,
    problems: list[Problem],
) -> None:
    """The definitions' rules on one JSON object of ``type_name`` at ``parent``, and on
    everything inside it."""
    for element in defs.rules(type_name, parent):
        present = [name for name in element.json_names if _given(content, name)]
        here = f"{location}.{element.name}"
        if element.min > 0 and not present:
            problems.append(Problem(here, f"{element.name} is required", "required"))
        if len(present) > 1:
            found = ", ".join(present)
            problems.append(Problem(here, f"only one {element.name} may be given: {found}"))
    named = defs.named(type_name, parent)
    for key, value in content.items():
        if key not in named:
            continue  # unknown names are the models' to report
        element, carried = named[key]
        for here, item in _items(location, key, value):
            if element.codes is not None:
                if isinstance(item, str) and item not in element.codes:
                    problems.append(
                        Problem(
                            here,
                            f"{item[:64]!r} is not a code of the required value set"
                            f" {element.value_set}",
                            "code-invalid",
                        )
                    )
            elif isinstance(item, dict):
                if element.children is not None:
                    _walk(defs, type_name, element.children, item, here, problems)
                elif carried == "Resource":
                    kind = item.get("resourceType")
                    if isinstance(kind, str) and kind in defs.types:
                        _walk(defs, kind, None, item, here, problems)
                elif carried in defs.types:
                    _walk(defs, carried, None, item, here, problems)


def definition_problems(resource_type: str, content: dict[str, Any]) -> list[Problem]:
    """What the R4 definitions find wrong with ``content`` (cardinality, choices, required
    bindings), in document order."""
    problems: list[Problem] = []
    defs = definitions.r4()
    if resource_type in defs.types:
        _walk(defs, resource_type, None, content, resource_type, problems)
    return problems


def validate(resource_type: str, content: dict[str, Any], models: str | None = "R4B") -> None:
    """Raise :class:`InvalidResource` listing every problem of ``content`` (at most
    :data:`MAX_PROBLEMS`), checked against the ``fhir.resources`` package ``models`` (``R4B``
    for R4, with the R4 definitions too; ``STU3``; ``None``: DSTU2, which it does not model:
    structural checks only)."""
    model = None if models is None else _model(models, resource_type)
    if model is None:
        return
    r4 = models == "R4B"
    problems = _structure(model, resource_type, content, r4)
    if r4:
        reported = {problem.expression for problem in problems}
        problems += [
            problem
            for problem in definition_problems(resource_type, content)
            if problem.expression not in reported
        ]
    if problems:
        raise InvalidResource(problems[:MAX_PROBLEMS])
