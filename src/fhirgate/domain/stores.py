"""The storage contracts the OAuth core and the FHIR API depend on.

Each is a :class:`typing.Protocol`: :mod:`fhirgate.storage` implements them (SQLite, PostgreSQL,
Redis), and the core names only these, so it runs against any store that keeps the promises
written here. A store raises its driver's errors when it cannot answer; the web layer turns
those into 503 (fail closed).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from fhirgate.domain.app_users import AppUser, UserPage
from fhirgate.domain.clients import Client
from fhirgate.domain.tokens import IssuedPair, OpaqueToken, Redemption, TokenStanding, UserGrant

__all__ = [
    "AppUserStore",
    "AuditSink",
    "ClientStore",
    "DenyList",
    "GrantStore",
    "KeyRow",
    "OpaqueTokenStore",
    "ServerKeyStore",
    "SharedCounters",
    "SingleUseStore",
    "TTLSet",
    "digest",
]


def digest(*parts: str) -> str:
    """A fixed-length key for a tuple of strings: BLAKE2b-128 of them NUL-separated, in hex.

    128 bits keep keys short (smaller indexes and Redis keys) and collisions out of reach.
    """
    return hashlib.blake2b("\x00".join(parts).encode("utf-8"), digest_size=16).hexdigest()


class SingleUseStore(Protocol):
    """Keys that may be used once until they expire: of concurrent adds of one key, exactly one
    wins on every backend (the ``jti`` rule of RFC 7523 §3, RFC 7519 §4.1.7)."""

    async def add(self, key: str, expires_at: int) -> bool:
        """Add ``key`` until ``expires_at`` (epoch seconds); ``False`` if already present."""
        ...


class DenyList(SingleUseStore, Protocol):
    """Keys refused until they expire: revoked access tokens (RFC 7009 §2.2)."""

    async def contains(self, key: str) -> bool: ...


class TTLSet(DenyList, Protocol):
    """A set of expiring keys as storage keeps one: what both contracts need, and upkeep."""

    async def purge(self) -> int:
        """Drop expired keys; returns how many went (Redis expires them itself: 0)."""
        ...

    async def aclose(self) -> None:
        """Release what the set holds itself (shared engines and clients are closed by owners)."""
        ...


class ClientStore(Protocol):
    """The registered clients."""

    async def get(self, client_id: str) -> Client | None: ...


class OpaqueTokenStore(Protocol):
    """Opaque access and refresh tokens, stored by their SHA-256 (the legacy key dialect and the
    refresh tokens of user grants)."""

    async def issue_pair(
        self, client_id: str, scope: str, access_ttl: int, refresh_ttl: int
    ) -> IssuedPair:
        """An access token and a refresh token of a new family."""
        ...

    async def find(self, token: str) -> OpaqueToken | None: ...

    async def rotate(
        self, client_id: str, refresh_token: str, access_ttl: int, refresh_ttl: int
    ) -> IssuedPair | None:
        """Spend ``refresh_token`` of ``client_id`` and issue the next pair of its family
        (RFC 9700 §4.14.2); ``None`` when it cannot be spent."""
        ...

    async def revoke_family(self, family_id: str) -> None: ...

    async def revoke(self, token_hash: str) -> None: ...


class GrantStore(Protocol):
    """Authorization codes and the grants they open (RFC 6749 §4.1), with the refresh tokens
    of each grant's family and the deny-list of its access tokens."""

    async def issue_code(self, client_id: str, oneup_user_id: int, scope: str, ttl: int) -> str:
        """A new single-use code for ``client_id`` acting as ``oneup_user_id``."""
        ...

    async def redeem_code(self, client_id: str, code: str) -> Redemption | None:
        """Spend ``code`` and open its grant; ``None`` when it cannot be spent (a code spent
        twice also revokes the grant it produced, RFC 6749 §4.1.2)."""
        ...

    async def refresh(self, client_id: str, refresh_token: str) -> Redemption | None:
        """Spend a refresh token and issue the next of its family; ``None`` when it cannot be
        spent (reuse revokes the family)."""
        ...

    async def live(self, grant_id: str) -> UserGrant | None:
        """The grant, if it is neither revoked nor expired and its user is active."""
        ...

    async def token_standing(self, grant_id: str, jti: str) -> TokenStanding: ...

    async def deny_token(self, jti: str, expires_at: int) -> None: ...

    async def revoke_user(self, client_id: str, oneup_user_id: int) -> None:
        """End everything ``client_id`` holds for the user: unused codes, grants, tokens."""
        ...


