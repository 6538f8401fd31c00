"""SQLAlchemy tables: organization → environment → client, server keys, opaque tokens, replay
state, the audit log, and the per-user delegation of 1upHealth-style applications (application
users, authorization codes, user grants)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "AppUserRow",
    "AuditChainRow",
    "AuditEventResourceRow",
    "AuditEventRow",
    "AuthorizationCodeRow",
    "Base",
    "ClientRow",
    "EnvironmentRow",
    "FhirDateIndexRow",
    "FhirPermissionRow",
    "FhirReferenceIndexRow",
    "FhirResourceRow",
    "FhirStringIndexRow",
    "FhirTokenIndexRow",
    "FhirVersionRow",
    "InvitationRow",
    "OpaqueTokenRow",
    "OrganizationRow",
    "RevokedTokenRow",
    "ServerKeyRow",
    "SessionRow",
    "UsedJtiRow",
    "UserGrantRow",
]


class Base(DeclarativeBase):
    type_annotation_map = {datetime: DateTime(timezone=True)}


class OrganizationRow(Base):
    __tablename__ = "organizations"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    slug: Mapped[str] = mapped_column(String(63), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime]


class EnvironmentRow(Base):
    __tablename__ = "environments"
    __table_args__ = (UniqueConstraint("organization_id", "kind"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime]


class ClientRow(Base):
    """A client (API key) of one environment."""

    __tablename__ = "clients"

    client_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    environment_id: Mapped[str] = mapped_column(
        ForeignKey("environments.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16))
    auth_method: Mapped[str] = mapped_column(String(32))
    jwks: Mapped[dict[str, object] | None] = mapped_column(JSON, nullable=True)
    jwks_url: Mapped[str | None] = mapped_column(String(2048), nullable=True)
    scope: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    #: HMAC-SHA256 of the client secret under the server key (``oauth.secrets``); never the secret.
    secret_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    #: After a rotation with a grace period: the old secret's hash, valid until the epoch second.
    previous_secret_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    previous_secret_expires_at: Mapped[int | None] = mapped_column(Integer, nullable=True)
    #: Access-token lifetime in seconds; ``None``: the default of the client's auth method.
    token_lifetime: Mapped[int | None] = mapped_column(Integer, nullable=True)
    #: A user-level API key (Platform API): the dashboard user it acts for; ``None`` for the
    #: API keys of an environment.
    owner_user_id: Mapped[str | None] = mapped_column(
        ForeignKey("dashboard_users.id", ondelete="CASCADE"), nullable=True, index=True
    )


class ServerKeyRow(Base):
    """A server signing key; the private part is AES-GCM encrypted and the row carries a MAC
    under the server secret (see ``oauth.keys``)."""

    __tablename__ = "server_keys"

    kid: Mapped[str] = mapped_column(String(64), primary_key=True)
    alg: Mapped[str] = mapped_column(String(16))
    public_jwk: Mapped[dict[str, object]] = mapped_column(JSON)
    private_key: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime]
    retired_at: Mapped[datetime | None] = mapped_column(nullable=True)
    #: HMAC-SHA256 of the other columns (``oauth.keys.KeyCipher.row_mac``); ``None`` only on
    #: rows written before revision 0011, until the server seals them.
    row_mac: Mapped[str | None] = mapped_column(String(64), nullable=True)


class UsedJtiRow(Base):
    """Single-use assertion ids (SMART: ``jti`` not reused per ``iss``); the key is a digest."""

    __tablename__ = "used_jti"
    __table_args__ = {"sqlite_with_rowid": False}  # one B-tree: the hot path's only write

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[int] = mapped_column(Integer, index=True)


class OpaqueTokenRow(Base):
    """Opaque tokens (legacy access tokens, refresh tokens), stored only as SHA-256 hashes.

    Tokens issued together share a ``family_id``; revoking the family revokes all of them. A
    refresh token is ``consumed_at`` once rotated: presenting it again is reuse.
    """

    __tablename__ = "opaque_tokens"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    client_id: Mapped[str] = mapped_column(
        ForeignKey("clients.client_id", ondelete="CASCADE"), index=True
    )
    family_id: Mapped[str] = mapped_column(String(36), index=True)
    scope: Mapped[str] = mapped_column(Text)
    issued_at: Mapped[int] = mapped_column(Integer)
    expires_at: Mapped[int] = mapped_column(Integer, index=True)
    consumed_at: Mapped[int | None] = mapped_column(Integer, nullable=True)
    revoked_at: Mapped[int | None] = mapped_column(Integer, nullable=True)


class AuditEventRow(Base):
    """Audit log: every FHIR interaction, token issue, authentication failure and admin change
    (who, what, when, outcome; identifiers only, never content). ``chain_seq`` and
    ``chain_hash`` are set by the sealer (``fhirgate.storage.audit``): an HMAC chain over the
    rows in sealing order, so an edited or deleted sealed row is detected."""

    __tablename__ = "audit_events"
    #: A key's activity (last use, tokens per day, failures) without reading its FHIR rows.
    __table_args__ = (Index("ix_audit_events_client_event", "client_id", "event", "occurred_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    occurred_at: Mapped[datetime]  # not indexed alone: no query needs it, every write paid
    event: Mapped[str] = mapped_column(String(64))
    client_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    source: Mapped[str | None] = mapped_column(String(64), nullable=True)
    actor: Mapped[str | None] = mapped_column(String(200), nullable=True)
    detail: Mapped[str] = mapped_column(Text, default="")
    user_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    resource_type: Mapped[str | None] = mapped_column(String(64), nullable=True)
    resource_ids: Mapped[str] = mapped_column(Text, default="")
    outcome: Mapped[str | None] = mapped_column(String(8), nullable=True)
    request_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    chain_seq: Mapped[int | None] = mapped_column(Integer, nullable=True, unique=True, index=True)
    chain_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    #: The organization a dashboard or Platform API change concerns (its audit page reads it).
    organization_id: Mapped[str | None] = mapped_column(String(36), nullable=True, index=True)
    #: HMAC of the row's fields and resource ids, set when it is written (``audit_chain``).
    row_mac: Mapped[str | None] = mapped_column(String(64), nullable=True)


class AuditEventResourceRow(Base):
    """Every resource an audited FHIR interaction disclosed or changed, in answer order:
    written with its event, in the same transaction, whatever their number."""

    __tablename__ = "audit_event_resources"
    #: Clustered by event; and on SQLite its inserts leave ``last_insert_rowid()`` at the event
    #: (``storage.audit`` reads it to key the ids it inserts after the event).
    __table_args__ = {"sqlite_with_rowid": False}

    event_id: Mapped[int] = mapped_column(ForeignKey("audit_events.id"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    resource_id: Mapped[str] = mapped_column(Text)


class DashboardUserRow(Base):
    """A person who signs in to the dashboard (not an application user of the FHIR API).
    ``email`` is stored lower-cased; ``password_hash`` is an argon2id PHC string."""

    __tablename__ = "dashboard_users"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    email: Mapped[str] = mapped_column(String(254), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime]
    password_changed_at: Mapped[datetime]
    active: Mapped[bool] = mapped_column(Boolean, default=True)


class MembershipRow(Base):
    """A dashboard user's role in an organization."""

    __tablename__ = "organization_members"

    user_id: Mapped[str] = mapped_column(
        ForeignKey("dashboard_users.id", ondelete="CASCADE"), primary_key=True
    )
    organization_id: Mapped[str] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    role: Mapped[str] = mapped_column(String(16))


