"""FHIR API errors, each rendered as an OperationOutcome (FHIR R4 §3.1.0 RESTful API, "Error
handling"; OperationOutcome.issue.code from the IssueType value set).

``diagnostics`` is safe to show the client; nothing internal (no SQL, no stack) ever goes in it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, NamedTuple

__all__ = [
    "FhirError",
    "Forbidden",
    "Gone",
    "Invalid",
    "InvalidResource",
    "NotFound",
    "PreconditionFailed",
    "Problem",
    "TooCostly",
    "UnsupportedMediaType",
    "operation_outcome",
]


def operation_outcome(code: str, diagnostics: str, severity: str = "error") -> dict[str, Any]:
    """An OperationOutcome with one issue."""
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": code, "diagnostics": diagnostics}],
    }


class FhirError(Exception):
    status_code: ClassVar[int] = 400
    code: ClassVar[str] = "invalid"

    def __init__(self, diagnostics: str) -> None:
        super().__init__(diagnostics)
        self.diagnostics = diagnostics

    def outcome(self) -> dict[str, Any]:
        return operation_outcome(self.code, self.diagnostics)


class Problem(NamedTuple):
    """One problem of a resource: where (a FHIRPath-like ``expression``), what, and its
    OperationOutcome issue code (IssueType: ``structure``, ``required``, ``code-invalid``)."""

    expression: str
    diagnostics: str
    code: str = "structure"


class InvalidResource(FhirError):
    """A resource that fails validation: one issue per problem, each with its ``expression``
    (FHIR R4 §3.1.0.1.5: 400 for a resource that fails basic validation)."""

    status_code = 400
    code = "structure"

    def __init__(self, problems: Sequence[Problem]) -> None:
        super().__init__(f"{len(problems)} problem(s) in the resource")
        self.problems = list(problems)

    def outcome(self) -> dict[str, Any]:
        issues = [
            {
                "severity": "error",
                "code": problem.code,
                "diagnostics": problem.diagnostics,
                "expression": [problem.expression],
            }
            for problem in self.problems
        ]
        return {"resourceType": "OperationOutcome", "issue": issues}


class Invalid(FhirError):
    status_code = 400
    code = "invalid"


class Forbidden(FhirError):
    status_code = 403
    code = "forbidden"


class NotFound(FhirError):
    """Unknown — or not visible to the caller: the two are answered identically."""

    status_code = 404
    code = "not-found"


class Gone(FhirError):
    status_code = 410
    code = "deleted"


class UnsupportedMediaType(FhirError):
    status_code = 415
    code = "not-supported"


class NotAcceptable(FhirError):
    status_code = 406
    code = "not-supported"


class PreconditionFailed(FhirError):
    status_code = 412
    code = "conflict"


class TooCostly(FhirError):
    """A request past one of the server's work limits (a Bundle's budget, a search's repeated
    parameters): 400 with IssueType ``too-costly`` ("the operation failed because it was too
    costly"), before — or instead of — the work."""

    status_code = 400
    code = "too-costly"
