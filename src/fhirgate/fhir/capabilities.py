"""The CapabilityStatement a FHIR base serves at ``metadata`` (FHIR R4 §3.1.0.15 "capabilities"),
with the SMART security service and its ``oauth-uris`` extension (SMART App Launch,
conformance §using-cors / "capability statement").

It lists what this server really does — the interactions of :mod:`fhirgate.web.fhir`, nothing
more — so that a FHIR client that reads it does not try what would fail.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fhirgate import __version__
from fhirgate.config import Settings
from fhirgate.fhir.search_params import PARAMETERS
from fhirgate.fhir.versions import R4, FhirVersion

__all__ = ["INTERACTIONS", "capability_statement"]

INTERACTIONS = ("read", "vread", "update", "delete", "history-instance", "create", "search-type")
_COMMON_PARAMS = (
    ("_id", "token"),
    ("_lastUpdated", "date"),
    ("_tag", "token"),
    ("_profile", "token"),
)
SMART_SERVICE = {
    "coding": [
        {
            "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
            "code": "SMART-on-FHIR",
        }
    ],
    "text": "OAuth 2.0 with SMART on FHIR scopes",
}
_EVERYTHING = "http://hl7.org/fhir/OperationDefinition/Patient-everything"
#: The result parameters of every search (FHIR R4 §3.1.1.5.8-9; fhirgate.fhir.subsetting).
_RESULT_PARAMS = (
    ("_summary", "token", "true, text, data, count or false (STU3, DSTU2: count or false)"),
    ("_elements", "string", "top-level elements; mandatory ones, id and meta always come"),
)
OAUTH_URIS = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"


def _security(settings: Settings) -> dict[str, Any]:
    uris = {
        "token": "/oauth2/token",
        "revoke": "/oauth2/revoke",
        "introspect": "/oauth2/introspect",
    }
    return {
        "cors": True,
        "service": [SMART_SERVICE],
        "extension": [
            {
                "url": OAUTH_URIS,
                "extension": [
                    {"url": name, "valueUri": settings.url(path)} for name, path in uris.items()
                ],
            }
        ],
    }


def _resource(resource_type: str) -> dict[str, Any]:
    params = [(param.name, param.type) for param in PARAMETERS.get(resource_type, ())]
    return {
        "type": resource_type,
        "versioning": "versioned-update",
        "readHistory": True,
        "updateCreate": True,
        "interaction": [{"code": code} for code in INTERACTIONS],
        "searchParam": [{"name": name, "type": kind} for name, kind in [*params, *_COMMON_PARAMS]],
    }


def capability_statement(settings: Settings, base_url: str, version: FhirVersion) -> dict[str, Any]:
    """The CapabilityStatement (DSTU2: Conformance) of the ``version`` store at ``base_url``."""
    statement: dict[str, Any] = {
        "resourceType": version.capability_type,
        "status": "active",
        "date": datetime.now(UTC).date().isoformat(),  # as generated, for this instance
        "kind": "instance",
        "software": {"name": "fhirgate", "version": __version__},
        "implementation": {"description": "fhirgate FHIR API", "url": base_url},
        "fhirVersion": version.number,
        "format": ["application/fhir+json", "json"],
        "rest": [
            {
                "mode": "server",
                "security": _security(settings),
                "resource": [_resource(name) for name in sorted(version.resource_types)],
                "interaction": [{"code": "batch"}, {"code": "transaction"}],
                "searchParam": [
                    {"name": name, "type": kind, "documentation": text}
                    for name, kind, text in _RESULT_PARAMS
                ],
                "operation": [{"name": "everything", "definition": _EVERYTHING}],
            }
        ],
    }
    if version is not R4:  # STU3 and DSTU2: definition is a Reference; acceptUnknown required
        statement["acceptUnknown"] = "no"
        statement["rest"][0]["operation"][0]["definition"] = {"reference": _EVERYTHING}
    return statement
