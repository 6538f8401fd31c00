"""Counters of fixed windows in Redis, shared by every replica: what
:class:`~fhirgate.domain.stores.SharedCounters` promises, for the failure throttle and the call
quotas. Each counter carries its lifetime from its first increment (a counter never exists
without its expiry)."""

from __future__ import annotations

from collections.abc import Sequence

from redis.asyncio import Redis

__all__ = ["RedisCounters"]

#: KEYS: the counters of one attempt; ARGV: their limits, then the counters' lifetime. Counts the
#: attempt (1) only if no counter holds its limit yet, else changes nothing (0).
_RESERVE = """
for i, key in ipairs(KEYS) do
  if tonumber(redis.call('GET', key) or '0') >= tonumber(ARGV[i]) then return 0 end
end
for _, key in ipairs(KEYS) do
  redis.call('INCR', key)
  redis.call('EXPIRE', key, ARGV[#KEYS + 1])
end
return 1
"""
#: KEYS: the counters of one admitted attempt; each loses one, never going below zero (a counter
#: that has expired is not brought back without its lifetime).
_REFUND = """
for _, key in ipairs(KEYS) do
  if tonumber(redis.call('GET', key) or '0') > 0 then redis.call('DECR', key) end
end
return 0
"""


class RedisCounters:
    """Counters in Redis. Redis errors propagate: the caller answers 503 rather than let an
    uncounted attempt through."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._reserve = redis.register_script(_RESERVE)
        self._refund = redis.register_script(_REFUND)

    async def increment(self, names: Sequence[str], ttl: int) -> list[int]:
        # MULTI/EXEC in one round trip: a counter never exists without its expiry
        async with self._redis.pipeline(transaction=True) as pipe:
            for name in names:
                pipe.incr(name)
                pipe.expire(name, ttl)
            replies = await pipe.execute()
        return [int(count) for count in replies[0::2]]

    async def reserve(self, names: Sequence[str], limits: Sequence[int], ttl: int) -> bool:
        return bool(await self._reserve(keys=list(names), args=[*limits, ttl]))

    async def refund(self, names: Sequence[str]) -> None:
        await self._refund(keys=list(names))
