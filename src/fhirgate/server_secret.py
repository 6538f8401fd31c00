"""The server secret, and the keys derived from it for each purpose.

One secret (``FHIRGATE_SECRET_KEY``, or on SQLite a key file generated once) protects the
signing keys at rest, the client secrets' hashes, the audit log's MACs and the dashboard's
CSRF tokens, each under its own key: HKDF-SHA256 (RFC 5869) with a label naming the purpose.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fhirgate.config import Settings

__all__ = ["derive_key", "server_secret"]


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


def derive_key(secret: bytes, purpose: bytes) -> bytes:
    """A 256-bit key for one ``purpose`` from the server secret (HKDF-SHA256, RFC 5869 §2)."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose).derive(secret)
