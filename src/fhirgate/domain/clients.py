"""Registered clients (API keys) and how they authenticate."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from fhirgate.domain.organizations import Environment

__all__ = ["AuthMethod", "Client", "ClientStatus", "new_client_id"]


class ClientStatus(StrEnum):
    ACTIVE = "active"
    REVOKED = "revoked"


class AuthMethod(StrEnum):
    """``token_endpoint_auth_method`` values (RFC 7591 §2)."""

    PRIVATE_KEY_JWT = "private_key_jwt"
    CLIENT_SECRET_BASIC = "client_secret_basic"  # noqa: S105 (method names)
    CLIENT_SECRET_POST = "client_secret_post"  # noqa: S105
    #: Redox legacy API key: ``apiKey`` + ``secret`` in a JSON body at ``/auth/authenticate``.
    LEGACY_API_KEY = "legacy_api_key"

    @property
    def uses_secret(self) -> bool:
        return self is not AuthMethod.PRIVATE_KEY_JWT


def new_client_id() -> str:
    """A client id: 192 random bits, URL-safe (RFC 6749 §2.2, §10.10), never starting with
    ``-``, which a command line would take for an option (``fhirgate clients show -x…``)."""
    while (client_id := secrets.token_urlsafe(24)).startswith("-"):
        pass
    return client_id


@dataclass(frozen=True, slots=True)
class Client:
    """A registered client (API key) with the environment it belongs to."""

    client_id: str
    name: str
    status: str
    auth_method: str
    jwks: dict[str, Any] | None
    jwks_url: str | None
    scope: str
    environment: Environment
    created_at: datetime
    updated_at: datetime
    token_lifetime: int | None = None
    secret_hash: str | None = field(default=None, repr=False)
    previous_secret_hash: str | None = field(default=None, repr=False)
    previous_secret_expires_at: int | None = None
    #: A user-level API key (Platform API): the dashboard user it belongs to; ``None`` for the
    #: API keys of an environment.
    owner_user_id: str | None = None
    #: For a user-level key read from storage: whether its owner's account is active.
    owner_active: bool | None = None

    @property
    def active(self) -> bool:
        """Not revoked, and for a user-level key, its owner not deactivated (a deactivated
        person's keys get no tokens, and their tokens are refused)."""
        return self.status == ClientStatus.ACTIVE and self.owner_active is not False

    @property
    def user_level(self) -> bool:
        return self.owner_user_id is not None
