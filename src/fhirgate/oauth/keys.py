"""Server signing keys: creation, encryption at rest, publication and rotation.

Access tokens are signed ES256 (RFC 9068 §2.1 allows any asymmetric algorithm; ES256 signs in
tens of microseconds); id_tokens RS256 (OpenID Connect Core §15.1 and SMART App Launch require
it). Each algorithm has its own active key. Private keys are stored AES-256-GCM encrypted under
a key derived with HKDF-SHA256 from ``FHIRGATE_SECRET_KEY`` (or, embedded on SQLite, a generated
key file under the var directory), and each row carries an HMAC-SHA256 under another key derived
from it: a row written by anyone without the secret (an attacker's public key, a changed
``retired_at``) is neither published nor used. Retired keys stay published until every token
they signed has expired.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from fhirgate.config import Settings
from fhirgate.domain.instants import as_datetime, instant_text
from fhirgate.domain.stores import KeyRow, ServerKeyStore
from fhirgate.oauth.jose import (
    CompactSigner,
    PrivateKey,
    PublicKey,
    jwk_from_public_key,
    public_key_from_jwk,
)
from fhirgate.server_secret import derive_key, server_secret

__all__ = [
    "KeyCipher",
    "KeySigner",
    "Keyring",
    "SecretMismatch",
    "SigningKey",
    "load_cipher",
]

ACCESS_TOKEN_ALG = "ES256"  # noqa: S105 (an algorithm name)
ID_TOKEN_ALG = "RS256"  # noqa: S105
SIGNING_ALGS = (ACCESS_TOKEN_ALG, ID_TOKEN_ALG)
_RELOAD_INTERVAL = 1.0
_ROW_FORMAT = "fhirgate server key v1"

log = logging.getLogger("fhirgate.keys")


class SecretMismatch(RuntimeError):
    """Server keys are stored, but none of them is authentic under this server secret."""


class KeyCipher:
    """AES-256-GCM for private keys and HMAC-SHA256 (RFC 2104) for key rows, each under its own
    key derived from the server secret (HKDF-SHA256, RFC 5869)."""

    def __init__(self, secret: bytes) -> None:
        self._aead = AESGCM(derive_key(secret, b"fhirgate server keys"))
        self._mac_key = derive_key(secret, b"fhirgate server key rows")

    def row_mac(self, row: Mapping[Any, Any]) -> str:
        """The MAC of a ``server_keys`` row: every column but itself, the encrypted private key
        by its SHA-256, instants as canonical text."""
        retired = row["retired_at"]
        message = orjson.dumps(
            [
                _ROW_FORMAT,
                row["kid"],
                row["alg"],
                row["public_jwk"],
                hashlib.sha256(row["private_key"]).hexdigest(),
                instant_text(row["created_at"]),
                "" if retired is None else instant_text(retired),
            ],
            option=orjson.OPT_SORT_KEYS,
        )
        return hmac.digest(self._mac_key, message, "sha256").hex()

    def authentic(self, row: Mapping[Any, Any]) -> bool:
        """Whether ``row`` carries the MAC this secret gives it."""
        mac = row["row_mac"]
        return mac is not None and hmac.compare_digest(mac, self.row_mac(row))

    def encrypt(self, plaintext: bytes, associated: bytes) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, plaintext, associated)

    def decrypt(self, blob: bytes, associated: bytes) -> bytes:
        return self._aead.decrypt(blob[:12], blob[12:], associated)


def load_cipher(settings: Settings) -> KeyCipher:
    """The cipher for server keys."""
    return KeyCipher(server_secret(settings))


@dataclass(frozen=True, slots=True)
class SigningKey:
    kid: str
    private_key: PrivateKey


_KEY_TYPES: dict[str, type[ec.EllipticCurvePrivateKey] | type[rsa.RSAPrivateKey]] = {
    ACCESS_TOKEN_ALG: ec.EllipticCurvePrivateKey,
    ID_TOKEN_ALG: rsa.RSAPrivateKey,
}


def _new_private_key(alg: str) -> PrivateKey:
    if alg == ID_TOKEN_ALG:
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


@dataclass(frozen=True, slots=True)
class _KeyState:
    signers: dict[str, SigningKey]  # alg -> the newest active key of that alg
    public: dict[str, PublicKey]
    jwks: dict[str, Any]


class Keyring:
    """The server's keys as this process knows them, reloaded from storage when they change."""

    def __init__(self, store: ServerKeyStore, cipher: KeyCipher, publish_for: int) -> None:
        self._store = store
        self._cipher = cipher
        self._publish_for = publish_for
        self._state = _KeyState({}, {}, {"keys": []})
        self._lock = asyncio.Lock()
        self._loaded_at = 0.0
        self._refused: set[str] = set()  # kids already logged as not authentic

    @property
    def signer(self) -> SigningKey:
        """The access-token key (ES256)."""
        return self.signer_for(ACCESS_TOKEN_ALG)

    def signer_for(self, alg: str) -> SigningKey:
        key = self._state.signers.get(alg)
        if key is None:
            raise RuntimeError(f"no active {alg} signing key; call Keyring.ensure() at start-up")
        return key

    @property
    def jwks(self) -> dict[str, Any]:
        """The published JWK Set (RFC 7517 §5): active and not-yet-expired retired keys."""
        return self._state.jwks

    async def public_key(self, kid: str) -> PublicKey | None:
        """A published verification key; an unknown ``kid`` triggers one rate-limited reload."""
        key = self._state.public.get(kid)
        if key is None and time.monotonic() - self._loaded_at >= _RELOAD_INTERVAL:
            await self.reload()
            key = self._state.public.get(kid)
        return key

    async def open(self) -> None:
        """Seal the rows stored before key rows had MACs, then load the keys."""
        for row in await self._store.unsealed():
            if self._proves_itself(row):
                await self._store.seal(row["kid"], self._cipher.row_mac(row))
        await self.reload()

    async def ensure(self) -> None:
        """Open the keys, creating the first signing key of each algorithm when there is none."""
        await self.open()
        for alg in SIGNING_ALGS:
            if alg not in self._state.signers:
                await self.add(alg)

    async def add(self, alg: str = ACCESS_TOKEN_ALG, *, retire_others: bool = False) -> str:
        """Create a new ``alg`` signing key (``fhirgate keys rotate`` retires the others of
        that algorithm)."""
        private = _new_private_key(alg)
        kid = secrets.token_urlsafe(12)
        der = private.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        created = datetime.now(UTC)
        row: dict[str, Any] = {
            "kid": kid,
            "alg": alg,
            "public_jwk": jwk_from_public_key(private.public_key(), kid, alg),
            "private_key": self._cipher.encrypt(der, kid.encode()),
            "created_at": created,
            "retired_at": None,
        }
        row["row_mac"] = self._cipher.row_mac(row)
        await self._store.add(row, self._retired(created) if retire_others else None)
        await self.reload()
        return kid

    def _retired(self, at: datetime) -> Callable[[KeyRow], KeyRow | None]:
        """What retiring an active key at ``at`` makes of its row: an authentic row retired and
        re-sealed; a forged one left as it is (re-sealing it would make it authentic)."""

        def retire(row: KeyRow) -> KeyRow | None:
            if not self._cipher.authentic(row):
                return None
            retired = dict(row, retired_at=at)
            return dict(retired, row_mac=self._cipher.row_mac(retired))

        return retire

    async def reload(self) -> None:
        """Load the authentic keys; :class:`SecretMismatch` when keys are stored and none is."""
        async with self._lock:
            cutoff = datetime.now(UTC) - timedelta(seconds=self._publish_for)
            rows = await self._store.rows()
            authentic: list[KeyRow] = []
            forged: list[KeyRow] = []
            for row in rows:
                (authentic if self._cipher.authentic(row) else forged).append(row)
            if forged and not authentic:
                raise SecretMismatch(
                    f"none of the {len(rows)} stored server keys is authentic under this "
                    "server secret: FHIRGATE_SECRET_KEY (or the key file under the var "
                    "directory) is not the one they were stored under"
                )
            for row in forged:
                if row["kid"] not in self._refused:
                    self._refused.add(row["kid"])
                    log.warning(
                        "server key %s is not authentic under the server secret (written or "
                        "changed without it): it is neither published nor used",
                        row["kid"],
                    )
            self._state = self._build(authentic, cutoff)
            self._loaded_at = time.monotonic()

    def _proves_itself(self, row: KeyRow) -> bool:
        """A row without a MAC whose private key decrypts under the secret and matches the
        public key it publishes (only the holder of the secret can have written it)."""
        if row["alg"] not in SIGNING_ALGS:
            return False
        try:
            der = self._cipher.decrypt(row["private_key"], row["kid"].encode())
            private = serialization.load_der_private_key(der, password=None)
        except (InvalidTag, ValueError):
            return False
        if not isinstance(private, _KEY_TYPES[row["alg"]]):
            return False
        return jwk_from_public_key(private.public_key(), row["kid"], row["alg"]) == dict(
            row["public_jwk"]
        )

    def _build(self, rows: list[KeyRow], cutoff: datetime) -> _KeyState:
        signers: dict[str, SigningKey] = {}
        public: dict[str, PublicKey] = {}
        published = []
        for row in rows:
            kid, retired, jwk = row["kid"], row["retired_at"], row["public_jwk"]
            if retired is not None and as_datetime(retired) < cutoff:
                continue
            public[kid] = public_key_from_jwk(jwk)
            published.append(dict(jwk, use="sig"))
            if retired is None:
                der = self._cipher.decrypt(row["private_key"], kid.encode())
                key = serialization.load_der_private_key(der, password=None)
                assert isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey)
                signers[row["alg"]] = SigningKey(kid, key)  # the newest active key signs
        return _KeyState(signers, public, {"keys": published})


class KeySigner:
    """Signs compact JWSs with the keyring's active ``alg`` key under the header ``{"alg",
    "typ", "kid"}``, built once per key (the header never changes while the key is active)."""

    def __init__(self, keyring: Keyring, alg: str, typ: str) -> None:
        self._keyring = keyring
        self._alg = alg
        self._typ = typ
        self._cached: tuple[SigningKey, CompactSigner] | None = None

    def sign(self, claims: dict[str, Any]) -> str:
        key = self._keyring.signer_for(self._alg)
        cached = self._cached
        if cached is None or cached[0] is not key:
            header = {"alg": self._alg, "typ": self._typ, "kid": key.kid}
            cached = self._cached = (key, CompactSigner(header, key.private_key))
        return cached[1].sign(claims)
