"""API keys as people manage them: the one core behind the dashboard's pages and the Platform
API (docs/platform-api.md), so both enforce the same rules on the server.

Who may do what (Redox roles, research/vendors.md R10; docs/dashboard.md):

* an active member of an organization (any role) **sees** the API keys of its environments;
* its owners and admins, and whoever holds the ``engineer`` role in an environment, **manage**
  that environment's keys (create, rename, keys, JWKS URL, secret, revoke, delete); others get
  :class:`Forbidden`;
* a key or environment of another organization is :class:`NotFound`, exactly like one that
  does not exist, so ids reveal nothing;
* a **user-level** key (Redox's "User API Keys", for the Platform API) is its owner's alone:
  to anyone else it does not exist.

What people give is checked by :mod:`fhirgate.dashboard.key_input` (public keys only,
RFC 7517 §4); no view carries a secret, a hash or a private key member. Secrets are generated
by the server (256 bits, RFC 6749 §10.10), shown once, stored as an HMAC (DESIGN.md); a rotation
ends the old secret at once (Redox R15). Every change forgets the client in this process's cache
and writes an audit row naming the person and organization.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from enum import Enum
from typing import Any, Final

from sqlalchemy import Date, cast, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from fhirgate.config import Settings
from fhirgate.dashboard.key_input import (
    PLATFORM_SCOPE,
    PRIVATE_JWK_MEMBERS,
    KeyChangeError,
    checked_auth_method,
    checked_jwks_url,
    checked_set,
    clean_name,
    environment_scope,
    fetch_problem,
    keys_from_text,
    public_jwks,
    url_detail,
)
from fhirgate.domain.clients import AuthMethod, Client
from fhirgate.domain.errors import NotFound
from fhirgate.domain.organizations import (
    Environment,
    EnvironmentKind,
    EnvironmentRole,
    OrganizationRole,
)
from fhirgate.oauth.client_auth import SecretHasher
from fhirgate.oauth.clients import ClientDirectory
from fhirgate.oauth.jwks import JWKSFetcher, JWKSFetchError
from fhirgate.oauth.quota import CallQuota
from fhirgate.storage.accounts import AccountRepo
from fhirgate.storage.audit import AuditLog
from fhirgate.storage.models import AuditEventRow
from fhirgate.storage.repos import ClientRepo, OrganizationRepo, as_utc

__all__ = [
    "PLATFORM_SCOPE",
    "PRIVATE_JWK_MEMBERS",
    "UNSET",
    "Actor",
    "ApiKeyView",
    "ApiKeys",
    "ConcurrentChange",
    "CreatedKey",
    "DailyCount",
    "EnvironmentAccess",
    "Failure",
    "Forbidden",
    "JwksCheck",
    "KeyActivity",
    "KeyChangeError",
    "NotFound",
    "PublicKeyInfo",
    "Unset",
    "clean_name",
]

ACTIVITY_DAYS = 14
FAILURES_SHOWN = 10
#: JWKS URL tests a person may make a minute (each one is a fetch the server makes for them).
JWKS_TESTS_PER_MINUTE = 20
_ATTEMPTS = 3  # optimistic updates retried on a concurrent change
_NO_SUCH_KEY = "no such API key"
_NO_SUCH_ENVIRONMENT = "no such environment"
_FAILURE_EVENTS = ("client_auth.failure", "grant.failure")
_MANAGERS = frozenset({OrganizationRole.OWNER.value, OrganizationRole.ADMIN.value})


class Forbidden(PermissionError):
    """The person may see this but not change it, or their account is not active."""


class ConcurrentChange(KeyChangeError):
    """The key kept changing under us (someone else editing it at the same moment)."""


class Unset(Enum):
    """Marks an argument left out (``None`` means "clear it")."""

    UNSET = "unset"


UNSET: Final = Unset.UNSET


@dataclass(frozen=True, slots=True)
class Actor:
    """A signed-in person and their roles: organization id → role, environment id → role."""

    user_id: str
    email: str
    organizations: Mapping[str, str]
    environment_roles: Mapping[str, str]

    def can_see(self, environment: Environment) -> bool:
        return environment.organization_id in self.organizations

    def can_manage(self, environment: Environment) -> bool:
        return self.organizations.get(environment.organization_id) in _MANAGERS or (
            self.can_see(environment)
            and self.environment_roles.get(environment.id) == EnvironmentRole.ENGINEER
        )


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


def _view(client: Client, last_used: datetime | None) -> ApiKeyView:
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


def _require_manager(actor: Actor, environment: Environment) -> None:
    if not actor.can_manage(environment):
        raise Forbidden(
            f"changing the API keys of {environment.kind} takes the engineer role there, "
            "or the organization's owner or admin role"
        )


KeysChange = Callable[[Client], tuple[dict[str, Any] | None, str | None]]


class ApiKeys:
    """Every operation on API keys, by a dashboard user (``actor_id``), with its role checked."""

    def __init__(
        self,
        *,
        settings: Settings,
        engine: AsyncEngine,
        clients: ClientRepo,
        directory: ClientDirectory,
        audit: AuditLog,
        hasher: SecretHasher,
        fetcher: Callable[[], JWKSFetcher] | None = None,
        test_quota: CallQuota | None = None,
    ) -> None:
        """``fetcher`` makes the JWKS fetcher a URL test uses (default: a fresh
        :class:`JWKSFetcher` with the server's settings, so a test is a real fetch);
        ``test_quota`` bounds the JWKS URL tests each person may make (default:
        :data:`JWKS_TESTS_PER_MINUTE` a minute, counted in this process)."""
        self._settings = settings
        self._engine = engine
        self._clients = clients
        self._directory = directory
        self._audit = audit
        self._hasher = hasher
        self._accounts = AccountRepo(engine)
        self._organizations = OrganizationRepo(engine)
        self._new_fetcher = fetcher or (lambda: JWKSFetcher(settings))
        self._test_quota = test_quota or CallQuota(JWKS_TESTS_PER_MINUTE, 60, None, "")

    # -- who is acting ------------------------------------------------------------------------

    async def actor(self, user_id: str) -> Actor:
        """The person and their roles; :class:`Forbidden` if the account is unknown or
        deactivated."""
        person = await self._accounts.get(user_id)
        if person is None or not person.active:
            raise Forbidden("this account is deactivated")
        memberships = await self._accounts.memberships(user_id)
        roles = await self._accounts.environment_roles(user_id)
        organizations = {m.organization_id: m.role for m in memberships}
        return Actor(user_id, person.email, organizations, roles)

    async def _environment(self, actor: Actor, environment_id: str, manage: bool) -> Environment:
        environment = None
        if len(environment_id) <= 36:  # environments.id
            environment = await self._clients.environment(environment_id)
        if environment is None or not actor.can_see(environment):
            raise NotFound(_NO_SUCH_ENVIRONMENT)
        if manage:
            _require_manager(actor, environment)
        return environment

    async def _key(self, actor: Actor, client_id: str, manage: bool) -> Client:
        """The key if the person sees it (and manages it, with ``manage``); a key of another
        organization, or another person's user-level key, is "no such API key" like one that
        does not exist."""
        client = None
        if len(client_id) <= 64:  # clients.client_id
            client = await self._clients.get(client_id)
        if client is None:
            raise NotFound(_NO_SUCH_KEY)
        if client.owner_user_id is not None:
            if client.owner_user_id != actor.user_id:
                raise NotFound(_NO_SUCH_KEY)
            return client
        if not actor.can_see(client.environment):
            raise NotFound(_NO_SUCH_KEY)
        if manage:
            _require_manager(actor, client.environment)
        return client

    async def _changed(self, actor: Actor, client: Client, event: str, detail: str = "") -> None:
        self._directory.forget(client.client_id)
        await self._audit.record(
            event,
            client_id=client.client_id,
            actor=actor.email,
            organization_id=client.environment.organization_id,
            detail=detail,
        )

    # -- reading ------------------------------------------------------------------------------

    async def environments(self, actor_id: str) -> list[EnvironmentAccess]:
        """The environments whose keys the person sees, and where they may change them."""
        actor = await self.actor(actor_id)
        found = await self._clients.environments(actor.organizations.keys())
        return [
            EnvironmentAccess(
                env.id, env.kind, env.organization_id, env.organization_slug,
                actor.organizations[env.organization_id], actor.environment_roles.get(env.id),
                actor.can_manage(env),
            )
            for env in found
        ]  # fmt: skip

    async def list_keys(self, actor_id: str, environment_id: str) -> list[ApiKeyView]:
        """The API keys of an environment (never user-level keys), oldest first."""
        actor = await self.actor(actor_id)
        environment = await self._environment(actor, environment_id, manage=False)
        return await self._views(await self._clients.list_environment(environment.id))

    async def get(self, actor_id: str, client_id: str) -> ApiKeyView:
        """One API key the person sees (an environment's, or their own user-level key)."""
        actor = await self.actor(actor_id)
        return (await self._views([await self._key(actor, client_id, manage=False)]))[0]

    async def _views(self, clients: Sequence[Client]) -> list[ApiKeyView]:
        used = await self._last_used([c.client_id for c in clients])
        return [_view(c, used.get(c.client_id)) for c in clients]

    async def _last_used(self, client_ids: list[str]) -> dict[str, datetime]:
        if not client_ids:
            return {}
        event = AuditEventRow
        latest = {}
        async with self._engine.connect() as conn:
            for client_id in client_ids:  # one index lookup each (ix_audit_events_client_event)
                at = (
                    await conn.execute(
                        select(func.max(event.occurred_at)).where(
                            event.client_id == client_id, event.event == "token.issued"
                        )
                    )
                ).scalar_one_or_none()
                if at is not None:
                    latest[client_id] = as_utc(at)
        return latest

    async def activity(self, actor_id: str, client_id: str) -> KeyActivity:
        """Last use, tokens issued per UTC day over the last 14 days (today included), and
        the last 10 failed authentications or grants, from the audit log."""
        actor = await self.actor(actor_id)
        client = await self._key(actor, client_id, manage=False)
        event = AuditEventRow
        today = datetime.now(UTC).date()
        first = today - timedelta(days=ACTIVITY_DAYS - 1)
        start = datetime(first.year, first.month, first.day, tzinfo=UTC)
        if self._engine.dialect.name == "postgresql":
            day: Any = cast(func.timezone("UTC", event.occurred_at), Date)
        else:  # SQLite keeps UTC wall-clock text
            day = func.date(event.occurred_at)
        mine = event.client_id == client.client_id
        counts = (
            select(day, func.count())
            .where(mine, event.event == "token.issued", event.occurred_at >= start)
            .group_by(day)
        )
        failures = (
            select(event.occurred_at, event.event, event.source, event.detail)
            .where(mine, event.event.in_(_FAILURE_EVENTS))
            .order_by(event.id.desc())
            .limit(FAILURES_SHOWN)
        )
        async with self._engine.connect() as conn:
            per_day = {
                date.fromisoformat(str(d)[:10]): int(n) for d, n in await conn.execute(counts)
            }
            failed = [
                Failure(as_utc(at), ev, src, det or "")
                for at, ev, src, det in await conn.execute(failures)
            ]
        used = await self._last_used([client.client_id])
        days = (first + timedelta(days=i) for i in range(ACTIVITY_DAYS))
        return KeyActivity(
            used.get(client.client_id),
            tuple(DailyCount(d, per_day.get(d, 0)) for d in days),
            tuple(failed),
        )

    # -- creating -----------------------------------------------------------------------------

    async def create(
        self,
        actor_id: str,
        environment_id: str,
        name: str,
        auth_method: str = AuthMethod.PRIVATE_KEY_JWT,
        *,
        jwk_set: Mapping[str, Any] | None = None,
        jwks_url: str | None = None,
        scope: str | None = None,
    ) -> CreatedKey:
        """A new API key in the environment. A secret method (RFC 7591 §2
        ``client_secret_basic``/``_post``, Redox legacy) gets a secret, returned this once; a
        ``private_key_jwt`` key gets the public keys and/or JWKS URL given (none is fine: it
        cannot authenticate until keys are added). ``scope`` defaults to ``system/*.rs``."""
        actor = await self.actor(actor_id)
        environment = await self._environment(actor, environment_id, manage=True)
        cleaned, method = clean_name(name), checked_auth_method(auth_method)
        allowed = environment_scope(scope)
        secret = jwks = url = None
        if method.uses_secret:
            if jwk_set is not None or jwks_url:
                raise KeyChangeError(
                    f"a {method.value} key authenticates with its secret: it takes no public "
                    "keys or JWKS URL",
                    "jwk_set" if jwk_set is not None else "jwks_url",
                )
            secret = SecretHasher.generate()
        else:
            jwks = public_jwks(jwk_set) if jwk_set is not None else {"keys": []}
            url = self._checked_url(jwks_url)
        client = await self._clients.create(
            environment=environment,
            name=cleaned,
            auth_method=method.value,
            scope=allowed,
            jwks=jwks,
            jwks_url=url,
            secret_hash=None if secret is None else self._hasher.hash(secret),
        )
        await self._changed(actor, client, "api_key.created", f"auth_method={method.value}")
        return CreatedKey(_view(client, None), secret)

    async def list_user_keys(self, actor_id: str) -> list[ApiKeyView]:
        """The person's own user-level API keys (Platform API), oldest first."""
        actor = await self.actor(actor_id)
        return await self._views(await self._clients.list_owned(actor.user_id))

    async def create_user_key(self, actor_id: str, name: str) -> ApiKeyView:
        """A user-level API key (Redox R8: user menu → User API Keys): ``private_key_jwt``,
        scope ``platform``, no public key yet ("JWKS with 0 key(s)"). It lives in the
        development environment of the person's first organization (by slug): every client
        belongs to an environment; which one does not change what the key may do."""
        actor = await self.actor(actor_id)
        cleaned = clean_name(name)
        if not actor.organizations:
            raise Forbidden("a user-level API key needs an organization to belong to")
        first = next(iter(actor.organizations))  # memberships come ordered by slug
        environment = await self._organizations.environment_of(first, EnvironmentKind.DEVELOPMENT)
        if environment is None:
            raise NotFound(_NO_SUCH_ENVIRONMENT)
        client = await self._clients.create(
            environment=environment,
            name=cleaned,
            auth_method=AuthMethod.PRIVATE_KEY_JWT.value,
            scope=PLATFORM_SCOPE,
            jwks={"keys": []},
            owner_user_id=actor.user_id,
        )
        await self._changed(actor, client, "api_key.created", "user_level=true")
        return _view(client, None)

    # -- changing -----------------------------------------------------------------------------

    async def rename(self, actor_id: str, client_id: str, name: str) -> ApiKeyView:
        """A new name: stripped, 1-100 characters, no control characters."""
        actor = await self.actor(actor_id)
        client = await self._key(actor, client_id, manage=True)
        cleaned = clean_name(name)
        await self._clients.rename(client.client_id, cleaned)
        await self._changed(actor, client, "api_key.renamed", f"name={cleaned}")
        return await self._reload(client.client_id)

    async def update(
        self,
        actor_id: str,
        client_id: str,
        *,
        name: str | None = None,
        jwk_set: Mapping[str, Any] | Unset = UNSET,
        jwks_url: str | Unset | None = UNSET,
    ) -> ApiKeyView:
        """Change any of the name, the whole JWK Set and the JWKS URL (``None``: remove it) in
        one write (the Platform API's ``PATCH``)."""
        actor = await self.actor(actor_id)
        client = await self._key(actor, client_id, manage=True)
        cleaned = None if name is None else clean_name(name)
        keys = None if isinstance(jwk_set, Unset) else public_jwks(jwk_set)
        url = UNSET if isinstance(jwks_url, Unset) else self._checked_url(jwks_url)
        if keys is not None or not isinstance(url, Unset):
            self._needs_keys(client)

        def change(current: Client) -> tuple[dict[str, Any] | None, str | None]:
            return (
                current.jwks if keys is None else keys,
                current.jwks_url if isinstance(url, Unset) else url,
            )

        updated = await self._modify(client, change, cleaned)
        if cleaned is not None:
            await self._changed(actor, updated, "api_key.renamed", f"name={cleaned}")
        if keys is not None:
            kids = ",".join(jwk["kid"] for jwk in keys["keys"])
            await self._changed(actor, updated, "api_key.keys_replaced", f"kids={kids}")
        if not isinstance(url, Unset):
            await self._changed(actor, updated, "api_key.jwks_url_set", url_detail(url))
        return await self._reload(client.client_id)

    async def add_public_key(
        self, actor_id: str, client_id: str, key_text: str, kid: str | None = None
    ) -> ApiKeyView:
        """Add a public key given as a PEM public key, a JWK or a JWK Set (JSON text); its
        kid is ``kid``, else the JWK's own, else its RFC 7638 thumbprint."""
        actor = await self.actor(actor_id)
        client = await self._key(actor, client_id, manage=True)
        self._needs_keys(client)
        new = keys_from_text(key_text, kid)

        def change(current: Client) -> tuple[dict[str, Any] | None, str | None]:
            existing = [dict(jwk) for jwk in (current.jwks or {}).get("keys", [])]
            return checked_set(existing + new, "public_key"), current.jwks_url

        updated = await self._modify(client, change)
        kids = ",".join(jwk["kid"] for jwk in new)
        await self._changed(actor, updated, "api_key.key_added", f"kid={kids}")
        return await self._reload(client.client_id)

    async def remove_public_key(self, actor_id: str, client_id: str, kid: str) -> ApiKeyView:
        """Remove the public key ``kid``; assertions signed with it fail from now on."""
        actor = await self.actor(actor_id)
        client = await self._key(actor, client_id, manage=True)

        def change(current: Client) -> tuple[dict[str, Any] | None, str | None]:
            existing = list((current.jwks or {}).get("keys", []))
            kept = [jwk for jwk in existing if jwk.get("kid") != kid]
            if len(kept) == len(existing):
                raise KeyChangeError(f"this API key has no public key with kid {kid!r}", "kid")
            return {"keys": kept}, current.jwks_url

        updated = await self._modify(client, change)
        await self._changed(actor, updated, "api_key.key_removed", f"kid={kid}")
        return await self._reload(client.client_id)

    async def set_jwks_url(self, actor_id: str, client_id: str, url: str | None) -> ApiKeyView:
        """Set (https only, unless ``allow_insecure_jwks``) or, with ``None``, clear the URL
        the server fetches the key's JWK Set from."""
        actor = await self.actor(actor_id)
        client = await self._key(actor, client_id, manage=True)
        self._needs_keys(client)
        checked = self._checked_url(url)
        updated = await self._modify(client, lambda current: (current.jwks, checked))
        await self._changed(actor, updated, "api_key.jwks_url_set", url_detail(checked))
        return await self._reload(client.client_id)

    async def test_jwks_url(
        self, actor_id: str, client_id: str, url: str | None = None
    ) -> JwksCheck:
        """Fetch a JWKS URL now — ``url`` (which takes the manage right) or the key's own —
        through the SSRF-guarded fetcher, bypassing its cache, and list the kids it serves;
        :class:`KeyChangeError` saying what went wrong otherwise."""
        actor = await self.actor(actor_id)
        client = await self._key(actor, client_id, manage=url is not None)
        target = self._checked_url(url) if url is not None else client.jwks_url
        if target is None:
            raise KeyChangeError("this API key has no JWKS URL to test", "jwks_url")
        retry_after = await self._test_quota.take(actor.user_id)
        if retry_after is not None:  # each test makes the server fetch a URL someone chose
            raise KeyChangeError(
                f"too many JWKS URL tests: try again in {retry_after} seconds", "jwks_url"
            )
        fetcher = self._new_fetcher()
        try:
            keys = await fetcher.keys(target)
        except JWKSFetchError as exc:
            problem = fetch_problem(exc, self._settings.jwks_timeout)
            raise KeyChangeError(problem, "jwks_url") from None
        except ValueError:  # e.g. a host name IDNA refuses
            raise KeyChangeError("the JWKS URL's host name is not valid", "jwks_url") from None
        finally:
            await fetcher.aclose()
        return JwksCheck(target, tuple(key.kid for key in keys))

    async def rotate_secret(self, actor_id: str, client_id: str) -> CreatedKey:
        """A new secret for a secret key, returned this once; the old one stops working now
        (no grace: Redox R15). Running replicas see it within ``client_cache_ttl``."""
        actor = await self.actor(actor_id)
        client = await self._key(actor, client_id, manage=True)
        if not AuthMethod(client.auth_method).uses_secret:
            raise KeyChangeError(
                f"this key authenticates with {client.auth_method}: it has no secret",
                "auth_method",
            )
        secret = SecretHasher.generate()
        await self._clients.rotate_secret(client.client_id, self._hasher.hash(secret), 0)
        await self._changed(actor, client, "api_key.secret_rotated", "grace=0")
        return CreatedKey(await self._reload(client.client_id), secret)

    async def revoke(self, actor_id: str, client_id: str) -> ApiKeyView:
        """No more tokens for the key, and its live tokens are refused (within
        ``client_cache_ttl`` on other replicas)."""
        actor = await self.actor(actor_id)
        client = await self._key(actor, client_id, manage=True)
        await self._clients.revoke(client.client_id)
        await self._changed(actor, client, "api_key.revoked")
        return await self._reload(client.client_id)

    async def delete(self, actor_id: str, client_id: str) -> None:
        """Delete the key for good (its tokens are refused, its grants and users go)."""
        actor = await self.actor(actor_id)
        client = await self._key(actor, client_id, manage=True)
        await self._clients.delete(client.client_id)
        await self._changed(actor, client, "api_key.deleted", f"name={client.name}")

    # -- helpers ------------------------------------------------------------------------------

    def _checked_url(self, url: str | None) -> str | None:
        return checked_jwks_url(url, self._settings.allow_insecure_jwks)

    @staticmethod
    def _needs_keys(client: Client) -> None:
        if AuthMethod(client.auth_method).uses_secret:
            raise KeyChangeError(
                f"this key authenticates with its secret ({client.auth_method}): "
                "it takes no public keys or JWKS URL",
                "auth_method",
            )

    async def _modify(self, client: Client, change: KeysChange, name: str | None = None) -> Client:
        """Apply ``change`` to the freshest row, retrying when someone else changed it in
        between (no lost update when two people add keys at once)."""
        for _ in range(_ATTEMPTS):
            jwks, url = change(client)
            if await self._clients.update_keys(
                client.client_id,
                jwks=jwks,
                jwks_url=url,
                name=name,
                expected_updated_at=client.updated_at,
            ):
                return await self._fresh(client.client_id)
            client = await self._fresh(client.client_id)
        raise ConcurrentChange("someone else is changing this API key right now; try again")

    async def _fresh(self, client_id: str) -> Client:
        client = await self._clients.get(client_id)
        if client is None:
            raise NotFound(_NO_SUCH_KEY)
        return client

    async def _reload(self, client_id: str) -> ApiKeyView:
        return (await self._views([await self._fresh(client_id)]))[0]
