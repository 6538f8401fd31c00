"""Call quotas: at most ``limit`` calls per key in each fixed window (1upHealth's user-management
API allows 300 calls an hour per application, then answers 429).

A window is ``int(now // window)``. Counters live in Redis when one is configured (``INCR`` and
``EXPIRE`` in one ``MULTI``: every replica shares them), else in this process. A call over the
limit is refused; the answer says how long until the window ends
(``Retry-After``, RFC 9110 §10.2.3). Redis errors propagate: the caller answers 503.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from fhirgate.domain.stores import SharedCounters

__all__ = ["CallQuota"]


class CallQuota:
    """``limit`` calls per key per ``window`` seconds; ``limit`` 0 means unlimited."""

    def __init__(
        self,
        limit: int,
        window: int,
        counters: SharedCounters | None,
        prefix: str,
        *,
        clock: Callable[[], float] = time.time,
        max_keys: int = 100_000,
    ) -> None:
        self.limit = limit
        self._window = window
        self._shared = counters
        self._prefix = prefix
        self._clock = clock
        self._max_keys = max_keys
        self._counts: dict[str, int] = {}
        self._current = -1

    async def take(self, key: str) -> int | None:
        """Count one call of ``key``; ``None`` if it is within the quota, else the seconds
        until the window ends."""
        if self.limit == 0:
            return None
        now = self._clock()
        window = int(now // self._window)
        count = await (self._count_shared if self._shared else self._count_locally)(key, window)
        if count <= self.limit:
            return None
        return max(1, math.ceil((window + 1) * self._window - now))

    async def _count_locally(self, key: str, window: int) -> int:
        if window != self._current:
            self._counts.clear()
            self._current = window
        count = self._counts.get(key, 0) + 1
        if count > self.limit:
            return count  # refused calls are not counted
        if key not in self._counts and len(self._counts) >= self._max_keys:
            return self.limit + 1  # fail closed rather than forget a counter
        self._counts[key] = count
        return count

    async def _count_shared(self, key: str, window: int) -> int:
        assert self._shared is not None
        (count,) = await self._shared.increment([f"{self._prefix}{window}:{key}"], 2 * self._window)
        return count
