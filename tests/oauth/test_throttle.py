"""Failed client authentication is rate-limited per source address and per (client id, source
address), in process and through a real Redis shared by replicas.

The only fake is the clock, so that a test can cross a one-minute window without sleeping.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
import redis.exceptions
from redis.asyncio import Redis
from tests.support import REDIS_URL, require_service

from fhirgate.oauth.throttle import FailureLimiter, failure_keys
from fhirgate.storage.counters import RedisCounters

# 10 s into a window: a block set now lasts 50 s
START = 28_333_333 * 60 + 10.0
ADDR, OTHER_ADDR = "203.0.113.7", "198.51.100.9"
CLIENT, OTHER_CLIENT = "client-a", "client-b"


class Clock:
    """Epoch seconds that move only when told to."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def next_window(self) -> None:
        self.now = (int(self.now // 60) + 1) * 60 + 0.5


MakeLimiter = Callable[..., FailureLimiter]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def prefix() -> str:
    """The Redis key prefix of one test."""
    return f"fhirgate:test:fail:{uuid.uuid4().hex}:"


@pytest.fixture
async def redis_client(prefix: str) -> AsyncIterator[Redis]:
    """A client of the test Redis (fails, not skips, when CI requires it). Nothing is flushed:
    each test writes under its own prefix, removed afterwards."""
    redis = Redis.from_url(require_service(REDIS_URL, "Redis"))
    try:
        yield redis
        names = [name async for name in redis.scan_iter(match=prefix + "*", count=1000)]
        if names:
            await redis.delete(*names)
    finally:
        await redis.aclose()


@pytest.fixture(params=["memory", "redis"])
def make_limiter(request: pytest.FixtureRequest, clock: Clock, prefix: str) -> MakeLimiter:
    """Limiters on each backend: in-process counters, or counters in the real Redis."""
    redis = request.getfixturevalue("redis_client") if request.param == "redis" else None

    def factory(limit: int, **options: object) -> FailureLimiter:
        options.setdefault("clock", clock)
        options.setdefault("address_limit", limit)  # one limit for both keys unless a test says
        counters = RedisCounters(redis) if redis is not None else None
        return FailureLimiter(limit, counters, prefix=prefix, **options)  # type: ignore[arg-type]

    return factory


async def fail(
    limiter: FailureLimiter, times: int, source: str, client: str | None
) -> list[int | None]:
    return [await limiter.record_failure(source, client) for _ in range(times)]


async def test_under_the_limit_nothing_is_blocked(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(3)
    assert await fail(limiter, 2, ADDR, CLIENT) == [None] * 2
    assert limiter.check(ADDR, CLIENT) is None
    assert limiter.check(ADDR, None) is None
    assert limiter._blocked == {}


async def test_the_failure_reaching_the_limit_blocks_address_and_client_from_it(
    make_limiter: MakeLimiter, clock: Clock
) -> None:
    """With limit N, N failures are evaluated; the N-th reaches the limit and returns the
    Retry-After, and the attempt after it is refused by ``check``."""
    limiter = make_limiter(3)
    assert await fail(limiter, 3, ADDR, CLIENT) == [None, None, 50]  # the window ends in 50 s
    addr_key, client_key = failure_keys(ADDR, CLIENT)
    assert set(limiter._blocked) == {addr_key, client_key}
    assert limiter.check(ADDR, CLIENT) == 50
    assert limiter.check(ADDR, None) == 50
    clock.now += 19.5
    assert limiter.check(ADDR, CLIENT) == 31  # rounded up
    clock.now = (int(START // 60) + 1) * 60 - 0.01
    assert limiter.check(ADDR, CLIENT) == 1  # never 0


@pytest.mark.parametrize(("offset", "expected"), [(0.0, 60), (0.001, 60), (30.0, 30), (59.9, 1)])
async def test_retry_after_is_the_rest_of_the_window(
    make_limiter: MakeLimiter, clock: Clock, offset: float, expected: int
) -> None:
    clock.now = 28_333_400 * 60 + offset
    limiter = make_limiter(1)
    assert await fail(limiter, 1, ADDR, CLIENT) == [expected]  # limit 1: the first failure
    assert limiter.check(ADDR, CLIENT) == expected


async def test_the_same_client_from_another_address_keeps_working(
    make_limiter: MakeLimiter,
) -> None:
    limiter = make_limiter(3)
    await fail(limiter, 3, ADDR, CLIENT)
    assert limiter.check(ADDR, CLIENT) is not None
    assert limiter.check(OTHER_ADDR, CLIENT) is None
    assert limiter.check(OTHER_ADDR, None) is None
    # and its own failures there are counted apart from the attacker's: 2 are under the limit
    assert await fail(limiter, 2, OTHER_ADDR, CLIENT) == [None] * 2
    assert limiter.check(OTHER_ADDR, CLIENT) is None
    assert await limiter.record_failure(OTHER_ADDR, CLIENT) == 50  # its own 3rd reaches it


async def test_another_client_id_from_a_blocked_address_is_blocked(
    make_limiter: MakeLimiter,
) -> None:
    limiter = make_limiter(3)
    await fail(limiter, 3, ADDR, CLIENT)
    assert limiter.check(ADDR, OTHER_CLIENT) == 50
    assert limiter.check(ADDR, None) == 50


async def test_the_address_limit_counts_every_client_id_it_tries(
    make_limiter: MakeLimiter,
) -> None:
    limiter = make_limiter(3)
    outcomes = [await limiter.record_failure(ADDR, f"guess-{i}") for i in range(2)]
    assert outcomes == [None] * 2
    assert limiter.check(ADDR, "guess-99") is None
    assert await limiter.record_failure(ADDR, None) == 50  # no client id: the address still counts
    assert limiter.check(ADDR, "guess-99") == 50
    assert set(limiter._blocked) == {failure_keys(ADDR, None)[0]}  # no single id reached it


async def test_the_address_alone_allows_five_times_the_client_limit_by_default(
    make_limiter: MakeLimiter,
) -> None:
    """One misconfigured client behind a shared address (a NAT) blocks only itself there."""
    limiter = make_limiter(2, address_limit=None)
    assert limiter.address_limit == 10
    assert await fail(limiter, 2, ADDR, CLIENT) == [None, 50]
    assert limiter.check(ADDR, CLIENT) == 50
    assert limiter.check(ADDR, OTHER_CLIENT) is None
    # OTHER_CLIENT reaches its own limit at its 2nd failure; the address counts all 7 (to 9)
    assert await fail(limiter, 7, ADDR, OTHER_CLIENT) == [None, 50, 50, 50, 50, 50, 50]
    assert limiter.check(ADDR, "a third client") is None  # 9 failures: under the limit
    assert await limiter.record_failure(ADDR, "a third client") == 50  # the 10th reaches it
    assert limiter.check(ADDR, "a fourth client") == 50


def test_an_address_limit_below_the_client_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="address_limit"):
        FailureLimiter(5, address_limit=4)


async def test_a_new_window_unblocks_and_starts_counting_afresh(
    make_limiter: MakeLimiter, clock: Clock
) -> None:
    limiter = make_limiter(3)
    await fail(limiter, 3, ADDR, CLIENT)
    assert limiter.check(ADDR, CLIENT) == 50
    clock.next_window()
    assert limiter.check(ADDR, CLIENT) is None
    assert limiter._blocked == {}  # expired entries go when seen
    assert await fail(limiter, 3, ADDR, CLIENT) == [None, None, 60]


async def test_limit_zero_disables_throttling(
    make_limiter: MakeLimiter, request: pytest.FixtureRequest, prefix: str
) -> None:
    limiter = make_limiter(0)
    assert await fail(limiter, 50, ADDR, CLIENT) == [None] * 50
    assert limiter.check(ADDR, CLIENT) is None
    assert limiter._blocked == {}
    assert limiter._counts == {}
    if "redis_client" in request.fixturenames:
        redis: Redis = request.getfixturevalue("redis_client")
        assert [name async for name in redis.scan_iter(match=prefix + "*")] == []


async def test_memory_stays_bounded_over_many_keys_and_windows(
    make_limiter: MakeLimiter, clock: Clock
) -> None:
    limiter = make_limiter(1, max_entries=100)
    for window in range(3):
        for i in range(300):
            source = f"2001:db8:{window}::{i:x}"
            assert await fail(limiter, 1, source, f"client-{i}") == [50 if not window else 59]
            assert len(limiter._counts) <= 100
            assert len(limiter._blocked) <= 100
        # the newest blocks are kept; the oldest went first
        assert limiter.check(f"2001:db8:{window}::{299:x}", None) is not None
        assert limiter.check(f"2001:db8:{window}::0", None) is None
        clock.next_window()
        clock.now += 0.5
    assert limiter._counts.keys() <= set().union(
        *(failure_keys(f"2001:db8:2::{i:x}", f"client-{i}") for i in range(300))
    )


async def test_a_long_client_id_costs_a_fixed_size_key(
    make_limiter: MakeLimiter, request: pytest.FixtureRequest, prefix: str
) -> None:
    limiter = make_limiter(2)
    long_id = "x" * 10_000
    assert await fail(limiter, 2, ADDR, long_id) == [None, 50]
    assert limiter.check(ADDR, long_id) == 50
    assert limiter.check(OTHER_ADDR, long_id) is None
    assert limiter.check(OTHER_ADDR, long_id + "y") is None
    assert all(len(key) == 32 for key in [*limiter._blocked, *limiter._counts])
    if "redis_client" in request.fixturenames:
        redis: Redis = request.getfixturevalue("redis_client")
        names = [name async for name in redis.scan_iter(match=prefix + "*")]
        assert len(names) == 2
        assert all(len(name) < len(prefix) + 64 for name in names)
        assert all(0 < ttl <= 120 for ttl in [await redis.ttl(name) for name in names])


async def test_replicas_sharing_redis_add_up_their_counts(
    redis_client: Redis, clock: Clock, prefix: str
) -> None:
    first = FailureLimiter(4, RedisCounters(redis_client), clock=clock, prefix=prefix)
    second = FailureLimiter(4, RedisCounters(redis_client), clock=clock, prefix=prefix)
    assert await fail(first, 2, ADDR, CLIENT) == [None, None]
    assert await fail(second, 1, ADDR, CLIENT) == [None]
    assert first.check(ADDR, CLIENT) is None
    assert second.check(ADDR, CLIENT) is None
    # the fourth failure, wherever it lands, reaches the shared limit: that replica blocks
    assert await first.record_failure(ADDR, CLIENT) == 50
    assert first.check(ADDR, CLIENT) == 50
    # the other replica learns at its own next failure for the key (documented: one gets through)
    assert second.check(ADDR, CLIENT) is None
    assert await second.record_failure(ADDR, CLIENT) == 50
    assert second.check(ADDR, CLIENT) == 50
    assert second.check(OTHER_ADDR, CLIENT) is None
    assert first.check(OTHER_ADDR, CLIENT) is None


async def test_in_process_limiters_do_not_share_counts(clock: Clock) -> None:
    first, second = FailureLimiter(2, clock=clock), FailureLimiter(2, clock=clock)
    assert await fail(first, 1, ADDR, CLIENT) == [None]
    assert await fail(second, 1, ADDR, CLIENT) == [None]  # shared, this would be the 2nd: 50
    assert second.check(ADDR, CLIENT) is None
    assert await first.record_failure(ADDR, CLIENT) == 50  # first's own 2nd failure
    assert second.check(ADDR, CLIENT) is None


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_check_needs_no_redis_and_failures_fail_closed_when_it_is_down(
    clock: Clock,
) -> None:
    """Nothing listens on the port: ``check`` still answers (it never asks Redis), while
    ``record_failure`` raises so that the caller answers 503."""
    down = Redis.from_url(f"redis://127.0.0.1:{_closed_port()}/0")
    try:
        limiter = FailureLimiter(3, RedisCounters(down), clock=clock)
        assert limiter.check(ADDR, CLIENT) is None
        with pytest.raises(redis.exceptions.ConnectionError):
            await limiter.record_failure(ADDR, CLIENT)
    finally:
        await down.aclose()


def test_a_negative_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="limit"):
        FailureLimiter(-1)
