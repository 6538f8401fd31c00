"""Resource validation with the ``fhir.resources`` models (FHIR R4 §3.1.0.1.5: a resource that
fails validation is refused with an OperationOutcome naming each problem).

R4 (4.0.1) resources are checked against the R4B (4.3) models of ``fhir.resources`` — the one
R4-line release it ships; the clinical resources this API is built around (Patient, Observation,
Condition, Encounter, Medication*, AllergyIntolerance, Procedure, Immunization,
DiagnosticReport, DocumentReference, Practitioner, Organization) have the same structure in both.
The few R4 types that R4B dropped get the structural checks of the REST layer only. STU3 has
its own models; DSTU2, which ``fhir.resources`` does not model, gets the structural checks. Checked:
element names (unknown ones are refused), cardinality, required elements and datatype formats;
not checked: terminology bindings and profiles.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import import_module
from typing import Any

from pydantic import ValidationError

from fhirgate.fhir.errors import InvalidResource

__all__ = ["validate"]

_MAX_PROBLEMS = 50


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


def validate(resource_type: str, content: dict[str, Any], models: str | None = "R4B") -> None:
    """Raise :class:`InvalidResource` listing every problem of ``content``, checked against
    the ``fhir.resources`` package ``models`` (``R4B`` for R4, ``STU3``; ``None``: DSTU2, which
    it does not model: structural checks only)."""
    model = None if models is None else _model(models, resource_type)
    if model is None:
        return
    try:
        model.model_validate(content)
    except ValidationError as exc:
        problems = [
            (_path(resource_type, tuple(error["loc"])), str(error["msg"]))
            for error in exc.errors(include_url=False, include_input=False)[:_MAX_PROBLEMS]
        ]
        raise InvalidResource(problems) from None
