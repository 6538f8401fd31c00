"""``fhirgate keys …``: client key pairs (generate) and the server's signing keys (rotate)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from fhirgate.cli.context import Storage, emit, run_storage
from fhirgate.config import MAX_TOKEN_LIFETIME
from fhirgate.oauth.jose import PrivateKey, jwk_from_public_key
from fhirgate.oauth.keys import ACCESS_TOKEN_ALG, ID_TOKEN_ALG, SIGNING_ALGS, Keyring, load_cipher
from fhirgate.oauth.registration import jwk_thumbprint
from fhirgate.storage.server_keys import ServerKeyTable

__all__ = ["keys"]


@click.group()
def keys() -> None:
    """Client key pairs and server signing keys."""


def _new_key(alg: str) -> PrivateKey:
    if alg.startswith(("RS", "PS")):
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP384R1() if alg == "ES384" else ec.SECP256R1())


def _write_private(path: Path, key: PrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)


@keys.command("generate")
@click.option(
    "--alg",
    type=click.Choice(["RS384", "ES384", "RS256", "ES256", "PS384"]),
    default="RS384",
    show_default=True,
    help="Signing algorithm of the key pair.",
)
@click.option("--kid", help="Key id (default: the key's RFC 7638 thumbprint).")
@click.option(
    "--private-key-out",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Where to write the private key (PEM, PKCS#8, mode 0600). Keep it secret.",
)
@click.option(
    "--jwks-out",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Where to write the public JWK Set to register with `clients create`.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def generate(
    alg: str, kid: str | None, private_key_out: Path, jwks_out: Path, as_json: bool
) -> None:
    """Generate a client key pair: a private key file and a public JWK Set."""
    for path in (private_key_out, jwks_out):
        if path.exists():
            raise click.ClickException(f"{path} exists; refusing to overwrite it")
    key = _new_key(alg)
    jwk = jwk_from_public_key(key.public_key(), kid="", alg=alg)
    jwk["kid"] = kid or jwk_thumbprint(jwk)
    _write_private(private_key_out, key)
    jwks_out.write_text(json.dumps({"keys": [jwk]}, indent=2) + "\n")
    info = {
        "kid": jwk["kid"],
        "alg": alg,
        "private_key": str(private_key_out),
        "jwks": str(jwks_out),
    }
    emit(
        info,
        as_json,
        f"Wrote private key {private_key_out} and JWK Set {jwks_out} (kid {jwk['kid']}, {alg}).",
    )


@keys.command("rotate")
@click.option(
    "--alg",
    type=click.Choice(SIGNING_ALGS),
    default=ACCESS_TOKEN_ALG,
    show_default=True,
    help=f"{ACCESS_TOKEN_ALG} signs access tokens; {ID_TOKEN_ALG} signs id_tokens.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def rotate(alg: str, as_json: bool) -> None:
    """Add a new server signing key; older keys stay published until their tokens expire."""

    async def job(storage: Storage) -> str:
        settings = storage.settings
        keyring = Keyring(
            ServerKeyTable(storage.engine), load_cipher(settings), MAX_TOKEN_LIFETIME + 60
        )
        await keyring.open()
        return await keyring.add(alg, retire_others=True)

    kid = run_storage(job)
    emit(
        {"kid": kid, "alg": alg},
        as_json,
        f"New {alg} signing key {kid}; running servers use it within 10 s.",
    )
