"""Brute-force protection for client authentication: failures per source address and per
(client id, source address), over fixed one-minute windows.

RFC 6749 §10.10 (credentials-guessing attacks) asks the authorization server to make guessing
infeasible; RFC 6819 §4.3.5 (obtaining a client secret by online guessing) names locking out
after failed attempts (§5.1.4.2.3) among the countermeasures.

Each failed client authentication counts against two keys, each with its own limit:

* ``client``: the client id *from that address*, ``limit`` failures a minute
  (``FHIRGATE_AUTH_FAILURE_LIMIT``). Counting the client id per address, not alone, keeps its
  legitimate owner working from its own address while an attacker hammers the id elsewhere;
  blocking the id everywhere would hand attackers a denial of service.
* ``addr``: the source address, whatever client id it claims (an attacker cycling ids),
  ``address_limit`` failures a minute (default five times ``limit``): an address shared by
  several clients (a NAT, an integration host) is not blocked by one misconfigured client.

Keys are digests (:func:`fhirgate.storage.ttl_sets.digest`), so an attacker-chosen client id
of any length costs the same fixed-size key. A window is ``int(now // 60)``; the counter of a
key for a window lives in Redis when one is configured (shared by every replica), else in this
process.

The success path costs no storage round trip: :meth:`FailureLimiter.check` only reads this
process's map of blocked keys. :meth:`FailureLimiter.record_failure` increments the shared
counters and, when one reaches the limit, blocks that key here until its window ends. So a
replica learns of a block at its own next failure for that key: each replica other than the one
that saw the crossing lets at most one more failure per key per window through (more only for
attempts already in flight on it when that failure lands), and those are counted too. A key thus
sees about ``limit + replicas`` evaluated failures in a window, never an unbounded number.

Counting before the check (:meth:`FailureLimiter.reserve`, :meth:`FailureLimiter.refund`): when
one check is expensive (a dashboard password, an argon2id hash of 64 MiB), counting it after it
failed lets every attempt already in flight through. ``reserve`` counts the attempt *before* the
check, atomically (a Lua script in Redis, one event-loop step in this process), and refuses it
with nothing counted when a key already holds its limit in this window: of any number of
concurrent attempts at most ``limit`` per key are admitted in a window, on every replica. A
failed attempt stays counted; ``refund`` takes back an attempt that succeeded, so the limit
still counts failures, plus the attempts being checked.

Redis errors propagate: the caller answers 503 rather than let an unchecked guess through.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from fhirgate.domain.stores import SharedCounters, digest

__all__ = ["COUNTER_TTL", "WINDOW", "FailureLimiter", "Reservation", "Throttled", "failure_keys"]

WINDOW = 60
"""Length of a counting window, in seconds."""
COUNTER_TTL = 120
"""Lifetime of a shared counter: its window, plus slack for clocks that disagree a little."""


class Throttled(Exception):
    """An attempt refused before it was checked; ``retry_after``: seconds to wait."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"throttled, retry after {retry_after} s")
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class Reservation:
    """An attempt :meth:`FailureLimiter.reserve` counted: the window and the counters it counted
    in, for :meth:`FailureLimiter.refund`."""

    window: int
    keys: tuple[str, ...]


def failure_keys(source: str, client_id: str | None) -> tuple[str, ...]:
    """The digests one failed attempt counts against: the source address and, when a client id
    is known, the (client id, source address) pair."""
    if client_id is None:
        return (digest("addr", source),)
    return digest("addr", source), digest("client", client_id, source)


