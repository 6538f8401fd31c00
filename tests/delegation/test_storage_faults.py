"""Storage faults on the grant paths: a 503 in the surface's error format, never a 500, and no
grant lost — the refused refresh token still works once storage is back."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from fhirgate.config import Settings
from tests.delegation.support import register_application
from tests.support import Running


async def _waiting_backend(admin: asyncpg.Connection) -> int:
    """The server backend that waits for the admin's lock."""
    for _ in range(250):
        pid = await admin.fetchval(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
        )
        if pid is not None:
            return int(pid)
        await asyncio.sleep(0.02)
    pytest.fail("the refresh never waited for the lock")


@pytest.mark.parametrize("backend_settings", ["postgres"], indirect=True)
async def test_a_connection_lost_mid_refresh_is_503_and_the_token_survives(
    server: Running, backend_settings: Settings
) -> None:
    app = await register_application(server.services, server.http)
    tokens = await app.user_tokens("faulty")
    url = backend_settings.database_url.replace("postgresql+asyncpg://", "postgresql://")
    admin = await asyncpg.connect(url)
    try:
        # the refresh inserts a row that references the client: it waits behind this lock
        transaction = admin.transaction()
        await transaction.start()
        await admin.execute("SELECT 1 FROM clients WHERE client_id = $1 FOR UPDATE", app.client_id)
        refreshing = asyncio.create_task(app.refresh(tokens["refresh_token"]))
        # a real fault: PostgreSQL ends the server's connection in the middle of the statement
        assert await admin.fetchval(
            "SELECT pg_terminate_backend($1)", await _waiting_backend(admin)
        )
        failed = await refreshing
        await transaction.rollback()
    finally:
        await admin.close()
    assert failed.status_code == 503, failed.text
    assert failed.json()["error"] == "server_error"
    assert "Retry-After" in failed.headers

    again = await app.refresh(tokens["refresh_token"])  # nothing was spent: the token works
    assert again.status_code == 200, again.text
