"""Storage faults on the grant paths: a 503 in the surface's error format, never a 500, and no
grant lost — the refused refresh token still works once storage is back."""

from __future__ import annotations

import asyncpg
import pytest
from tests.delegation.support import register_application
from tests.support import Running

from fhirgate.config import Settings


@pytest.mark.parametrize("backend_settings", ["postgres"], indirect=True)
async def test_a_dropped_database_connection_is_503_and_the_token_survives(
    server: Running, backend_settings: Settings
) -> None:
    app = await register_application(server.services, server.http)
    tokens = await app.user_tokens("faulty")
    refreshed = await app.refresh(tokens["refresh_token"])  # the grant store's pool is open
    assert refreshed.status_code == 200, refreshed.text
    refresh_token = refreshed.json()["refresh_token"]

    url = backend_settings.database_url.replace("postgresql+asyncpg://", "postgresql://")
    admin = await asyncpg.connect(url)
    try:  # a real fault: PostgreSQL ends every connection of the server
        ended = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    finally:
        await admin.close()
    assert ended >= 1

    failed = await app.refresh(refresh_token)
    assert failed.status_code == 503, failed.text
    assert failed.json()["error"] == "server_error"
    assert "Retry-After" in failed.headers

    again = await app.refresh(refresh_token)  # nothing was spent: the same token works
    assert again.status_code == 200, again.text