class FailureLimiter:
    """Counts failed client authentications and blocks a key for the rest of its window once
    it has ``limit`` failures in it: the next attempt is refused (RFC 6749 §10.10, RFC 6819
    §4.3.5, §5.1.4.2.3).

    ``limit`` 0 disables throttling. ``address_limit`` (default ``5 * limit``) applies to the
    source address alone. ``counters`` (Redis) share the counts between replicas; without
    it they live in this process. ``clock`` returns epoch seconds (windows must agree between
    replicas). ``prefix`` namespaces the shared counters. ``max_entries`` bounds each in-process
    map (counters, blocked keys); at the bound the least recently used entry goes.
    """

    def __init__(
        self,
        limit: int,
        counters: SharedCounters | None = None,
        *,
        clock: Callable[[], float] = time.time,
        prefix: str = "fhirgate:fail:",
        max_entries: int = 100_000,
        address_limit: int | None = None,
    ) -> None:
        if limit < 0 or (address_limit is not None and address_limit < limit):
            raise ValueError("limit must be 0 (disabled) or positive, address_limit >= limit")
        if max_entries < 1:
            raise ValueError("max_entries must be positive")
        self.limit = limit
        self.address_limit = 5 * limit if address_limit is None else address_limit
        self._shared = counters
        self._clock = clock
        self._prefix = prefix
        self._max_entries = max_entries
        # key digest -> blocked-until (clock seconds); insertion order is expiry order
        self._blocked: dict[str, float] = {}
        # in-process counters of the window ``_window`` only: key digest -> failures
        self._counts: dict[str, int] = {}
        self._window = -1

    def check(self, source: str, client_id: str | None) -> int | None:
        """Seconds to wait (Retry-After) when this source, or this client id from this source, is
        blocked; ``None`` otherwise. Reads this process's memory only: no round trip."""
        if self.limit == 0 or not self._blocked:
            return None
        now = self._clock()
        wait: int | None = None
        for key in failure_keys(source, client_id):
            until = self._blocked.get(key)
            if until is None:
                continue
            if until <= now:
                del self._blocked[key]
            else:
                wait = max(wait or 0, _retry_after(until, now))
        return wait

    async def record_failure(self, source: str, client_id: str | None) -> int | None:
        """Count one failure; returns Retry-After seconds if this failure crossed the limit, else
        ``None``.

        "Crossed" means a key's count in this window has now reached the limit: the failure that
        made it so, or a later one that reached this replica before it knew of the block. The
        key is then blocked here until the window ends. Redis errors propagate.
        """
        if self.limit == 0:
            return None
        now = self._clock()
        window = int(now // WINDOW)
        keys = failure_keys(source, client_id)
        if self._shared is None:
            counts = self._count_locally(keys, window)
        else:
            counts = await self._shared.increment(self._names(window, keys), COUNTER_TTL)
        until = float((window + 1) * WINDOW)
        crossed = False
        limits = (self.address_limit, self.limit)
        for key, count, limit in zip(keys, counts, limits[: len(keys)], strict=True):
            if count >= limit:
                self._block(key, until, now)
                crossed = True
        return _retry_after(until, now) if crossed else None

    async def reserve(self, source: str, client_id: str | None) -> Reservation:
        """Count one attempt before it is checked; raises :exc:`Throttled` (nothing counted) when
        this source, or this client id from this source, already holds its limit of attempts in
        this window. The attempt stays counted (a failure) unless :meth:`refund` takes it back.
        Atomic check-and-count, so concurrent attempts never get past the limit together. Redis
        errors propagate."""
        now = self._clock()
        window = int(now // WINDOW)
        if self.limit == 0:
            return Reservation(window, ())
        keys = failure_keys(source, client_id)
        limits = (self.address_limit, self.limit)[: len(keys)]
        if self._shared is None:
            admitted = self._reserve_locally(keys, limits, window)
        else:
            admitted = await self._shared.reserve(self._names(window, keys), limits, COUNTER_TTL)
        if not admitted:
            raise Throttled(_retry_after(float((window + 1) * WINDOW), now))
        return Reservation(window, keys)

    async def refund(self, reservation: Reservation) -> None:
        """Take back an attempt :meth:`reserve` counted, because it succeeded. Redis errors
        propagate."""
        if not reservation.keys:
            return
        if self._shared is None:
            if reservation.window == self._window:  # else its counters are gone already
                for key in reservation.keys:
                    if self._counts.get(key, 0) > 0:
                        self._counts[key] -= 1
            return
        await self._shared.refund(self._names(reservation.window, reservation.keys))

    def _names(self, window: int, keys: Sequence[str]) -> list[str]:
        """The shared counters' names of ``keys`` in ``window``."""
        return [f"{self._prefix}{window}:{key}" for key in keys]

    def _reserve_locally(self, keys: Sequence[str], limits: Sequence[int], window: int) -> bool:
        self._start_window(window)
        if any(self._counts.get(key, 0) >= limit for key, limit in zip(keys, limits, strict=True)):
            return False
        self._count_locally(keys, window)
        return True

    def _start_window(self, window: int) -> None:
        if window != self._window:  # counters of past windows are worthless: drop them all
            self._counts.clear()
            self._window = window

    def _count_locally(self, keys: Sequence[str], window: int) -> list[int]:
        self._start_window(window)
        counts = []
        for key in keys:
            count = self._counts.pop(key, 0) + 1  # re-inserted last: least recently used first
            self._counts[key] = count
            while len(self._counts) > self._max_entries:
                del self._counts[next(iter(self._counts))]
            counts.append(count)
        return counts

    def _block(self, key: str, until: float, now: float) -> None:
        blocked = self._blocked
        blocked.pop(key, None)  # re-inserted last, keeping insertion order = expiry order
        while blocked:  # drop the expired entries at the front
            oldest = next(iter(blocked))
            if blocked[oldest] > now:
                break
            del blocked[oldest]
        while len(blocked) >= self._max_entries:
            del blocked[next(iter(blocked))]
        blocked[key] = until


def _retry_after(until: float, now: float) -> int:
    """Whole seconds until ``until``, rounded up, at least 1."""
    return max(1, math.ceil(until - now))
