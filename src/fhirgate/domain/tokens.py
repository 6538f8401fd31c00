"""Opaque tokens, the grants of an application's users, and where a token stands."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, StrEnum

__all__ = [
    "IssuedPair",
    "OpaqueKind",
    "OpaqueToken",
    "Redemption",
    "TokenStanding",
    "UserGrant",
    "is_jwt",
]


class OpaqueKind(StrEnum):
    """What an opaque token is (its hash is the row's key)."""

    ACCESS = "access"
    REFRESH = "refresh"


@dataclass(frozen=True, slots=True)
class OpaqueToken:
    token_hash: str
    kind: str
    client_id: str
    family_id: str
    scope: str
    issued_at: int
    expires_at: int
    consumed_at: int | None
    revoked_at: int | None

    def live(self, now: float) -> bool:
        """Neither expired, revoked nor (for a refresh token) already used."""
        return self.expires_at > now and self.revoked_at is None and self.consumed_at is None


@dataclass(frozen=True, slots=True)
class IssuedPair:
    access_token: str
    access_expires_at: int
    refresh_token: str
    family_id: str


@dataclass(frozen=True, slots=True)
class UserGrant:
    """A live grant: the application ``client_id`` acts for user ``oneup_user_id``."""

    grant_id: str
    client_id: str
    oneup_user_id: int
    scope: str
    auth_time: int
    expires_at: int


@dataclass(frozen=True, slots=True)
class Redemption:
    """A code or refresh token spent: the grant, and the family's new refresh token."""

    grant: UserGrant
    refresh_token: str
    refresh_expires_at: int


class TokenStanding(Enum):
    """Where an access token of a user grant stands."""

    LIVE = "live"
    REVOKED = "revoked"
    GRANT_ENDED = "grant_ended"


def is_jwt(token: str) -> bool:
    """Whether a presented token is a JWT (fhirgate's access tokens) rather than an opaque one:
    a JWS compact serialization has dots between its parts (RFC 7515 §7.1); opaque tokens are
    base64url (RFC 4648 §5), which has none."""
    return "." in token
