"""Organizations and their environments, and the roles people hold in them."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = ["Environment", "EnvironmentKind", "EnvironmentRole", "OrganizationRole"]


class EnvironmentKind(StrEnum):
    DEVELOPMENT = "development"
    STAGING = "staging"
    PRODUCTION = "production"


class OrganizationRole(StrEnum):
    """A dashboard user's role in an organization."""

    OWNER = "owner"
    ADMIN = "admin"
    MEMBER = "member"


class EnvironmentRole(StrEnum):
    """A member's role in one environment: engineers change its API keys; support and viewers
    see them read-only."""

    ENGINEER = "engineer"
    SUPPORT = "support"
    VIEWER = "viewer"


@dataclass(frozen=True, slots=True)
class Environment:
    id: str
    kind: str
    organization_id: str
    organization_slug: str
