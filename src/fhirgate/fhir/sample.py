"""A synthetic FHIR R4 data set, generated here (no real person, no copied data): patients
with their encounters, vital signs, conditions, medications, allergies and immunizations.

Deterministic for a seed, so two loads with the same seed hold the same names and values.
Every resource validates against the ``fhir.resources`` models (tests check it).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import date, timedelta
from typing import Any

__all__ = ["SamplePatient", "sample_patients"]

_GIVEN = [
    "Ada",
    "Ben",
    "Chloe",
    "Dev",
    "Elif",
    "Farid",
    "Grace",
    "Hugo",
    "Ines",
    "Jonas",
    "Kira",
    "Luis",
    "Mei",
    "Noah",
    "Olga",
    "Priya",
    "Quinn",
    "Rosa",
]
_FAMILY = [
    "Abara",
    "Brandt",
    "Castillo",
    "Dumont",
    "Eriksen",
    "Fontaine",
    "Gallo",
    "Haddad",
    "Ivanova",
    "Jansen",
    "Kowalski",
    "Moreau",
]
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
CVX = "http://hl7.org/fhir/sid/cvx"
_VITALS = [  # (LOINC code, display, unit, low, high)
    ("8867-4", "Heart rate", "/min", 55, 100),
    ("8480-6", "Systolic blood pressure", "mm[Hg]", 100, 150),
    ("8310-5", "Body temperature", "Cel", 36, 38),
    ("29463-7", "Body weight", "kg", 50, 110),
]
_CONDITIONS = [
    ("38341003", "Hypertension"), ("44054006", "Type 2 diabetes mellitus"),
    ("195967001", "Asthma"), ("35489007", "Depressive disorder"),
]  # fmt: skip
_MEDICATIONS = [("314076", "lisinopril 10 MG Oral Tablet"), ("860975", "metformin 500 MG")]
_ALLERGIES = [("91936005", "Allergy to penicillin"), ("300913006", "Shellfish allergy")]
_VACCINES = [("140", "Influenza, seasonal, injectable"), ("208", "COVID-19, mRNA")]
_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
_ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"


class SamplePatient:
    """One synthetic patient and the resources about it, with references to fill in."""

    def __init__(self, rng: random.Random, number: int) -> None:
        self.rng = rng
        self.number = number
        self.birth = date(1940, 1, 1) + timedelta(days=rng.randrange(0, 80 * 365))
        self.patient: dict[str, Any] = {
            "resourceType": "Patient",
            "identifier": [{"system": "urn:fhirgate:sample:mrn", "value": f"S{number:06d}"}],
            "name": [{"family": rng.choice(_FAMILY), "given": [rng.choice(_GIVEN)]}],
            "gender": rng.choice(["female", "male", "other"]),
            "birthDate": self.birth.isoformat(),
        }

    def about(self, patient_id: str) -> Iterator[dict[str, Any]]:
        """The resources referencing ``Patient/{patient_id}``."""
        rng, subject = self.rng, {"reference": f"Patient/{patient_id}"}
        day = date(2024, 1, 1) + timedelta(days=rng.randrange(0, 300))
        yield {
            "resourceType": "Encounter",
            "status": "finished",
            "class": {"system": _ACT_CODE, "code": "AMB"},
            "subject": subject,
            "period": {"start": f"{day}T09:00:00Z", "end": f"{day}T09:30:00Z"},
        }
        for code, display, unit, low, high in _VITALS:
            yield {
                "resourceType": "Observation",
                "status": "final",
                "category": [{"coding": [{"system": _CATEGORY, "code": "vital-signs"}]}],
                "code": {"coding": [{"system": LOINC, "code": code, "display": display}]},
                "subject": subject,
                "effectiveDateTime": f"{day}T09:10:00Z",
                "valueQuantity": {"value": rng.randint(low, high), "unit": unit},
            }
        code, display = rng.choice(_CONDITIONS)
        yield {
            "resourceType": "Condition",
            "code": {"coding": [{"system": SNOMED, "code": code, "display": display}]},
            "subject": subject,
            "onsetDateTime": (self.birth + timedelta(days=365 * 30)).isoformat(),
        }
        code, display = rng.choice(_MEDICATIONS)
        yield {
            "resourceType": "MedicationRequest",
            "status": "active",
            "intent": "order",
            "medicationCodeableConcept": {
                "coding": [{"system": RXNORM, "code": code, "display": display}]
            },
            "subject": subject,
            "authoredOn": day.isoformat(),
        }
        if rng.random() < 0.5:
            code, display = rng.choice(_ALLERGIES)
            yield {
                "resourceType": "AllergyIntolerance",
                "code": {"coding": [{"system": SNOMED, "code": code, "display": display}]},
                "patient": subject,
            }
        code, display = rng.choice(_VACCINES)
        yield {
            "resourceType": "Immunization",
            "status": "completed",
            "vaccineCode": {"coding": [{"system": CVX, "code": code, "display": display}]},
            "patient": subject,
            "occurrenceDateTime": day.isoformat(),
        }


def sample_patients(count: int, seed: int, first: int = 1) -> Iterator[SamplePatient]:
    """``count`` synthetic patients, numbered from ``first``."""
    rng = random.Random(seed)  # noqa: S311 (synthetic data, not secrets: reproducible by seed)
    for number in range(first, first + count):
        yield SamplePatient(rng, number)
