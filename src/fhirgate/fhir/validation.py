"""Resource validation with the ``fhir.resources`` models (FHIR R4 §3.1.0.1.5: a resource that
fails validation is refused with an OperationOutcome naming each problem).

R4 (4.0.1) resources are checked against the R4B (4.3) models of ``fhir.resources`` — the one
R4-line release it ships; the clinical resources this API is built around (Patient, Observation,
Condition, Encounter, Medication*, AllergyIntolerance, Procedure, Immunization,
DiagnosticReport, DocumentReference, Practitioner, Organization) have the same structure in both.
The few R4 types that R4B dropped get the structural checks of the REST layer only. Checked:
element names (unknown ones are refused), cardinality, required elements and datatype formats;
not checked: terminology bindings and profiles.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from fhirgate.fhir.errors import InvalidResource

__all__ = ["validate"]

_MAX_PROBLEMS = 50


@lru_cache(maxsize=256)
def _model(resource_type: str) -> Any:
    try:
        return get_fhir_model_class(resource_type)
    except (KeyError, ValueError, LookupError):
        return None


def _path(resource_type: str, location: tuple[int | str, ...]) -> str:
    path = resource_type
    for part in location:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def validate(resource_type: str, content: dict[str, Any]) -> None:
    """Raise :class:`InvalidResource` listing every problem of ``content``."""
    model = _model(resource_type)
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
