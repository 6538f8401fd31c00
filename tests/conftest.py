"""Shared fixtures: real storage (SQLite per test; PostgreSQL + Redis when configured), the real
app through httpx's ASGI transport, and factories for clients and their assertions.

Backends: ``FHIRGATE_TEST_DATABASE_URL`` (a PostgreSQL URL) and ``FHIRGATE_TEST_REDIS_URL`` turn
on the PostgreSQL/Redis variants; unset, they default to the local services on their standard
ports when something listens there (tests/support.py). With
``FHIRGATE_TEST_REQUIRE_SERVICES=1`` (set by ``.ci/run``) a missing or unreachable service fails
those tests instead of skipping them.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fhirgate.config import Settings
from tests.support import (
    BASE,
    PG_URL,
    REDIS_URL,
    MakeClient,
    Running,
    SigningClient,
    flush_redis,
    fresh_postgres_database,
    migrated_sqlite_url,
    register_client,
    require_service,
    start,
)


@pytest.fixture
def sqlite_settings(tmp_path: Path) -> Settings:
    return Settings(
        database_url=migrated_sqlite_url(tmp_path),
        var_dir=tmp_path / "var",
        public_url=BASE,
        allow_insecure_jwks=True,
    )


@pytest.fixture(params=["sqlite", "postgres", "postgres+redis"])
async def backend_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """Settings for each deployment: embedded SQLite; PostgreSQL alone (single-use state in
    PostgreSQL too); PostgreSQL with Redis."""
    if request.param == "sqlite":
        return Settings(
            database_url=migrated_sqlite_url(tmp_path),
            var_dir=tmp_path / "var",
            public_url=BASE,
            allow_insecure_jwks=True,
        )
    pg = require_service(PG_URL, "PostgreSQL")
    redis = None
    if request.param == "postgres+redis":
        redis = require_service(REDIS_URL, "Redis")
        await flush_redis(redis)
    return Settings(
        database_url=await fresh_postgres_database(pg),
        redis_url=redis,
        var_dir=tmp_path / "var",
        public_url=BASE,
        secret_key="test-secret-" + secrets.token_hex(8),
        allow_insecure_jwks=True,
    )


@pytest.fixture
def settings(sqlite_settings: Settings) -> Settings:
    """The default settings of a test: SQLite. Override in a module to change them."""
    return sqlite_settings


@pytest.fixture
async def running(settings: Settings) -> AsyncIterator[Running]:
    server, stack = await start(settings)
    try:
        yield server
    finally:
        await stack.aclose()


@pytest.fixture
async def server(backend_settings: Settings) -> AsyncIterator[Running]:
    """The app on each backend (SQLite, PostgreSQL, PostgreSQL + Redis)."""
    running, stack = await start(backend_settings)
    try:
        yield running
    finally:
        await stack.aclose()


@pytest.fixture
def http(running: Running) -> httpx.AsyncClient:
    return running.http


@pytest.fixture
def make_client(running: Running) -> MakeClient:
    """Register a private_key_jwt client in the default development environment."""

    async def factory(alg: str = "RS384", **options: Any) -> SigningClient:
        return await register_client(running.services, alg, **options)

    return factory
