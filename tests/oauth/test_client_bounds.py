"""The resource guard bounds every token by what its client may get *now* (issue 15, item 8):
its scopes within the client's current allowed scopes, its lifetime within the client's current
maximum. A token signed with a key forged into storage, or one the client got before it was
narrowed, reaches nothing beyond that: 401 ``invalid_token`` at the FHIR API (an
OperationOutcome) and at ``/whoami``, ``{"active": false}`` at introspection. On every backend.
"""

from __future__ import annotations

import pytest
from sqlalchemy import update
from tests.delegation.support import register_application
from tests.fhir.support import (
    FHIR,
    access_token_claims,
    bearer,
    legacy_headers,
    token_for_secret_client,
)
from tests.support import Running, register_secret_client

from fhirgate.oauth.keys import ACCESS_TOKEN_ALG, KeySigner
from fhirgate.oauth.tokens import TOKEN_TYPE
from fhirgate.storage.models import ClientRow

INTROSPECT = "/oauth2/introspect"


async def _client(server: Running, scope: str, lifetime: int | None = None) -> tuple[str, str]:
    return await register_secret_client(server.services, scope=scope, token_lifetime=lifetime)


async def _change_client(server: Running, client_id: str, **values: object) -> None:
    """Change the client's row directly (what an attacker with the database, or an operator's
    edit, does), and let this process see it at once."""
    async with server.services.engine.begin() as conn:
        await conn.execute(
            update(ClientRow).where(ClientRow.client_id == client_id).values(**values)
        )
    server.services.directory.forget(client_id)


async def _forged(server: Running, client_id: str, scope: str, lifetime: int) -> str:
    """A token signed with the server's own access-token key — what a key row forged into
    ``server_keys`` lets an attacker sign — for ``client_id``, with any scope and lifetime."""
    claims = await access_token_claims(server, client_id, scope, lifetime)
    return KeySigner(server.services.keyring, ACCESS_TOKEN_ALG, TOKEN_TYPE).sign(claims)


def _assert_refused(response_status: int, body: dict[str, object]) -> None:
    assert response_status == 401, body
    assert body["resourceType"] == "OperationOutcome"


async def _fhir_read(server: Running, token: str) -> tuple[int, dict[str, object]]:
    response = await server.http.get(f"{FHIR}/Patient", headers=bearer(token))
    return response.status_code, response.json()


async def _introspect(server: Running, token: str, client_id: str, secret: str) -> object:
    response = await server.http.post(INTROSPECT, data={"token": token}, auth=(client_id, secret))
    assert response.status_code == 200, response.text
    return response.json()["active"]


async def test_a_server_signed_token_within_the_client_is_accepted(server: Running) -> None:
    """The control: a token exactly as the token endpoint would issue it passes."""
    client_id, secret = await _client(server, "system/Patient.rs")
    token = await _forged(server, client_id, "system/Patient.rs", 3600)
    status, body = await _fhir_read(server, token)
    assert status == 200, body
    assert await _introspect(server, token, client_id, secret) is True


@pytest.mark.parametrize("scope", ["system/*.cruds", "system/Patient.rs system/Patient.c"])
async def test_a_token_with_scopes_beyond_the_client_is_refused(
    server: Running, scope: str
) -> None:
    client_id, secret = await _client(server, "system/Patient.rs")
    token = await _forged(server, client_id, scope, 300)
    status, body = await _fhir_read(server, token)
    _assert_refused(status, body)
    whoami = await server.http.get("/whoami", headers=bearer(token))
    assert whoami.status_code == 401
    assert whoami.json()["error"] == "invalid_token"
    assert await _introspect(server, token, client_id, secret) is False


async def test_a_token_outliving_the_clients_maximum_is_refused(server: Running) -> None:
    client_id, secret = await _client(server, "system/*.rs", lifetime=600)
    token = await _forged(server, client_id, "system/*.rs", 86_400)
    status, body = await _fhir_read(server, token)
    _assert_refused(status, body)
    assert await _introspect(server, token, client_id, secret) is False


async def test_a_token_issued_before_the_client_was_narrowed_is_refused(server: Running) -> None:
    scope = "system/Patient.rs system/Observation.rs"
    client_id, secret = await _client(server, scope)
    token = await token_for_secret_client(server.http, client_id, secret, scope)
    status, _ = await _fhir_read(server, token)
    assert status == 200
    await _change_client(server, client_id, scope="system/Observation.rs")
    status, body = await _fhir_read(server, token)
    _assert_refused(status, body)
    assert await _introspect(server, token, client_id, secret) is False


async def test_a_token_longer_than_the_clients_new_lifetime_is_refused(server: Running) -> None:
    client_id, secret = await _client(server, "system/*.rs", lifetime=3600)
    token = await token_for_secret_client(server.http, client_id, secret, "system/*.rs")
    assert (await _fhir_read(server, token))[0] == 200
    await _change_client(server, client_id, token_lifetime=600)
    status, body = await _fhir_read(server, token)
    _assert_refused(status, body)


async def test_a_users_token_with_identity_scopes_is_accepted_until_narrowed(
    server: Running,
) -> None:
    """A user grant's token carries the identity scopes beside the client's own: they are
    allowed; the client's data scopes bound it like any other token."""
    application = await register_application(server.services, server.http)
    tokens = await application.user_tokens("alice", scope="user/*.rs openid fhirUser")
    token = tokens["access_token"]
    status, body = await _fhir_read(server, token)
    assert status == 200, body
    await _change_client(server, application.client_id, scope="system/*.rs")
    status, body = await _fhir_read(server, token)
    _assert_refused(status, body)


async def test_a_legacy_token_is_bounded_by_its_client_now(server: Running) -> None:
    headers = await legacy_headers(server, scope="system/Patient.rs system/Observation.rs")
    response = await server.http.get(f"{FHIR}/Patient", headers=headers)
    assert response.status_code == 200, response.text
    token = headers["Authorization"].removeprefix("Bearer ")
    found = await server.services.opaque.find(token)
    assert found is not None
    await _change_client(server, found.client_id, scope="system/Observation.rs")
    response = await server.http.get(f"{FHIR}/Observation", headers=headers)
    _assert_refused(response.status_code, response.json())
    await _change_client(
        server, found.client_id, scope="system/Patient.rs system/Observation.rs", token_lifetime=60
    )
    response = await server.http.get(f"{FHIR}/Observation", headers=headers)
    _assert_refused(response.status_code, response.json())
