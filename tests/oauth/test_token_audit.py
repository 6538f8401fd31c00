"""Every token issued is in the audit before it leaves — the standard token endpoint's and
Redox legacy keys' (authenticate and refresh) — and a token whose row cannot be stored is never
sent. On SQLite, PostgreSQL and PostgreSQL + Redis."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, text
from tests.support import Running, register_secret_client

from fhirgate.storage.models import AuditEventRow


async def issued_rows(server: Running, client_id: str) -> list[Any]:
    """The stored ``token.issued`` rows of a client — nothing flushed first."""
    stmt = select(AuditEventRow).where(
        AuditEventRow.event == "token.issued", AuditEventRow.client_id == client_id
    )
    async with server.services.engine.connect() as conn:
        return list((await conn.execute(stmt)).all())


async def test_a_token_is_audited_before_it_leaves(server: Running) -> None:
    client_id, secret = await register_secret_client(server.services, "client_secret_basic")
    answer = await server.http.post(
        "/oauth2/token", data={"grant_type": "client_credentials", "scope": "system/*.rs"},
        auth=(client_id, secret),
    )  # fmt: skip
    assert answer.status_code == 200, answer.text
    (row,) = await issued_rows(server, client_id)
    assert "dialect=standard" in row.detail and row.row_mac is not None


async def test_legacy_authenticate_and_refresh_are_audited(server: Running) -> None:
    api_key, secret = await register_secret_client(server.services, "legacy_api_key")
    first = await server.http.post("/auth/authenticate", json={"apiKey": api_key, "secret": secret})
    assert first.status_code == 200, first.text
    again = await server.http.post(
        "/auth/refreshToken", json={"apiKey": api_key, "refreshToken": first.json()["refreshToken"]}
    )
    assert again.status_code == 200, again.text
    rows = await issued_rows(server, api_key)
    assert sorted(row.detail.rsplit(" ", 1)[-1] for row in rows) == [
        "grant=refreshToken", "grant=secret",
    ]  # fmt: skip
    assert all("dialect=redox-legacy" in row.detail for row in rows)
    assert first.json()["accessToken"] not in " ".join(str(row) for row in rows)


async def test_no_token_leaves_without_its_audit_row(server: Running) -> None:
    client_id, secret = await register_secret_client(server.services, "client_secret_basic")
    api_key, legacy_secret = await register_secret_client(server.services, "legacy_api_key")
    async with server.services.engine.begin() as conn:  # a real fault: the log is gone
        await conn.execute(text("ALTER TABLE audit_events RENAME TO audit_events_gone"))
    try:
        standard = await server.http.post(
            "/oauth2/token", data={"grant_type": "client_credentials", "scope": "system/*.rs"},
            auth=(client_id, secret),
        )  # fmt: skip
        legacy = await server.http.post(
            "/auth/authenticate", json={"apiKey": api_key, "secret": legacy_secret}
        )
    finally:
        async with server.services.engine.begin() as conn:
            await conn.execute(text("ALTER TABLE audit_events_gone RENAME TO audit_events"))
    assert standard.status_code == 503 and "access_token" not in standard.text
    assert legacy.status_code == 503 and "accessToken" not in legacy.text
