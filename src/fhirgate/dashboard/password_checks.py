"""Rationing the dashboard's password hashes: every attempt is counted before its hash, and only
a few hashes run at once.

An argon2id hash costs 64 MiB and tens of milliseconds of CPU (:mod:`fhirgate.dashboard.passwords`),
so what is throttled is the *attempt*, before any hash (NIST SP 800-63B §5.2.2, limiting failed
authentication attempts; RFC 6819 §4.3.5, online guessing):

1. **In flight.** At most ``concurrency`` password checks and new-password hashes are in
   flight at once in this process (``FHIRGATE_PASSWORD_VERIFY_CONCURRENCY``), and at most
   ``per_key`` checks per (email, source address)
   (``FHIRGATE_PASSWORD_VERIFY_CONCURRENCY_PER_KEY``). One more is refused at once
   (:exc:`TooManyAtOnce`): no hash, nothing counted, no queue for a flood to grow. A place is
   held until the hash's thread ends, even when the request is cancelled first.
2. **Per window.** The attempt is then counted against the sign-in throttle
   (:meth:`fhirgate.oauth.throttle.FailureLimiter.reserve`: a number a minute per (email,
   address) and per address, in Redis when configured) *before* the hash; past the limit it is
   refused (:exc:`~fhirgate.oauth.throttle.Throttled`), even with the right password. Of any
   number of concurrent attempts, at most the limit are ever verified in a window.
3. A wrong password stays counted; an attempt that succeeds is refunded
   (:meth:`Attempt.succeeded`), so the limit counts failures and the attempts being checked.

Hashing runs in a thread, so it never stalls the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from fhirgate.dashboard.passwords import hash_password, verify_password
from fhirgate.oauth.throttle import FailureLimiter, Reservation, Throttled, failure_keys

__all__ = ["Attempt", "PasswordChecks", "TooManyAtOnce"]


class TooManyAtOnce(Throttled):
    """Refused because too many password hashes are in flight (here, or for this key)."""

    def __init__(self) -> None:
        super().__init__(1)


class Attempt:
    """One admitted attempt: counted, holding its in-flight places, one hash to verify."""

    def __init__(self, limiter: FailureLimiter, reservation: Reservation) -> None:
        self._limiter = limiter
        self._reservation = reservation
        self.hashing: asyncio.Future[bool] | None = None

    async def verify(self, stored: str | None, password: str) -> bool:
        """Whether ``password`` matches ``stored`` (``None``: no such account, still hashed).
        The hash keeps its places until its thread ends, even if this request is cancelled."""
        if self.hashing is not None:
            raise RuntimeError("an attempt verifies one password")
        self.hashing = asyncio.ensure_future(asyncio.to_thread(verify_password, stored, password))
        return await asyncio.shield(self.hashing)

    async def succeeded(self) -> None:
        """The attempt signed someone in: it no longer counts against the limit."""
        await self._limiter.refund(self._reservation)


class PasswordChecks:
    """Password checks and new-password hashes under the caps of this module's docstring."""

    def __init__(self, limiter: FailureLimiter, *, concurrency: int, per_key: int) -> None:
        if concurrency < 1 or per_key < 1:
            raise ValueError("concurrency and per_key must be positive")
        self.limiter = limiter
        self._concurrency = concurrency
        self._per_key = per_key
        self._running = 0
        # places taken per (email, address) digest; at most ``concurrency`` entries
        self._by_key: dict[str, int] = {}

    @contextlib.asynccontextmanager
    async def attempt(self, source: str, email: str) -> AsyncIterator[Attempt]:
        """An attempt to check a password of ``email`` (normalized) from ``source``, refused
        before any hash with :exc:`~fhirgate.oauth.throttle.Throttled` (:exc:`TooManyAtOnce`
        when the in-flight caps are full). Redis errors propagate."""
        key = failure_keys(source, email)[-1]
        if self._by_key.get(key, 0) >= self._per_key or self._running >= self._concurrency:
            raise TooManyAtOnce
        self._running += 1
        self._by_key[key] = self._by_key.get(key, 0) + 1
        attempt: Attempt | None = None
        try:
            attempt = Attempt(self.limiter, await self.limiter.reserve(source, email))
            yield attempt
        finally:
            hashing = attempt.hashing if attempt is not None else None
            if hashing is None or hashing.done():
                self._leave(key)
            else:  # cancelled while hashing: the places stay taken until the thread ends
                hashing.add_done_callback(lambda _: self._leave(key))

    async def hash_new(self, password: str, email: str) -> str:
        """The hash of a new password that meets the rules (raises
        :exc:`~fhirgate.dashboard.passwords.PasswordRejected`), under the global cap
        (:exc:`TooManyAtOnce` when it is full)."""
        if self._running >= self._concurrency:
            raise TooManyAtOnce
        self._running += 1
        hashing = asyncio.ensure_future(asyncio.to_thread(hash_password, password, email))
        hashing.add_done_callback(lambda _: self._leave(None))
        return await asyncio.shield(hashing)

    def _leave(self, key: str | None) -> None:
        self._running -= 1
        if key is not None:
            self._by_key[key] -= 1
            if not self._by_key[key]:
                del self._by_key[key]
