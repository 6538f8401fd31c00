"""SQLite writes inline on the event loop, without ever waiting there for the write lock.

An autocommit write in WAL mode costs microseconds, far less than a hop to aiosqlite's thread,
so the hot paths (single-use ``jti``, the grant store) run their statements inline. But the
async engine's transactions hold SQLite's write lock across ``await``s: a statement that waited
for the lock inline would block the very event loop that transaction needs to commit, and both
would stall until the busy timeout. So the inline connection never waits (``busy_timeout=0``);
when the lock is taken, the same work runs in a worker thread on a second connection that may
wait for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

__all__ = ["InlineSqlite", "checkpoint", "in_transaction", "refresh_statistics"]

_T = TypeVar("_T")
WAIT_MS = 10_000


def _connect(path: str | Path, busy_ms: int, cached_statements: int = 128) -> sqlite3.Connection:
    db = sqlite3.connect(
        path, isolation_level=None, check_same_thread=False, cached_statements=cached_statements
    )
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("PRAGMA foreign_keys=ON")
    db.execute(f"PRAGMA busy_timeout={busy_ms}")
    db.execute("PRAGMA wal_autocheckpoint=0")  # a background job checkpoints, off the loop
    return db


def in_transaction(db: sqlite3.Connection, work: Callable[[sqlite3.Connection], _T]) -> _T:
    """``work(db)`` in one ``BEGIN IMMEDIATE`` transaction: committed, or rolled back when it
    raises (so :meth:`InlineSqlite.run` may retry it on the waiting connection). Inline, the
    ``BEGIN`` raises at once when another connection holds the write lock."""
    db.execute("BEGIN IMMEDIATE")
    try:
        done = work(db)
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return done


def _locked(exc: sqlite3.OperationalError) -> bool:
    message = str(exc)
    return "locked" in message or "busy" in message


class InlineSqlite:
    """Two connections to one SQLite file: one used inline, one in a thread when locked."""

    def __init__(self, path: str | Path) -> None:
        self._inline = _connect(path, busy_ms=0)
        # The waiting connection runs in whichever worker thread is free: CPython's statement
        # cache is not safe across threads (python/cpython#118172; under load, 1 in ~1,000
        # token requests failed with "bad parameter or other API misuse"), so it caches none.
        self._waiting = _connect(path, busy_ms=WAIT_MS, cached_statements=0)
        self._waiting_lock = threading.Lock()

    async def run(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        """``work(connection)`` inline, or in a worker thread if the write lock is taken.
        ``work`` must leave no transaction open when it raises."""
        try:
            return work(self._inline)
        except sqlite3.OperationalError as exc:
            if not _locked(exc):
                raise
        return await asyncio.to_thread(self._run_waiting, work)

    async def reload_statistics(self) -> None:
        """Make both connections plan with the statistics an ``ANALYZE`` on another connection
        wrote: SQLite reads them only when a connection loads the schema, so without this a
        connection opened before the first ``ANALYZE`` plans every search as if the tables
        were empty (docs/benchmarks.md)."""
        await self.run(_reload_statistics)
        await asyncio.to_thread(self._run_waiting, _reload_statistics)

    def _run_waiting(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        with self._waiting_lock:
            return work(self._waiting)

    def close(self) -> None:
        self._inline.close()
        self._waiting.close()


def _reload_statistics(db: sqlite3.Connection) -> None:
    db.execute("ANALYZE sqlite_schema")


#: Rows sampled per index by ANALYZE: enough for the planner, fast on any size of table.
ANALYSIS_LIMIT = 1000


def refresh_statistics(path: str | Path) -> None:
    """Refresh the query planner's statistics (``ANALYZE``, sampled), in the caller's thread.

    Without them SQLite plans a FHIR search from the resource table's (environment, version,
    type) index and tests every row against the search index — a scan of every resource of the
    type; with them it starts from the search index's few matching rows (docs/benchmarks.md).
    """
    with contextlib.closing(_connect(path, busy_ms=WAIT_MS)) as db:
        db.execute(f"PRAGMA analysis_limit={ANALYSIS_LIMIT}")
        db.execute("ANALYZE")


def checkpoint(path: str | Path) -> None:
    """Copy the WAL back into the database file (PASSIVE: never waits for readers), in the
    caller's thread: the inline connections never checkpoint themselves."""
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute("PRAGMA busy_timeout=2000")
        db.execute("PRAGMA wal_checkpoint(PASSIVE)")