class EnvironmentRoleRow(Base):
    """A member's role in one environment of its organization."""

    __tablename__ = "environment_roles"

    user_id: Mapped[str] = mapped_column(
        ForeignKey("dashboard_users.id", ondelete="CASCADE"), primary_key=True
    )
    environment_id: Mapped[str] = mapped_column(
        ForeignKey("environments.id", ondelete="CASCADE"), primary_key=True
    )
    role: Mapped[str] = mapped_column(String(16))


class SessionRow(Base):
    """A signed-in dashboard session. The cookie carries a random token; only its SHA-256 is
    stored, so a copy of the database signs nobody in."""

    __tablename__ = "dashboard_sessions"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(
        ForeignKey("dashboard_users.id", ondelete="CASCADE"), index=True
    )
    created_at: Mapped[datetime]
    last_seen_at: Mapped[datetime]


class InvitationRow(Base):
    """An invitation by link to join an organization with a role (single use, expires)."""

    __tablename__ = "dashboard_invitations"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    organization_id: Mapped[str] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), index=True
    )
    email: Mapped[str] = mapped_column(String(254))
    role: Mapped[str] = mapped_column(String(16))
    invited_by: Mapped[str | None] = mapped_column(
        ForeignKey("dashboard_users.id", ondelete="SET NULL"), nullable=True
    )
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    accepted_at: Mapped[datetime | None] = mapped_column(nullable=True)


