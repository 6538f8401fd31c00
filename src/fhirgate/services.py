"""Wiring: every long-lived component of a fhirgate process, built once from ``Settings``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from fhirgate.config import MAX_TOKEN_LIFETIME, Settings
from fhirgate.dashboard.api_keys import JWKS_TESTS_PER_MINUTE, ApiKeys
from fhirgate.dashboard.password_checks import PasswordChecks
from fhirgate.dashboard.sessions import SessionStore
from fhirgate.domain.stores import TTLSet
from fhirgate.fhir.interactions import Interactions
from fhirgate.fhir.store import ResourceStore
from fhirgate.fhir.versions import VERSIONS
from fhirgate.oauth.client_auth import (
    ClientAuthenticator,
    PrivateKeyJWTAuthenticator,
    SecretAuthenticator,
    SecretHasher,
)
from fhirgate.oauth.clients import ClientDirectory
from fhirgate.oauth.delegation import Delegation
from fhirgate.oauth.grants.authorization_code import AuthorizationCodeGrant
from fhirgate.oauth.grants.client_credentials import ClientCredentialsGrant
from fhirgate.oauth.grants.refresh_token import RefreshTokenGrant
from fhirgate.oauth.id_tokens import IdTokenIssuer
from fhirgate.oauth.introspection import TokenInspector
from fhirgate.oauth.jwks import JWKSFetcher
from fhirgate.oauth.keys import KeyCipher, Keyring
from fhirgate.oauth.legacy import LegacyKeyService
from fhirgate.oauth.quota import CallQuota
from fhirgate.oauth.throttle import FailureLimiter
from fhirgate.oauth.token_endpoint import TokenEndpoint
from fhirgate.oauth.tokens import AccessTokenService
from fhirgate.server_secret import derive_key, server_secret
from fhirgate.storage.accounts import AccountRepo
from fhirgate.storage.app_users import AppUserRepo
from fhirgate.storage.audit import AuditLog, CheckpointFile
from fhirgate.storage.audit_chain import audit_keys
from fhirgate.storage.counters import RedisCounters
from fhirgate.storage.database import Database
from fhirgate.storage.db import sqlite_path
from fhirgate.storage.direct import Statements
from fhirgate.storage.invitations import InvitationRepo
from fhirgate.storage.opaque_tokens import OpaqueTokenRepo
from fhirgate.storage.repos import ClientRepo, OrganizationRepo
from fhirgate.storage.server_keys import ServerKeyTable
from fhirgate.storage.sqlite_inline import checkpoint
from fhirgate.storage.ttl_sets import RedisTTLSet, SqlTTLSet
from fhirgate.storage.user_grants import GrantRepo

__all__ = ["Services"]

log = logging.getLogger("fhirgate")


KEY_RELOAD_SECONDS = 10.0  # a key rotated on another replica is used within this time
PURGE_SECONDS = 60.0  # expired jti and deny-list entries are dropped this often
AUDIT_FLUSH_SECONDS = 1.0  # queued audit events (failed authentications) are written this often
CHECKPOINT_SECONDS = 1.0  # SQLite: the WAL is copied back this often, off the event loop
STATISTICS_SECONDS = 600.0  # SQLite: the planner's statistics are refreshed this often
SIGN_IN_FAILURES = 10  # failed dashboard sign-ins a minute per (email, address); 50 per address


@dataclass
class Services:
    settings: Settings
    database: Database
    redis: Redis | None
    organizations: OrganizationRepo
    clients: ClientRepo
    directory: ClientDirectory
    jwks: JWKSFetcher
    used_jti: TTLSet
    revoked: TTLSet
    keyring: Keyring
    tokens: AccessTokenService
    hasher: SecretHasher
    audit: AuditLog
    authenticator: ClientAuthenticator
    token_endpoint: TokenEndpoint
    opaque: OpaqueTokenRepo
    grants: GrantRepo
    legacy: LegacyKeyService
    inspector: TokenInspector
    delegation: Delegation
    user_management_quota: CallQuota
    fhir: dict[str, Interactions]
    accounts: AccountRepo
    invitations: InvitationRepo
    sessions: SessionStore
    password_checks: PasswordChecks
    api_keys: ApiKeys
    #: Requests without a valid credential, per source address (the resource guard).
    bearer_failures: FailureLimiter

    @property
    def engine(self) -> AsyncEngine:
        return self.database.engine

    @property
    def statements(self) -> Statements:
        return self.database.statements

    @classmethod
    def build(cls, settings: Settings) -> Services:
        database = Database(settings.database_url)
        engine = database.engine
        redis = Redis.from_url(settings.redis_url) if settings.redis_url else None
        statements = database.statements
        counters = RedisCounters(redis) if redis is not None else None
        used_jti: TTLSet
        revoked: TTLSet
        # a user grant's tokens are deny-listed beside their grants (GrantRepo), always here
        revoked_in_database = SqlTTLSet.revoked_tokens(statements)
        if redis is not None:
            used_jti = RedisTTLSet(redis, "fhirgate:jti:")
            revoked = RedisTTLSet(redis, "fhirgate:revoked:")
        else:
            used_jti = SqlTTLSet.used_jti(statements)
            revoked = revoked_in_database
        secret = server_secret(settings)
        keyring = Keyring(
            ServerKeyTable(engine), KeyCipher(secret), publish_for=MAX_TOKEN_LIFETIME + 60
        )
        clients = ClientRepo(engine)
        directory = ClientDirectory(clients, settings.client_cache_ttl)
        jwks = JWKSFetcher(settings)
        opaque = OpaqueTokenRepo(engine)
        grants = GrantRepo(
            database,
            opaque,
            denied=revoked_in_database,
            family_ttl=settings.grant_lifetime,
            refresh_ttl=settings.refresh_token_ttl,
        )
        tokens = AccessTokenService(
            keyring,
            revoked,
            grants,
            issuer=settings.issuer,
            audience=settings.issuer,
            ttl=settings.access_token_ttl,
            secret_ttl=settings.secret_token_ttl,
            user_ttl=settings.user_token_ttl,
        )
        hasher = SecretHasher(secret)
        checkpoints = CheckpointFile.under(settings.var_dir)
        audit = AuditLog(engine, audit_keys(secret), statements, checkpoints)
        authenticator = ClientAuthenticator(
            PrivateKeyJWTAuthenticator(directory, jwks, used_jti),
            SecretAuthenticator(directory, hasher),
            FailureLimiter(settings.auth_failure_limit, counters),
            audit,
            directory,
        )
        delegation = Delegation(
            AppUserRepo(engine),
            grants,
            opaque,
            tokens,
            IdTokenIssuer(keyring, settings.issuer, settings.user_token_ttl),
            code_ttl=settings.auth_code_ttl,
        )
        legacy = LegacyKeyService(
            authenticator,
            directory,
            opaque,
            audit,
            access_ttl=settings.legacy_token_ttl,
            refresh_ttl=settings.legacy_refresh_ttl,
        )
        return cls(
            settings,
            database,
            redis,
            OrganizationRepo(engine),
            clients,
            directory,
            jwks,
            used_jti,
            revoked,
            keyring,
            tokens,
            hasher,
            audit,
            authenticator,
            TokenEndpoint(
                authenticator,
                (
                    ClientCredentialsGrant(tokens),
                    AuthorizationCodeGrant(delegation, audit),
                    RefreshTokenGrant(delegation, audit),
                ),
                audit,
            ),
            opaque,
            grants,
            legacy,
            TokenInspector(tokens, legacy, opaque, grants, settings.issuer),
            delegation,
            CallQuota(settings.user_management_rate_limit, 3600, counters, "fhirgate:um:"),
            {
                v.name: Interactions(
                    ResourceStore(engine, v.name, statements), v, settings.search_max_repeats
                )
                for v in VERSIONS
            },
            AccountRepo(engine),
            InvitationRepo(engine),
            SessionStore(engine, derive_key(secret, b"fhirgate dashboard csrf")),
            PasswordChecks(
                FailureLimiter(
                    SIGN_IN_FAILURES,
                    counters,
                    prefix="fhirgate:signin:",
                    address_limit=SIGN_IN_FAILURES * 5,
                ),
                concurrency=settings.password_verify_concurrency,
                per_key=settings.password_verify_concurrency_per_key,
            ),
            ApiKeys(
                settings=settings,
                engine=engine,
                clients=clients,
                directory=directory,
                audit=audit,
                hasher=hasher,
                test_quota=CallQuota(JWKS_TESTS_PER_MINUTE, 60, counters, "fhirgate:jwkstest:"),
            ),
            FailureLimiter(
                settings.bearer_failure_limit,
                counters,
                prefix="fhirgate:bearer:",
                address_limit=settings.bearer_failure_limit,
            ),
        )

    def background_jobs(self) -> list[tuple[float, Callable[[], Awaitable[object]]]]:
        """(interval in seconds, job) pairs the app runs while it serves."""
        jobs: list[tuple[float, Callable[[], Awaitable[object]]]] = [
            (KEY_RELOAD_SECONDS, self.keyring.reload),
            (PURGE_SECONDS, self.used_jti.purge),
            (AUDIT_FLUSH_SECONDS, self.audit.flush),
            (AUDIT_FLUSH_SECONDS, self.audit.seal),
            (PURGE_SECONDS, self.opaque.purge),
            # and the database's deny-list (Redis expires its entries itself)
            (PURGE_SECONDS, self.grants.purge),
            (PURGE_SECONDS, self.sessions.purge),
        ]
        if self.settings.is_sqlite:
            jobs.append((CHECKPOINT_SECONDS, self.checkpoint))
            jobs.append((STATISTICS_SECONDS, self.refresh_statistics))
        return jobs

    async def checkpoint(self) -> None:
        """SQLite: copy the WAL into the database file, in a thread (the inline connections of
        :mod:`fhirgate.storage.direct` never do it on the event loop)."""
        await asyncio.to_thread(checkpoint, sqlite_path(self.settings.database_url))

    async def refresh_statistics(self) -> None:
        """SQLite: the planner's statistics, gathered in a thread, then loaded by the inline
        connections (PostgreSQL's autovacuum keeps its own up to date)."""
        if self.database.is_sqlite:
            await self.database.analyze()

    async def aclose(self) -> None:
        try:
            await self.audit.aclose()
            await self.audit.flush(final=True)
            await self.audit.seal()
        except Exception:
            log.exception("could not write or seal the last audit events")
        await self.used_jti.aclose()
        await self.revoked.aclose()
        await self.jwks.aclose()
        if self.redis is not None:
            await self.redis.aclose()
        await self.database.aclose()
