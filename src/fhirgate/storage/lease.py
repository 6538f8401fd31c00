"""A minimal connection lease for the hot paths' single commands (PostgreSQL statements, Redis
commands), instead of the drivers' pools.

asyncpg's and redis-py's pools wrap every use in timeouts, shields, reset hooks and (redis-py)
observability events that cost more CPU than the round trip they guard (docs/benchmarks.md).
Here a connection is opened on demand, lent to one caller at a time and taken back as it is:
only single commands that leave no session state run on these connections. One whose command
did not end cleanly — cancelled, or the connection broke — is closed, never lent again; at most
``max_size`` are open, and callers beyond that wait in order.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Generic, TypeVar

__all__ = ["Lease"]

C = TypeVar("C")


class Lease(Generic[C]):
    """Lends connections made by ``connect`` and ended by ``close``; ``alive`` tells a closed
    one; errors of ``harmless`` types (the server refused the command) leave a connection fit
    to lend again."""

    def __init__(
        self,
        connect: Callable[[], Awaitable[C]],
        close: Callable[[C], Awaitable[None]],
        alive: Callable[[C], bool],
        harmless: tuple[type[BaseException], ...],
        max_size: int = 10,
    ) -> None:
        self._connect = connect
        self._close = close
        self._alive = alive
        self._harmless = harmless
        self._max_size = max_size
        self._idle: list[C] = []
        self._open = 0
        self._waiting: deque[asyncio.Future[C | None]] = deque()
        self._closing: set[asyncio.Task[None]] = set()
        self._closed = False

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[C]:
        lent = await self._lend()
        try:
            yield lent
        except self._harmless:
            self._give_back(lent)
            raise
        except BaseException:  # broken, or cancelled mid-command: its state is unknown
            self._discard(lent)
            raise
        self._give_back(lent)

    async def _lend(self) -> C:
        while self._idle:
            idle = self._idle.pop()
            if self._alive(idle):
                return idle
            self._discard(idle)
        if self._open >= self._max_size:
            waiter: asyncio.Future[C | None] = asyncio.get_running_loop().create_future()
            self._waiting.append(waiter)
            try:
                handed = await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():  # handed over as it was cancelled
                    given = waiter.result()
                    if given is None:
                        self._hand_over(None)  # the right to open one goes to the next
                    else:
                        self._give_back(given)
                raise
            if handed is not None:
                return handed
        self._open += 1  # a new connection (or the place of one that was closed)
        try:
            return await self._connect()
        except BaseException:
            self._open -= 1
            self._hand_over(None)
            raise

    def _hand_over(self, connection: C | None) -> bool:
        """Give ``connection`` (or, with ``None``, the right to open one) to the first caller
        still waiting; ``False`` when none is."""
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(connection)
                return True
        return False

    def _give_back(self, connection: C) -> None:
        if self._closed:
            self._discard(connection)
        elif not self._hand_over(connection):
            self._idle.append(connection)

    def _discard(self, connection: C) -> None:
        self._open -= 1
        task = asyncio.ensure_future(self._close(connection))
        self._closing.add(task)  # held until done (the loop keeps only weak references)
        task.add_done_callback(self._closing.discard)
        if not self._closed:
            self._hand_over(None)

    async def aclose(self) -> None:
        """Close the idle connections now, the lent ones as they come back."""
        self._closed = True
        idle, self._idle = self._idle, []
        for connection in idle:
            self._discard(connection)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
