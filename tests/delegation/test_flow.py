"""The 1upHealth flow end to end: user → code → tokens → FHIR-side principal → refresh."""

from __future__ import annotations

import httpx

from tests.delegation.support import register_application
from tests.support import Running


async def test_code_exchange_refresh_and_principal(running: Running) -> None:
    app = await register_application(running.services, running.http)
    tokens = await app.user_tokens("alice", scope="user/*.* openid")
    assert tokens["token_type"] == "Bearer"
    assert tokens["expires_in"] == 7200
    assert tokens["scope"] == "user/*.* openid"
    assert tokens["refresh_token"] and tokens["id_token"]
    who = await running.http.get(
        "/whoami", headers={"Authorization": f"Bearer {tokens['access_token']}"}
    )
    assert who.status_code == 200, who.text
    assert who.json()["oneup_user_id"] == tokens["oneup_user_id"]
    assert who.json()["sub"] == str(tokens["oneup_user_id"])

    refreshed = await app.refresh(tokens["refresh_token"])
    assert refreshed.status_code == 200, refreshed.text
    again = await app.refresh(tokens["refresh_token"])
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"


async def test_header_access_as_user(running: Running) -> None:
    app = await register_application(running.services, running.http)
    tokens = await app.user_tokens("bob")
    headers = {**app.credentials, "x-oneup-user-id": str(tokens["oneup_user_id"])}
    who = await running.http.get("/whoami", headers=headers)
    assert who.status_code == 200, who.text
    assert who.json()["oneup_user_id"] == tokens["oneup_user_id"]
    everyone = await running.http.get(
        "/whoami", headers={**app.credentials, "x-oneup-user-id": "client"}
    )
    assert everyone.json()["all_users"] is True
    wrong: httpx.Response = await running.http.get(
        "/whoami", headers={**app.credentials, "client_secret": "nope", "x-oneup-user-id": "client"}
    )
    assert wrong.status_code == 401
