"""1upHealth's sharing: ``PUT /{version}/{Type}/{id}/_permission/{oneup_user_id}``."""

from __future__ import annotations

from typing import Any

import pytest

from tests.delegation.support import register_application
from tests.support import Running


def bearer(tokens: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens['access_token']}"}


@pytest.fixture
async def people(running: Running) -> dict[str, Any]:
    app = await register_application(running.services, running.http)
    alice, bob = await app.user_tokens("alice"), await app.user_tokens("bob")
    created = await running.http.post(
        "/r4/Patient", json={"resourceType": "Patient"}, headers=bearer(alice)
    )
    assert created.status_code == 201, created.text
    return {"app": app, "alice": alice, "bob": bob, "patient": created.json()["id"]}


async def test_a_shared_resource_can_be_read_not_written(
    running: Running, people: dict[str, Any]
) -> None:
    url = f"/r4/Patient/{people['patient']}"
    bob = bearer(people["bob"])
    assert (await running.http.get(url, headers=bob)).status_code == 404  # not yet shared
    shared = await running.http.put(
        f"{url}/_permission/{people['bob']['oneup_user_id']}", headers=bearer(people["alice"])
    )
    assert shared.status_code == 200 and shared.json() == {"success": True}
    assert (await running.http.get(url, headers=bob)).status_code == 200
    body = {"resourceType": "Patient", "id": people["patient"], "active": False}
    assert (await running.http.put(url, json=body, headers=bob)).status_code == 403


async def test_the_owners_permission_cannot_be_altered(
    running: Running, people: dict[str, Any]
) -> None:
    answer = await running.http.put(
        f"/r4/Patient/{people['patient']}/_permission/{people['alice']['oneup_user_id']}",
        headers=bearer(people["alice"]),
    )
    assert answer.status_code == 400
    assert answer.json() == {
        "error": "the resource owner permissions cannot be altered",
        "success": False,
    }


async def test_only_the_owner_shares(running: Running, people: dict[str, Any]) -> None:
    answer = await running.http.put(
        f"/r4/Patient/{people['patient']}/_permission/{people['bob']['oneup_user_id']}",
        headers=bearer(people["bob"]),
    )
    assert answer.status_code == 404  # bob cannot see it: the same as a missing resource


async def test_sharing_with_another_applications_user_is_refused(
    running: Running, people: dict[str, Any]
) -> None:
    other = await register_application(running.services, running.http)
    stranger = await other.user_tokens("stranger")
    answer = await running.http.put(
        f"/r4/Patient/{people['patient']}/_permission/{stranger['oneup_user_id']}",
        headers=bearer(people["alice"]),
    )
    assert answer.status_code == 404
    read = await running.http.get(f"/r4/Patient/{people['patient']}", headers=bearer(stranger))
    assert read.status_code == 404
