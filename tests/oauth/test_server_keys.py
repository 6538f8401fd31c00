"""Server key rows are bound to the server secret (issue 15, item 8): each carries an HMAC under
a key derived from it, and a row that fails — forged into ``server_keys`` by someone with the
database but not the secret, or changed in any column — is neither published at the JWKS
endpoint nor trusted for a token. Rows from before the MAC existed are sealed once they prove
themselves (their private key decrypts under the secret and matches their public key). On every
backend.
"""

from __future__ import annotations

import asyncio
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from alembic import command
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from sqlalchemy import insert, select, update
from tests.fhir.support import FHIR, access_token_claims, bearer
from tests.support import Running, register_secret_client

from fhirgate.cli.main import cli
from fhirgate.config import MAX_TOKEN_LIFETIME, Settings
from fhirgate.oauth.jose import CompactSigner, jwk_from_public_key
from fhirgate.oauth.keys import (
    ACCESS_TOKEN_ALG,
    ID_TOKEN_ALG,
    KeyCipher,
    Keyring,
    SecretMismatch,
    load_cipher,
)
from fhirgate.oauth.tokens import TOKEN_TYPE
from fhirgate.storage.db import _alembic_config, create_engine
from fhirgate.storage.models import ServerKeyRow
from fhirgate.storage.server_keys import ServerKeyTable

JWKS = "/.well-known/jwks.json"
SCOPE = "system/Patient.rs"


def _attacker_row(kid: str, row_mac: str | None) -> tuple[ec.EllipticCurvePrivateKey, Any]:
    """An attacker's key pair and the ``server_keys`` row that would publish its public part
    (the private part is noise: the attacker cannot encrypt under the secret)."""
    key = ec.generate_private_key(ec.SECP256R1())
    row = {
        "kid": kid,
        "alg": ACCESS_TOKEN_ALG,
        "public_jwk": jwk_from_public_key(key.public_key(), kid, ACCESS_TOKEN_ALG),
        "private_key": secrets.token_bytes(150),
        "created_at": datetime.now(UTC),
        "retired_at": None,
        "row_mac": row_mac,
    }
    return key, row


async def _published(server: Running) -> set[str]:
    response = await server.http.get(JWKS)
    assert response.status_code == 200
    return {key["kid"] for key in response.json()["keys"]}


def _fresh(settings: Settings, services: Any, cipher: KeyCipher | None = None) -> Keyring:
    """A keyring as another replica (or a restarted server) builds it from storage."""
    return Keyring(
        ServerKeyTable(services.engine),
        cipher or load_cipher(settings),
        publish_for=MAX_TOKEN_LIFETIME + 60,
    )


async def _rows(engine: Any) -> dict[str, Any]:
    async with engine.connect() as conn:
        rows = (await conn.execute(select(ServerKeyRow))).all()
    return {row.kid: row for row in rows}


async def _change(engine: Any, kid: str, **values: object) -> None:
    async with engine.begin() as conn:
        await conn.execute(update(ServerKeyRow).where(ServerKeyRow.kid == kid).values(**values))


@pytest.mark.parametrize("mac", ["absent", "made up", "copied from a genuine row"])
async def test_a_forged_key_row_is_neither_published_nor_trusted(server: Running, mac: str) -> None:
    """The attack of the review: a row with the attacker's public key, and a token it signs
    for a client, within that client's scopes and lifetime (so only the key check refuses)."""
    services = server.services
    row_mac = {
        "absent": None,
        "made up": secrets.token_hex(32),
        "copied from a genuine row": (await _rows(services.engine))[
            services.keyring.signer.kid
        ].row_mac,
    }[mac]
    key, row = _attacker_row("forged-" + secrets.token_hex(4), row_mac)
    async with services.engine.begin() as conn:
        await conn.execute(insert(ServerKeyRow).values(row))
    await services.keyring.open()  # what a restart does (and it must not seal the row)
    assert row["kid"] not in await _published(server)
    assert (await _rows(services.engine))[row["kid"]].row_mac == row_mac
    assert await services.keyring.public_key(row["kid"]) is None

    client_id, _ = await register_secret_client(services, scope=SCOPE)
    claims = await access_token_claims(server, client_id, SCOPE, 300)
    header = {"alg": ACCESS_TOKEN_ALG, "typ": TOKEN_TYPE, "kid": row["kid"]}
    token = CompactSigner(header, key).sign(claims)
    response = await server.http.get(f"{FHIR}/Patient", headers=bearer(token))
    assert response.status_code == 401, response.text
    assert response.json()["resourceType"] == "OperationOutcome"
    whoami = await server.http.get("/whoami", headers=bearer(token))
    assert whoami.status_code == 401
    assert whoami.json()["error"] == "invalid_token"


