"""Server signing keys: creation, encryption at rest, publication and rotation.

Access tokens are signed ES256 (RFC 9068 §2.1 allows any asymmetric algorithm; ES256 signs in
tens of microseconds); id_tokens RS256 (OpenID Connect Core §15.1 and SMART App Launch require
it). Each algorithm has its own active key. Private keys are stored AES-256-GCM encrypted under
a key derived with HKDF-SHA256 from ``FHIRGATE_SECRET_KEY`` (or, embedded on SQLite, a generated
key file under the var directory). Retired keys stay published until every token they signed
has expired.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from fhirgate.config import Settings
from fhirgate.oauth.jose import (
    CompactSigner,
    PrivateKey,
    PublicKey,
    jwk_from_public_key,
    public_key_from_jwk,
)
from fhirgate.storage.audit_chain import AuditKeys
from fhirgate.storage.models import ServerKeyRow

__all__ = [
    "KeyCipher",
    "KeySigner",
    "Keyring",
    "SigningKey",
    "audit_keys",
    "derive_key",
    "load_cipher",
    "server_secret",
]

ACCESS_TOKEN_ALG = "ES256"  # noqa: S105 (an algorithm name)
ID_TOKEN_ALG = "RS256"  # noqa: S105
SIGNING_ALGS = (ACCESS_TOKEN_ALG, ID_TOKEN_ALG)
_RELOAD_INTERVAL = 1.0


def derive_key(secret: bytes, purpose: bytes) -> bytes:
    """A 256-bit key for one ``purpose`` from the server secret (HKDF-SHA256, RFC 5869 §2)."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose).derive(secret)


def audit_keys(secret: bytes) -> AuditKeys:
    """The audit log's row, chain and checkpoint keys under the server secret."""
    return AuditKeys.derived(lambda label: derive_key(secret, label))


class KeyCipher:
    """AES-256-GCM under a key derived from the server secret (HKDF-SHA256, RFC 5869)."""

    def __init__(self, secret: bytes) -> None:
        self._aead = AESGCM(derive_key(secret, b"fhirgate server keys"))

    def encrypt(self, plaintext: bytes, associated: bytes) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, plaintext, associated)

    def decrypt(self, blob: bytes, associated: bytes) -> bytes:
        return self._aead.decrypt(blob[:12], blob[12:], associated)


def server_secret(settings: Settings) -> bytes:
    """``FHIRGATE_SECRET_KEY``; embedded on SQLite without one, a key file generated once."""
    if settings.secret_key:
        return settings.secret_key.encode("utf-8")
    if not settings.is_sqlite:
        raise RuntimeError(
            "FHIRGATE_SECRET_KEY must be set when the database is shared (PostgreSQL): every "
            "replica needs the same key to read the server's signing keys and check secrets"
        )
    path = Path(settings.var_dir) / "secret.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(48))
    return path.read_text().strip().encode("utf-8")


def load_cipher(settings: Settings) -> KeyCipher:
    """The cipher for server keys."""
    return KeyCipher(server_secret(settings))


@dataclass(frozen=True, slots=True)
class SigningKey:
    kid: str
    private_key: PrivateKey


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

    def __init__(self, engine: AsyncEngine, cipher: KeyCipher, publish_for: int) -> None:
        self._engine = engine
        self._cipher = cipher
        self._publish_for = publish_for
        self._state = _KeyState({}, {}, {"keys": []})
        self._lock = asyncio.Lock()
        self._loaded_at = 0.0

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

    async def ensure(self) -> None:
        """Load the keys, creating the first signing key of each algorithm when there is none."""
        await self.reload()
        for alg in SIGNING_ALGS:
            if alg not in self._state.signers:
                await self.add(alg)

    async def add(self, alg: str = ACCESS_TOKEN_ALG, *, retire_others: bool = False) -> str:
        """Create a new ``alg`` signing key (``fhirgate keys rotate`` retires the others of
        that algorithm)."""
        private = _new_private_key(alg)
        kid = secrets.token_urlsafe(12)
        pem = private.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        created = datetime.now(UTC)
        async with self._engine.begin() as conn:
            if retire_others:
                await conn.execute(
                    update(ServerKeyRow)
                    .where(ServerKeyRow.retired_at.is_(None), ServerKeyRow.alg == alg)
                    .values(retired_at=created)
                )
            await conn.execute(
                insert(ServerKeyRow).values(
                    kid=kid,
                    alg=alg,
                    public_jwk=jwk_from_public_key(private.public_key(), kid, alg),
                    private_key=self._cipher.encrypt(pem, kid.encode()),
                    created_at=created,
                )
            )
        await self.reload()
        return kid

    async def reload(self) -> None:
        async with self._lock:
            cutoff = datetime.now(UTC) - timedelta(seconds=self._publish_for)
            async with self._engine.connect() as conn:
                rows = (
                    await conn.execute(select(ServerKeyRow).order_by(ServerKeyRow.created_at))
                ).all()
            self._state = self._build(rows, cutoff)
            self._loaded_at = time.monotonic()

    def _build(self, rows: Any, cutoff: datetime) -> _KeyState:
        signers: dict[str, SigningKey] = {}
        public: dict[str, PublicKey] = {}
        published = []
        for row in rows:
            retired = row.retired_at
            if retired is not None and retired.replace(tzinfo=retired.tzinfo or UTC) < cutoff:
                continue
            public[row.kid] = public_key_from_jwk(row.public_jwk)
            published.append(dict(row.public_jwk, use="sig"))
            if retired is None:
                der = self._cipher.decrypt(row.private_key, row.kid.encode())
                key = serialization.load_der_private_key(der, password=None)
                assert isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey)
                signers[row.alg] = SigningKey(row.kid, key)  # the newest active key signs
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
