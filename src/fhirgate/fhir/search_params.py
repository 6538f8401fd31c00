"""The search parameters fhirgate indexes (FHIR R4 §3.1.1 "Search"; definitions after the R4
SearchParameter registry, reduced to the elements each expression selects).

A parameter has a type — ``string``, ``token``, ``reference`` or ``date`` — and the element
paths its values come from. ``patient`` and ``subject`` are references; ``patient`` keeps only
references to a Patient. Every resource type also has ``_id``, ``_lastUpdated``, ``_tag`` and
``_profile``.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["COMMON", "PARAMETERS", "SearchParam", "parameter"]


@dataclass(frozen=True, slots=True)
class SearchParam:
    name: str
    type: str  # string | token | reference | date
    paths: tuple[str, ...]
    target: str | None = None  # reference: the one resource type it may point to


def _p(name: str, kind: str, *paths: str, target: str | None = None) -> SearchParam:
    return SearchParam(name, kind, paths, target)


_SUBJECT = (
    _p("patient", "reference", "subject", target="Patient"),
    _p("subject", "reference", "subject"),
)
_PATIENT = (_p("patient", "reference", "patient", target="Patient"),)
_NAMES = (
    _p("name", "string", "name"),
    _p("family", "string", "name.family"),
    _p("given", "string", "name.given"),
    _p("identifier", "token", "identifier"),
)

#: Parameters every resource type has (FHIR R4 §3.1.1.4.1).
COMMON: tuple[SearchParam, ...] = (
    _p("_tag", "token", "meta.tag"),
    _p("_profile", "token", "meta.profile"),
)

PARAMETERS: dict[str, tuple[SearchParam, ...]] = {
    "Patient": (
        *_NAMES,
        _p("birthdate", "date", "birthDate"),
        _p("gender", "token", "gender"),
    ),
    "Practitioner": _NAMES,
    "Organization": (
        _p("name", "string", "name", "alias"),
        _p("identifier", "token", "identifier"),
    ),
    "Observation": (
        *_SUBJECT,
        _p("code", "token", "code"),
        _p("category", "token", "category"),
        _p("date", "date", "effectiveDateTime", "effectivePeriod", "effectiveInstant"),
        _p("status", "token", "status"),
    ),
    "Condition": (
        *_SUBJECT,
        _p("code", "token", "code"),
        _p("category", "token", "category"),
        _p("clinical-status", "token", "clinicalStatus"),
        _p("onset-date", "date", "onsetDateTime", "onsetPeriod"),
    ),
    "Encounter": (
        *_SUBJECT,
        _p("status", "token", "status"),
        _p("class", "token", "class"),
        _p("type", "token", "type"),
        _p("date", "date", "period"),
    ),
    "MedicationRequest": (
        *_SUBJECT,
        _p("status", "token", "status"),
        _p("intent", "token", "intent"),
        _p("code", "token", "medicationCodeableConcept"),
        _p("authoredon", "date", "authoredOn"),
    ),
    "AllergyIntolerance": (
        *_PATIENT,
        _p("code", "token", "code"),
        _p("clinical-status", "token", "clinicalStatus"),
        _p("date", "date", "recordedDate"),
    ),
    "Procedure": (
        *_SUBJECT,
        _p("code", "token", "code"),
        _p("status", "token", "status"),
        _p("date", "date", "performedDateTime", "performedPeriod"),
    ),
    "Immunization": (
        *_PATIENT,
        _p("vaccine-code", "token", "vaccineCode"),
        _p("status", "token", "status"),
        _p("date", "date", "occurrenceDateTime"),
    ),
    "DiagnosticReport": (
        *_SUBJECT,
        _p("code", "token", "code"),
        _p("category", "token", "category"),
        _p("status", "token", "status"),
        _p("date", "date", "effectiveDateTime", "effectivePeriod"),
    ),
    "DocumentReference": (
        *_SUBJECT,
        _p("type", "token", "type"),
        _p("category", "token", "category"),
        _p("status", "token", "status"),
        _p("date", "date", "date"),
    ),
}


def parameter(resource_type: str, name: str) -> SearchParam | None:
    """The indexed parameter ``name`` of ``resource_type`` (``_tag`` and ``_profile`` for all)."""
    for param in (*PARAMETERS.get(resource_type, ()), *COMMON):
        if param.name == name:
            return param
    return None