class AuditChainRow(Base):
    """The head of the audit chain: one row (``id`` 1), locked while a batch is sealed."""

    __tablename__ = "audit_chain"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    last_seq: Mapped[int] = mapped_column(Integer)
    last_hash: Mapped[str] = mapped_column(String(64))
    #: Rows up to this id were written before rows carried a MAC (migration 0010).
    legacy_row_id: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class RevokedTokenRow(Base):
    """Deny-list of access-token ``jti`` values, kept until the token would have expired."""

    __tablename__ = "revoked_tokens"
    __table_args__ = {"sqlite_with_rowid": False}

    jti: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[int] = mapped_column(Integer, index=True)


class AppUserRow(Base):
    """A user of an application (a secret client), as 1upHealth's user-management API has them:
    ``app_user_id`` is the developer's name for the user (unique per application, changeable);
    ``oneup_user_id`` is the server's number for it (never reused: AUTOINCREMENT on SQLite)."""

    __tablename__ = "app_users"
    __table_args__ = (
        UniqueConstraint("client_id", "app_user_id"),
        {"sqlite_autoincrement": True},
    )

    oneup_user_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    client_id: Mapped[str] = mapped_column(
        ForeignKey("clients.client_id", ondelete="CASCADE"), index=True
    )
    app_user_id: Mapped[str] = mapped_column(String(255))
    active: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class AuthorizationCodeRow(Base):
    """An authorization code (RFC 6749 §4.1.2), stored only as its SHA-256 hash, bound to the
    application, the user and the scope. ``grant_id`` names the grant it was redeemed for."""

    __tablename__ = "authorization_codes"

    code_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    client_id: Mapped[str] = mapped_column(
        ForeignKey("clients.client_id", ondelete="CASCADE"), index=True
    )
    oneup_user_id: Mapped[int] = mapped_column(
        ForeignKey("app_users.oneup_user_id", ondelete="CASCADE"), index=True
    )
    scope: Mapped[str] = mapped_column(Text)
    issued_at: Mapped[int] = mapped_column(Integer)
    expires_at: Mapped[int] = mapped_column(Integer, index=True)
    consumed_at: Mapped[int | None] = mapped_column(Integer, nullable=True)
    grant_id: Mapped[str | None] = mapped_column(String(36), nullable=True)


class UserGrantRow(Base):
    """What one redeemed authorization code granted: a token family (its refresh tokens in
    ``opaque_tokens`` share ``family_id = grant_id``; its access tokens carry ``grant_id``).
    Revoking the grant ends every token of the family at once; ``expires_at`` is the family's
    absolute lifetime."""

    __tablename__ = "user_grants"

    grant_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    client_id: Mapped[str] = mapped_column(
        ForeignKey("clients.client_id", ondelete="CASCADE"), index=True
    )
    oneup_user_id: Mapped[int] = mapped_column(
        ForeignKey("app_users.oneup_user_id", ondelete="CASCADE"), index=True
    )
    scope: Mapped[str] = mapped_column(Text)
    auth_time: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[int] = mapped_column(Integer)
    expires_at: Mapped[int] = mapped_column(Integer, index=True)
    revoked_at: Mapped[int | None] = mapped_column(Integer, nullable=True)


#: FHIR resource content: JSONB on PostgreSQL, JSON text on SQLite.
FhirJSON = JSON().with_variant(JSONB(), "postgresql")


