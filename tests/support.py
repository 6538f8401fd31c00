"""Test helpers shared by every test module: keys, clients, assertions, a started app."""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import sqlite3
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi import FastAPI

from fhirgate.app import create_app
from fhirgate.config import Settings
from fhirgate.oauth.client_auth import JWT_BEARER
from fhirgate.oauth.jose import PrivateKey, jwk_from_public_key, sign_compact
from fhirgate.oauth.quota import CallQuota
from fhirgate.oauth.throttle import WINDOW, FailureLimiter
from fhirgate.services import Services
from fhirgate.storage.audit import AuditLog
from fhirgate.storage.db import upgrade, upgrade_async

BASE = "http://127.0.0.1:8000"
REQUIRE_SERVICES = os.environ.get("FHIRGATE_TEST_REQUIRE_SERVICES") == "1"


def _service_url(variable: str, local_url: str, port: int) -> str | None:
    """The URL in ``variable``; else ``local_url`` when something listens on its port, so that
    a plain ``make test`` on a machine with local PostgreSQL and Redis runs every test."""
    if variable in os.environ:
        return os.environ[variable] or None
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
        return local_url
    return None


PG_URL = _service_url(
    "FHIRGATE_TEST_DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test", 5432
)
REDIS_URL = _service_url("FHIRGATE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0", 6379)

_KEY_CACHE: dict[str, PrivateKey] = {}


def private_key(alg: str, slot: int = 0) -> PrivateKey:
    """A test key per (alg, slot), generated once per session (RSA generation is slow)."""
    cache_key = f"{alg}:{slot}"
    if cache_key not in _KEY_CACHE:
        if alg.startswith(("RS", "PS")):
            _KEY_CACHE[cache_key] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        else:
            curve = {"ES256": ec.SECP256R1(), "ES384": ec.SECP384R1()}[alg]
            _KEY_CACHE[cache_key] = ec.generate_private_key(curve)
    return _KEY_CACHE[cache_key]


def require_service(url: str | None, name: str) -> str:
    """The service URL, or skip (fail under ``FHIRGATE_TEST_REQUIRE_SERVICES=1``)."""
    if url:
        return url
    if REQUIRE_SERVICES:
        pytest.fail(f"{name} is required (FHIRGATE_TEST_REQUIRE_SERVICES=1) but not configured")
    pytest.skip(f"{name} not configured (set FHIRGATE_TEST_DATABASE_URL/FHIRGATE_TEST_REDIS_URL)")


#: Databases migrated once per test session, copied for each test: migrating costs ~0.2 s
#: (SQLite) to ~0.4 s (PostgreSQL) a test, a copy a few milliseconds. Tests still run the
#: migrations (``start`` upgrades: a no-op on a copy); tests/storage/test_migrations.py runs
#: them from nothing.
_TEMPLATES: dict[str, str] = {}


def migrated_sqlite_url(directory: Path, name: str = "fhirgate.db") -> str:
    """The URL of a SQLite database at ``directory/name``, a copy of the session's migrated
    template (SQLite's backup API: a consistent copy, WAL included)."""
    template = _TEMPLATES.get("sqlite")
    if template is None:
        template = str(Path(tempfile.mkdtemp(prefix="fhirgate-template-")) / "template.db")
        with ThreadPoolExecutor(1) as thread:  # alembic's env runs an event loop of its own
            thread.submit(upgrade, f"sqlite+aiosqlite:///{template}").result()
        _TEMPLATES["sqlite"] = template
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / name
    with (
        contextlib.closing(sqlite3.connect(template)) as source,
        contextlib.closing(sqlite3.connect(target)) as copy,
    ):
        source.backup(copy)
    return f"sqlite+aiosqlite:///{target}"