async def test_the_servers_own_keys_are_published_and_trusted(server: Running) -> None:
    """The control: the same request with a token of the server's own key is served."""
    services = server.services
    signer = services.keyring.signer
    assert {signer.kid, services.keyring.signer_for(ID_TOKEN_ALG).kid} <= await _published(server)
    client_id, _ = await register_secret_client(services, scope=SCOPE)
    claims = await access_token_claims(server, client_id, SCOPE, 300)
    header = {"alg": ACCESS_TOKEN_ALG, "typ": TOKEN_TYPE, "kid": signer.kid}
    token = CompactSigner(header, signer.private_key).sign(claims)
    response = await server.http.get(f"{FHIR}/Patient", headers=bearer(token))
    assert response.status_code == 200, response.text


def _other_public_jwk(row: Any) -> dict[str, Any]:
    return jwk_from_public_key(
        ec.generate_private_key(ec.SECP256R1()).public_key(), row.kid, row.alg
    )


CHANGES = {
    "public_jwk": _other_public_jwk,
    "alg": lambda row: ID_TOKEN_ALG,
    "private_key": lambda row: secrets.token_bytes(len(row.private_key)),
    "created_at": lambda row: row.created_at + timedelta(microseconds=1),
    "retired_at": lambda row: datetime.now(UTC),
}


@pytest.mark.parametrize("column", sorted(CHANGES))
async def test_a_key_row_changed_in_any_column_is_refused(
    server: Running, backend_settings: Settings, column: str
) -> None:
    services = server.services
    kid = services.keyring.signer.kid
    row = (await _rows(services.engine))[kid]
    await _change(services.engine, kid, **{column: CHANGES[column](row)})
    replica = _fresh(backend_settings, services)
    await replica.open()
    assert kid not in {key["kid"] for key in replica.jwks["keys"]}
    assert await replica.public_key(kid) is None
    with pytest.raises(RuntimeError, match="no active ES256 signing key"):
        replica.signer_for(ACCESS_TOKEN_ALG)  # never signs with it either
    # the id_token key is untouched and still serves; a restart makes a new access-token key
    assert replica.signer_for(ID_TOKEN_ALG).kid == services.keyring.signer_for(ID_TOKEN_ALG).kid
    await replica.ensure()
    assert replica.signer_for(ACCESS_TOKEN_ALG).kid != kid


async def test_rows_from_before_the_mac_are_sealed_once_they_prove_themselves(
    server: Running, backend_settings: Settings
) -> None:
    services = server.services
    before = await _rows(services.engine)
    genuine, swapped = services.keyring.signer.kid, services.keyring.signer_for(ID_TOKEN_ALG).kid
    async with services.engine.begin() as conn:
        await conn.execute(update(ServerKeyRow).values(row_mac=None))
    # one legacy row had its public key replaced (a private key of the right type, not its own)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    await _change(
        services.engine, swapped, public_jwk=jwk_from_public_key(other, swapped, ID_TOKEN_ALG)
    )
    replica = _fresh(backend_settings, services)
    await replica.open()
    after = await _rows(services.engine)
    assert after[genuine].row_mac == before[genuine].row_mac  # sealed exactly as it was
    assert after[swapped].row_mac is None  # not sealed: it does not prove itself
    assert {key["kid"] for key in replica.jwks["keys"]} == {genuine}
    assert replica.signer.kid == genuine