class FhirResourceRow(Base):
    """The current version of a FHIR resource, in one environment and one FHIR version.

    Who may see it: every system principal of the environment; and, when ``application_id`` is
    set (a 1upHealth-style application's user data), the application over all its users, the
    owning user ``owner_user_id``, and the users it is shared with (``fhir_permissions``).
    """

    __tablename__ = "fhir_resources"
    __table_args__ = (
        UniqueConstraint("environment_id", "fhir_version", "resource_type", "resource_id"),
    )

    row_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    environment_id: Mapped[str] = mapped_column(ForeignKey("environments.id", ondelete="CASCADE"))
    fhir_version: Mapped[str] = mapped_column(String(8))
    resource_type: Mapped[str] = mapped_column(String(64))
    resource_id: Mapped[str] = mapped_column(String(64))
    version_id: Mapped[int] = mapped_column(Integer)
    last_updated: Mapped[datetime]
    deleted: Mapped[bool] = mapped_column(Boolean)
    application_id: Mapped[str | None] = mapped_column(
        ForeignKey("clients.client_id", ondelete="CASCADE"), nullable=True, index=True
    )
    owner_user_id: Mapped[int | None] = mapped_column(
        ForeignKey("app_users.oneup_user_id", ondelete="CASCADE"), nullable=True, index=True
    )
    content: Mapped[dict[str, object]] = mapped_column(FhirJSON)


class FhirVersionRow(Base):
    """Every version of every resource (instance history, vread); a delete is a version too."""

    __tablename__ = "fhir_resource_versions"

    row_id: Mapped[int] = mapped_column(
        ForeignKey("fhir_resources.row_id", ondelete="CASCADE"), primary_key=True
    )
    version_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    last_updated: Mapped[datetime]
    method: Mapped[str] = mapped_column(String(8))
    deleted: Mapped[bool] = mapped_column(Boolean)
    content: Mapped[dict[str, object] | None] = mapped_column(FhirJSON, nullable=True)


class FhirPermissionRow(Base):
    """A user's read access to another user's resource of the same application
    (1upHealth's ``PUT …/{Type}/{id}/_permission/{oneup_user_id}``)."""

    __tablename__ = "fhir_permissions"

    row_id: Mapped[int] = mapped_column(
        ForeignKey("fhir_resources.row_id", ondelete="CASCADE"), primary_key=True
    )
    oneup_user_id: Mapped[int] = mapped_column(
        ForeignKey("app_users.oneup_user_id", ondelete="CASCADE"), primary_key=True, index=True
    )


# Search indexes (fhirgate.fhir.indexing): written with each version, read by searches.


def _row_id() -> Mapped[int]:
    return mapped_column(ForeignKey("fhir_resources.row_id", ondelete="CASCADE"), index=True)


class FhirStringIndexRow(Base):
    __tablename__ = "fhir_index_strings"
    __table_args__ = (Index("ix_fhir_index_strings_value", "name", "normalized"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    row_id: Mapped[int] = _row_id()
    name: Mapped[str] = mapped_column(String(64))
    normalized: Mapped[str] = mapped_column(String(255))
    exact: Mapped[str] = mapped_column(String(255))


class FhirTokenIndexRow(Base):
    __tablename__ = "fhir_index_tokens"
    __table_args__ = (Index("ix_fhir_index_tokens_value", "name", "code", "system"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    row_id: Mapped[int] = _row_id()
    name: Mapped[str] = mapped_column(String(64))
    system: Mapped[str | None] = mapped_column(String(255), nullable=True)
    code: Mapped[str] = mapped_column(String(255))


class FhirReferenceIndexRow(Base):
    __tablename__ = "fhir_index_references"
    __table_args__ = (Index("ix_fhir_index_references_target", "name", "target_type", "target_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    row_id: Mapped[int] = _row_id()
    name: Mapped[str] = mapped_column(String(64))
    target_type: Mapped[str] = mapped_column(String(64))
    target_id: Mapped[str] = mapped_column(String(64))


class FhirDateIndexRow(Base):
    __tablename__ = "fhir_index_dates"
    __table_args__ = (Index("ix_fhir_index_dates_range", "name", "low", "high"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    row_id: Mapped[int] = _row_id()
    name: Mapped[str] = mapped_column(String(64))
    low: Mapped[int] = mapped_column(BigInteger)
    high: Mapped[int] = mapped_column(BigInteger)
