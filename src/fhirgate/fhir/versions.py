"""The FHIR versions fhirgate serves, each a separate store with its own ``fhirVersion``:
R4 (4.0.1) at ``/fhir/R4``, ``/r4`` and Redox's path; STU3 (3.0.2) at ``/stu3``; DSTU2 (1.0.2)
at ``/dstu2`` (1upHealth serves all three)."""

from __future__ import annotations

from dataclasses import dataclass

from fhirgate.domain.resource_types import (
    DSTU2_RESOURCE_TYPES,
    R4_RESOURCE_TYPES,
    STU3_RESOURCE_TYPES,
)

__all__ = ["DSTU2", "R4", "STU3", "VERSIONS", "FhirVersion"]


@dataclass(frozen=True, slots=True)
class FhirVersion:
    name: str
    number: str
    resource_types: frozenset[str]
    #: The ``fhir.resources`` models that validate it (R4 against R4B's), or none (DSTU2).
    models: str | None
    #: What ``metadata`` answers with (DSTU2 called it ``Conformance``).
    capability_type: str
    bases: tuple[str, ...]


R4 = FhirVersion(
    "R4",
    "4.0.1",
    R4_RESOURCE_TYPES,
    "R4B",
    "CapabilityStatement",
    ("/fhir/R4", "/r4", "/fhir/R4/{organization}/{environment}"),
)
STU3 = FhirVersion("STU3", "3.0.2", STU3_RESOURCE_TYPES, "STU3", "CapabilityStatement", ("/stu3",))
DSTU2 = FhirVersion("DSTU2", "1.0.2", DSTU2_RESOURCE_TYPES, None, "Conformance", ("/dstu2",))
VERSIONS = (R4, STU3, DSTU2)
