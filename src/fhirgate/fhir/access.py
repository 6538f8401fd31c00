"""Who may do what on the FHIR API: a principal's partition and the SMART scope check of every
interaction (SMART App Launch 2.x, scopes-and-launch-context §fhir-resource-scope-syntax).

* Interactions map to SMART v2 permissions: ``c`` create; ``r`` read, vread, instance history;
  ``u`` update (update-as-create too); ``d`` delete; ``s`` search.
* A principal that acts for application users (a user grant's token, or 1upHealth's headers)
  is judged by its ``user/`` and ``patient/`` scopes, confined to its user's partition; any
  other principal (backend services, secret and legacy clients) by its ``system/`` scopes, over
  its environment. A scope with ``?param=value`` restrictions grants reads and searches of the
  resources that match them (evaluated as a search on the same indexes); it never grants a
  write or an included resource (fail closed).
* A user's write may reference only Patients that user owns (one user's data never points into
  another's).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from fhirgate.fhir.errors import FhirError, Forbidden
from fhirgate.fhir.store import Partition, ResourceStore
from fhirgate.oauth.tokens import Principal

__all__ = ["PERMISSIONS", "Access", "InsufficientScope", "patient_references"]

PERMISSIONS = {
    "create": "c",
    "read": "r",
    "vread": "r",
    "history": "r",
    "update": "u",
    "delete": "d",
    "search": "s",
}
USER_CONTEXTS = ("user", "patient")
Restriction = frozenset[tuple[str, str]]
_PATIENT_REFERENCE = re.compile(r"(?:^|/)Patient/([A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$")


class InsufficientScope(FhirError):
    """403 with ``WWW-Authenticate: Bearer error="insufficient_scope"`` (RFC 6750 §3.1)."""

    status_code = 403
    code = "forbidden"

    def __init__(self, scope: str) -> None:
        super().__init__(f"the access token does not grant {scope}")
        self.scope = scope


def patient_references(content: Any) -> Iterator[str]:
    """The ids of every ``Patient`` a resource references (relative or absolute URLs)."""
    if isinstance(content, dict):
        reference = content.get("reference")
        if isinstance(reference, str):
            match = _PATIENT_REFERENCE.search(reference)
            if match:
                yield match.group(1)
        for value in content.values():
            yield from patient_references(value)
    elif isinstance(content, list):
        for item in content:
            yield from patient_references(item)


@dataclass(frozen=True, slots=True)
class Access:
    """A principal on the FHIR API: its partition and its scopes."""

    principal: Principal
    partition: Partition

    @property
    def acts_for_users(self) -> bool:
        return self.principal.user_id is not None or self.principal.all_users

    def grants(self, resource_type: str, interaction: str) -> list[Restriction] | None:
        """How the token's scopes grant an interaction: ``None`` when one scope grants it
        outright, else the restrictions of the scopes that grant it only for resources
        matching their ``?param=value`` (SMART v2 granular scopes; any one suffices). None at
        all → 403 ``insufficient_scope``."""
        permission = PERMISSIONS[interaction]
        contexts = USER_CONTEXTS if self.acts_for_users else ("system",)
        restricted: list[Restriction] = []
        for scope in self.principal.scopes.resource_scopes:
            if permission in scope.permissions and any(
                scope.matches(context, resource_type) for context in contexts
            ):
                if not scope.restrictions:
                    return None
                restricted.append(scope.restrictions)
        if not restricted:
            raise InsufficientScope(f"{contexts[0]}/{resource_type}.{permission}")
        return restricted

    def require(self, resource_type: str, interaction: str) -> None:
        """Refuse (403 ``insufficient_scope``) an interaction no unrestricted scope grants
        (writes, and what restricted scopes cannot vouch for: included resources)."""
        if self.grants(resource_type, interaction) is not None:
            permission = PERMISSIONS[interaction]
            context = USER_CONTEXTS[0] if self.acts_for_users else "system"
            raise InsufficientScope(f"{context}/{resource_type}.{permission}")

    async def check_references(
        self, store: ResourceStore, content: dict[str, Any], conn: AsyncConnection | None = None
    ) -> None:
        """A user's write may point only at Patients the same user owns."""
        if self.partition.user_id is None:
            return
        for patient_id in set(patient_references(content)):
            if not await store.owns(self.partition, "Patient", patient_id, conn=conn):
                raise Forbidden(f"Patient/{patient_id} is not this user's to reference")
