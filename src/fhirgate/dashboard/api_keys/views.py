"""The records the dashboard's pages and the Platform API (docs/platform-api.md) render: none
carries a secret, a hash or a private key member (RFC 7517 §4)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from fhirgate.dashboard.key_input import PRIVATE_JWK_MEMBERS
from fhirgate.domain.clients import Client


@dataclass(frozen=True, slots=True)
class PublicKeyInfo:
    kid: str
    kty: str
    alg: str | None


@dataclass(frozen=True, slots=True)
class ApiKeyView:
    """An API key for display: never a secret, a hash or a private key member."""

    client_id: str
    name: str
    status: str
    auth_method: str
    scope: str
    keys: tuple[PublicKeyInfo, ...]
    #: The registered public JWKs as stored (private members are never stored, and dropped).
    public_jwks: tuple[Mapping[str, Any], ...]
    jwks_url: str | None
    created_at: datetime
    updated_at: datetime
    environment_id: str
    environment_kind: str
    organization_id: str
    organization_slug: str
    user_level: bool
    last_used: datetime | None


@dataclass(frozen=True, slots=True)
class CreatedKey:
    """A key just created (or its secret just rotated), with its secret shown this once."""

    key: ApiKeyView
    secret: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class EnvironmentAccess:
    """An environment the person sees, and whether they may change its keys."""

    id: str
    kind: str
    organization_id: str
    organization_slug: str
    organization_role: str
    environment_role: str | None
    can_manage: bool


@dataclass(frozen=True, slots=True)
class DailyCount:
    day: date
    tokens: int


@dataclass(frozen=True, slots=True)
class Failure:
    at: datetime
    event: str
    source: str | None
    detail: str


@dataclass(frozen=True, slots=True)
class KeyActivity:
    """Last use, tokens issued per UTC day (oldest first, zeros included), latest failures."""

    last_used: datetime | None
    tokens_per_day: tuple[DailyCount, ...]
    failures: tuple[Failure, ...]


@dataclass(frozen=True, slots=True)
class JwksCheck:
    url: str
    kids: tuple[str, ...]


def key_view(client: Client, last_used: datetime | None) -> ApiKeyView:
    """``client`` for display, its private JWK members (if any) dropped."""
    jwks = [jwk for jwk in (client.jwks or {}).get("keys", []) if isinstance(jwk, Mapping)]
    public = tuple({k: v for k, v in jwk.items() if k not in PRIVATE_JWK_MEMBERS} for jwk in jwks)
    infos = tuple(
        PublicKeyInfo(str(jwk.get("kid", "")), str(jwk.get("kty", "")), jwk.get("alg"))
        for jwk in public
    )
    env = client.environment
    return ApiKeyView(
        client.client_id, client.name, client.status, client.auth_method, client.scope, infos,
        public, client.jwks_url, client.created_at, client.updated_at, env.id, env.kind,
        env.organization_id, env.organization_slug, client.user_level, last_used,
    )  # fmt: skip
