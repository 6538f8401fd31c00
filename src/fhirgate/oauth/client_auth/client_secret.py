"""Client authentication by shared secret: ``client_secret_basic`` and ``client_secret_post``
(RFC 6749 §2.3.1), and Redox legacy API keys (``apiKey`` + ``secret``).

Secrets are server-generated, 256 random bits, and stored only as HMAC-SHA256 under a key derived
from the server secret (docs/security.md#client-secrets-rfc-6749-231: a memory-hard hash would cap
the token endpoint at a few grants per second, and a 256-bit random secret cannot be guessed offline
anyway). Every attempt costs the same: the presented secret is hashed once and compared in constant
time (``hmac.compare_digest``) against two stored hashes — the current one and the previous one in
its grace period, or a fixed dummy — whether the client exists, is revoked, uses another method or
not. Every failure is the same ``invalid_client``; only the server log says why.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from collections.abc import Collection
from dataclasses import dataclass
from urllib.parse import unquote_plus

from fhirgate.domain.clients import Client
from fhirgate.oauth.clients import ClientDirectory
from fhirgate.oauth.errors import InvalidClient, InvalidRequest
from fhirgate.server_secret import derive_key

__all__ = ["SecretAuthenticator", "SecretCredentials", "SecretHasher", "is_basic", "parse_basic"]

_MAX_CREDENTIAL_CHARS = 512


@dataclass(frozen=True, slots=True)
class SecretCredentials:
    """A client id and secret as presented, and how (an ``AuthMethod`` value)."""

    client_id: str
    secret: str
    method: str


class SecretHasher:
    """Generates client secrets and hashes them with HMAC-SHA256 under the server key."""

    def __init__(self, server_secret: bytes) -> None:
        key = derive_key(server_secret, b"fhirgate client secrets")
        self._keyed = hmac.new(key, digestmod=hashlib.sha256)  # copied per use: key set up once
        self._fingerprint_key = derive_key(server_secret, b"fhirgate audit fingerprints")
        self._dummy = self.hash(secrets.token_urlsafe(32))

    @staticmethod
    def generate() -> str:
        """A new secret: 256 random bits, base64url (RFC 6749 §10.10: guessing is infeasible)."""
        return secrets.token_urlsafe(32)

    def hash(self, secret: str) -> str:
        mac = self._keyed.copy()
        mac.update(secret.encode("utf-8"))
        return mac.hexdigest()

    def fingerprint(self, value: str) -> str:
        """A short keyed digest of a value that must not be recorded as such (an unknown
        client id may be a mistyped secret); without the server key it confirms no guess."""
        mac = hmac.new(self._fingerprint_key, value.encode("utf-8"), hashlib.sha256)
        return mac.hexdigest()[:16]

    def matches(self, secret: str, current: str | None, previous: str | None) -> bool:
        """``secret`` against two stored hashes, always both, each in constant time."""
        presented = self.hash(secret)
        first = hmac.compare_digest(presented, current or self._dummy)
        second = hmac.compare_digest(presented, previous or self._dummy)
        return (first and current is not None) or (second and previous is not None)


def is_basic(authorization: str | None) -> bool:
    """Whether an ``Authorization`` header uses the Basic scheme (RFC 7617 §2; the scheme name
    is case-insensitive). Other schemes are not client authentication and are ignored."""
    if authorization is None:
        return False
    scheme = authorization.split(maxsplit=1)
    return bool(scheme) and scheme[0].lower() == "basic"


def parse_basic(authorization: str) -> tuple[str, str]:
    """``Authorization: Basic`` credentials (RFC 7617 §2) whose id and secret are each
    ``application/x-www-form-urlencoded`` before base64 (RFC 6749 §2.3.1)."""
    _, _, encoded = authorization.strip().partition(" ")
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        client_id, colon, secret = decoded.partition(":")
        if not colon:
            raise ValueError("no colon")
        client_id = unquote_plus(client_id, errors="strict")
        secret = unquote_plus(secret, errors="strict")
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise InvalidRequest(
            "the Basic credentials are malformed", check="basic_malformed", detail=str(exc)
        ) from exc
    return client_id, secret


class SecretAuthenticator:
    """Checks a presented secret against the client's registered one (or its grace-period
    predecessor) and the client's registered method."""

    def __init__(self, clients: ClientDirectory, hasher: SecretHasher) -> None:
        self._clients = clients
        self.hasher = hasher

    async def authenticate(
        self, presented: SecretCredentials, also: Collection[str] = ()
    ) -> Client:
        """The client, if ``presented`` is its secret, sent by its registered method or by a
        client registered for one of the methods ``also``."""
        too_long = max(len(presented.client_id), len(presented.secret)) > _MAX_CREDENTIAL_CHARS
        registered = None if too_long else await self._clients.get(presented.client_id)
        client = registered.client if registered is not None else None
        current = client.secret_hash if client is not None else None
        previous = None
        if client is not None and (client.previous_secret_expires_at or 0) > time.time():
            previous = client.previous_secret_hash
        matched = self.hasher.matches(presented.secret, current, previous)
        if client is None:
            raise InvalidClient(check="unknown_client", detail="no such client")
        if not client.active:
            raise InvalidClient(check="client_inactive", detail="client revoked")
        if client.auth_method != presented.method and client.auth_method not in also:
            raise InvalidClient(
                check="unregistered_method",
                detail=f"registered {client.auth_method}, used {presented.method}",
            )
        if not matched:
            raise InvalidClient(check="wrong_secret", detail="secret does not match")
        return client