async def fresh_postgres_database(base_url: str) -> str:
    """A new PostgreSQL database for one test, migrated: a copy (``CREATE DATABASE … TEMPLATE``)
    of the session's template, migrated once. Returns its URL."""
    plain = base_url.replace("postgresql+asyncpg://", "postgresql://")
    template = _TEMPLATES.get(plain)
    if template is None:
        template = f"fhirgate_template_{uuid.uuid4().hex[:12]}"
        await _create_database(plain, f'CREATE DATABASE "{template}"')
        await upgrade_async(base_url.rsplit("/", 1)[0] + "/" + template)
        _TEMPLATES[plain] = template
    name = f"fhirgate_t_{uuid.uuid4().hex[:12]}"
    await _create_database(plain, f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    return base_url.rsplit("/", 1)[0] + "/" + name


async def _create_database(url: str, statement: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def pin_window(counter: FailureLimiter | CallQuota | AuditLog, seconds: int = WINDOW) -> None:
    """Counters live per fixed window (a minute for failures, an hour for quotas): pin
    ``counter``'s clock one second into the current one, so that no window boundary restarts
    the count halfway through a test (the throttle's own tests fake its clock the same way)."""
    pinned = time.time() // seconds * seconds + 1
    counter._clock = lambda: pinned


async def flush_redis(url: str) -> None:
    from redis.asyncio import Redis

    redis = Redis.from_url(url)
    try:
        await redis.flushdb()
    finally:
        await redis.aclose()


@dataclass
class Running:
    """A started app, its services and an HTTP client talking to it."""

    app: FastAPI
    services: Services
    http: httpx.AsyncClient


async def start(settings: Settings) -> tuple[Running, Any]:
    """Migrate, build the app, run its lifespan; returns the running app and its exit stack."""
    await upgrade_async(settings.database_url)
    app = create_app(settings)
    stack = contextlib.AsyncExitStack()
    await stack.enter_async_context(app.router.lifespan_context(app))
    http = await stack.enter_async_context(
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE)
    )
    return Running(app, app.state.services, http), stack


@dataclass
class SigningClient:
    """A registered client with the private key that signs its assertions."""

    client_id: str
    key: PrivateKey
    kid: str
    alg: str
    token_url: str = f"{BASE}/oauth2/token"
    extra: dict[str, Any] = field(default_factory=dict)

    def assertion(
        self,
        *,
        header: dict[str, Any] | None = None,
        drop: tuple[str, ...] = (),
        key: PrivateKey | None = None,
        **claims: Any,
    ) -> str:
        """A signed assertion; keyword claims override the defaults, ``drop`` removes some."""
        now = int(time.time())
        body: dict[str, Any] = {
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": self.token_url,
            "exp": now + 240,
            "iat": now,
            "jti": secrets.token_urlsafe(16),
        }
        body.update(claims)
        hdr: dict[str, Any] = {"alg": self.alg, "kid": self.kid, "typ": "JWT"}
        hdr.update(header or {})
        for name in drop:
            body.pop(name, None)
            hdr.pop(name, None)
        return sign_compact(hdr, body, key or self.key)

    def form(self, scope: str | None = "system/*.rs", **claims: Any) -> dict[str, str]:
        form = {
            "grant_type": "client_credentials",
            "client_assertion_type": JWT_BEARER,
            "client_assertion": self.assertion(**claims),
        }
        if scope is not None:
            form["scope"] = scope
        return form


MakeClient = Callable[..., Awaitable[SigningClient]]


async def register_client(
    services: Services,
    alg: str = "RS384",
    *,
    kid: str | None = None,
    scope: str = "system/*.rs",
    jwks_url: str | None = None,
    inline: bool = True,
    slot: int = 0,
    environment: str = "development",
) -> SigningClient:
    """Register a private_key_jwt client (its key: ``private_key(alg, slot)``) and return it."""
    key = private_key(alg, slot)
    kid = kid or f"{alg.lower()}-{slot}"
    jwks = {"keys": [jwk_from_public_key(key.public_key(), kid, alg)]} if inline else None
    created = await services.clients.create(
        environment=await services.organizations.default_environment(environment),
        name="test client",
        auth_method="private_key_jwt",
        scope=scope,
        jwks=jwks,
        jwks_url=jwks_url,
    )
    return SigningClient(created.client_id, key, kid, alg)


async def register_secret_client(
    services: Services,
    method: str = "client_secret_basic",
    *,
    token_lifetime: int | None = None,
    scope: str = "system/*.rs",
    secret: str | None = None,
    environment: str = "development",
) -> tuple[str, str]:
    """Register a secret client (``client_secret_basic``, ``client_secret_post`` or
    ``legacy_api_key``) in the default organization; returns ``(client_id, secret)``. The
    secret is ``secret`` when given (tests of unusual characters), else a generated one; only
    its hash (``services.hasher``) is stored, as ``fhirgate clients create`` does."""
    secret = services.hasher.generate() if secret is None else secret
    created = await services.clients.create(
        environment=await services.organizations.default_environment(environment),
        name="secret client",
        auth_method=method,
        scope=scope,
        secret_hash=services.hasher.hash(secret),
        token_lifetime=token_lifetime,
    )
    return created.client_id, secret
