"""Server signing keys: creation, encryption at rest, publication and rotation.

Access tokens are signed ES256 (RFC 9068 §2.1 allows any asymmetric algorithm; ES256 signs in
tens of microseconds). Private keys are stored AES-256-GCM encrypted under a key derived with
HKDF-SHA256 from ``FHIRGATE_SECRET_KEY`` (or, embedded on SQLite, a generated key file under the
var directory). Retired keys stay published until every token they signed has expired.
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
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from fhirgate.config import Settings
from fhirgate.oauth.jose import PublicKey, jwk_from_public_key, public_key_from_jwk
from fhirgate.storage.models import ServerKeyRow

__all__ = ["KeyCipher", "Keyring", "SigningKey", "derive_key", "load_cipher", "server_secret"]

ACCESS_TOKEN_ALG = "ES256"  # noqa: S105 (an algorithm name)
_RELOAD_INTERVAL = 1.0


def derive_key(secret: bytes, purpose: bytes) -> bytes:
    """A 256-bit key for one ``purpose`` from the server secret (HKDF-SHA256, RFC 5869 §2)."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose).derive(secret)


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
    private_key: ec.EllipticCurvePrivateKey


@dataclass(frozen=True, slots=True)
class _KeyState:
    signer: SigningKey | None
    public: dict[str, PublicKey]
    jwks: dict[str, Any]


class Keyring:
    """The server's keys as this process knows them, reloaded from storage when they change."""

    def __init__(self, engine: AsyncEngine, cipher: KeyCipher, publish_for: int) -> None:
        self._engine = engine
        self._cipher = cipher
        self._publish_for = publish_for
        self._state = _KeyState(None, {}, {"keys": []})
        self._lock = asyncio.Lock()
        self._loaded_at = 0.0

    @property
    def signer(self) -> SigningKey:
        if self._state.signer is None:
            raise RuntimeError("no active signing key; call Keyring.ensure() at start-up")
        return self._state.signer

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
        """Load the keys, creating the first signing key when there is none."""
        await self.reload()
        if self._state.signer is None:
            await self.add()

    async def add(self, *, retire_others: bool = False) -> str:
        """Create a new signing key (``fhirgate keys rotate`` retires the others)."""
        private = ec.generate_private_key(ec.SECP256R1())
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
                    .where(ServerKeyRow.retired_at.is_(None))
                    .values(retired_at=created)
                )
            await conn.execute(
                insert(ServerKeyRow).values(
                    kid=kid,
                    alg=ACCESS_TOKEN_ALG,
                    public_jwk=jwk_from_public_key(private.public_key(), kid, ACCESS_TOKEN_ALG),
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
        signer: SigningKey | None = None
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
                assert isinstance(key, ec.EllipticCurvePrivateKey)
                signer = SigningKey(row.kid, key)  # the newest active key signs
        return _KeyState(signer, public, {"keys": published})