class AppUserStore(Protocol):
    """The users of each application (1upHealth-style delegated access)."""

    async def create(self, client_id: str, app_user_id: str) -> AppUser:
        """A new active user; :class:`~fhirgate.domain.errors.Conflict` if it exists."""
        ...

    async def find(
        self, client_id: str, *, app_user_id: str | None = None, oneup_user_id: int | None = None
    ) -> AppUser | None: ...

    async def get(self, client_id: str, **ids: Any) -> AppUser:
        """Like :meth:`find`; :class:`~fhirgate.domain.errors.NotFound` when there is none."""
        ...

    async def list(
        self,
        client_id: str,
        *,
        app_user_id: str | None = None,
        oneup_user_id: int | None = None,
        offset: int = 0,
        limit: int = 100,
    ) -> UserPage: ...

    async def rename(self, client_id: str, oneup_user_id: int, app_user_id: str) -> AppUser: ...

    async def activate(self, client_id: str, oneup_user_id: int) -> AppUser: ...

    async def deactivate(self, client_id: str, oneup_user_id: int) -> AppUser:
        """Deactivate the user and end its codes, grants and tokens, in one transaction."""
        ...


class AuditSink(Protocol):
    """Where the core reports what it refused and the tokens it issued (the audit log)."""

    def enqueue(
        self,
        event: str,
        *,
        client_id: str | None = None,
        source: str | None = None,
        detail: str = "",
    ) -> None:
        """Queue one event to be written with the next batch."""
        ...

    async def issued(self, event: str, *, client_id: str, source: str, detail: str) -> None:
        """Store the event of a token issued before the token leaves (if it cannot be stored,
        this raises and the token is never sent)."""
        ...


#: A row of the server's signing keys: ``kid``, ``alg``, ``public_jwk``, ``private_key`` (the
#: encrypted PKCS #8 DER), ``created_at``, ``retired_at`` and ``row_mac``.
KeyRow = Mapping[str, Any]


class ServerKeyStore(Protocol):
    """The server's signing keys at rest (RFC 7517 keys with their encrypted private halves)."""

    async def rows(self) -> list[KeyRow]:
        """Every stored key, oldest first."""
        ...

    async def unsealed(self) -> list[KeyRow]:
        """The keys stored without a row MAC."""
        ...

    async def seal(self, kid: str, row_mac: str) -> None:
        """Give key ``kid`` its MAC, if it still has none."""
        ...

    async def add(self, row: KeyRow, retire: Callable[[KeyRow], KeyRow | None] | None) -> None:
        """Store a new key. With ``retire``, first, in the same transaction, replace each
        active key of the same ``alg`` by what ``retire`` makes of it (``None``: leave it)."""
        ...


class SharedCounters(Protocol):
    """Named counters that every replica shares, each living ``ttl`` seconds from its first
    increment (the failure throttle's and the call quotas' windows)."""

    async def increment(self, names: Sequence[str], ttl: int) -> list[int]:
        """Add one to each counter, atomically; their new values."""
        ...

    async def reserve(self, names: Sequence[str], limits: Sequence[int], ttl: int) -> bool:
        """Add one to each counter only if none holds its limit yet, atomically; whether it
        did."""
        ...

    async def refund(self, names: Sequence[str]) -> None:
        """Take one from each counter, never below zero."""
        ...
