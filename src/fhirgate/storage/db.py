"""Engine creation and schema migrations.

SQLite runs in WAL mode with a busy timeout so that several connections (and the CLI while the
server runs) can share the file; PostgreSQL goes through asyncpg.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

__all__ = ["create_engine", "sqlite_path", "upgrade", "upgrade_async"]

_MIGRATIONS = Path(__file__).with_name("migrations")


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def sqlite_path(url: str) -> str:
    """The file of a ``sqlite+aiosqlite:///…`` URL."""
    database = make_url(url).database
    if not database or database == ":memory:":
        raise ValueError("fhirgate needs a SQLite database file, not an in-memory database")
    return database


def _ensure_sqlite_dir(url: str) -> None:
    Path(sqlite_path(url)).parent.mkdir(parents=True, exist_ok=True)


def create_engine(url: str) -> AsyncEngine:
    """An async engine for ``url`` (``sqlite+aiosqlite://`` or ``postgresql+asyncpg://``)."""
    if url.startswith("sqlite"):
        _ensure_sqlite_dir(url)
        engine = create_async_engine(url, connect_args={"timeout": 10})
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    return create_async_engine(url, pool_size=10, max_overflow=10, pool_pre_ping=True)


def _alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str) -> None:
    """Apply every migration up to head (``fhirgate db upgrade``). Call outside an event loop."""
    if url.startswith("sqlite"):
        _ensure_sqlite_dir(url)
    command.upgrade(_alembic_config(url), "head")


async def upgrade_async(url: str) -> None:
    """``upgrade`` from inside an event loop (the migration env runs its own loop in a thread)."""
    await asyncio.to_thread(upgrade, url)