async def test_the_upgrade_from_revision_0010_keeps_the_keys(
    server: Running, backend_settings: Settings
) -> None:
    """Down to 0010 (no MAC column) and up again: the server seals its keys and signs with
    the same ones."""
    services = server.services
    kids = await _published(server)
    signer = services.keyring.signer.kid
    config = _alembic_config(backend_settings.database_url)
    await asyncio.to_thread(command.downgrade, config, "0010")
    engine = create_engine(backend_settings.database_url)
    try:
        async with engine.connect() as conn:
            columns = (await conn.exec_driver_sql("SELECT * FROM server_keys")).keys()
        assert "row_mac" not in columns
        await asyncio.to_thread(command.upgrade, config, "head")
        assert all(row.row_mac is None for row in (await _rows(engine)).values())
        replica = Keyring(
            ServerKeyTable(engine), load_cipher(backend_settings), MAX_TOKEN_LIFETIME + 60
        )
        await replica.ensure()
        assert {key["kid"] for key in replica.jwks["keys"]} == kids
        assert replica.signer.kid == signer
        assert all(row.row_mac is not None for row in (await _rows(engine)).values())
    finally:
        await engine.dispose()


async def test_keys_under_another_secret_stop_the_server(
    server: Running, backend_settings: Settings
) -> None:
    """Sealed or not, keys that none authenticates mean the wrong secret: refuse to start
    (rather than publish nothing and make new keys beside them)."""
    services = server.services
    wrong = _fresh(backend_settings, services, KeyCipher(b"not the secret"))
    with pytest.raises(SecretMismatch, match="FHIRGATE_SECRET_KEY"):
        await wrong.ensure()
    async with services.engine.begin() as conn:
        await conn.execute(update(ServerKeyRow).values(row_mac=None))
    with pytest.raises(SecretMismatch):
        await wrong.ensure()
    assert all(row.row_mac is None for row in (await _rows(services.engine)).values())
    assert len(await _rows(services.engine)) == 2  # and it added no key of its own


async def test_rotation_retires_only_authentic_keys(
    server: Running, backend_settings: Settings
) -> None:
    """Rotating re-seals the keys it retires; a forged active row is left unauthenticated
    (retiring it with a fresh MAC would launder it into the published set)."""
    services = server.services
    old = services.keyring.signer.kid
    _, forged = _attacker_row("forged-" + secrets.token_hex(4), None)
    async with services.engine.begin() as conn:
        await conn.execute(insert(ServerKeyRow).values(forged))
    new = await services.keyring.add(ACCESS_TOKEN_ALG, retire_others=True)
    rows = await _rows(services.engine)
    assert rows[old].retired_at is not None
    assert rows[forged["kid"]].retired_at is None
    assert rows[forged["kid"]].row_mac is None
    replica = _fresh(backend_settings, services)
    await replica.open()
    assert {key["kid"] for key in replica.jwks["keys"]} == {
        old,
        new,
        services.keyring.signer_for(ID_TOKEN_ALG).kid,
    }
    assert replica.signer.kid == new


def test_keys_rotate_under_another_secret_is_a_clear_error(sqlite_settings: Settings) -> None:
    env = {
        "FHIRGATE_DATABASE_URL": sqlite_settings.database_url,
        "FHIRGATE_VAR_DIR": str(sqlite_settings.var_dir),
        "FHIRGATE_SECRET_KEY": "the first secret",
    }
    runner = CliRunner()
    assert runner.invoke(cli, ["keys", "rotate"], env=env).exit_code == 0
    result = runner.invoke(cli, ["keys", "rotate"], env=dict(env, FHIRGATE_SECRET_KEY="another"))
    assert result.exit_code == 1
    assert "not the one they were stored under" in result.output
    assert "Traceback" not in result.output
