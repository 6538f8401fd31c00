"""The process's one database: the SQLAlchemy engine that runs transactions, and the direct
statements of the hot paths (:mod:`fhirgate.storage.direct`), whose connections the grant
store's one-round-trip operations share (:mod:`fhirgate.storage.grant_store`).

The server and every CLI command open one :class:`Database` and close it when they end; nothing
else opens connections of its own.
"""

from __future__ import annotations

import asyncio

from sqlalchemy.ext.asyncio import AsyncEngine

from fhirgate.storage.db import create_engine, sqlite_path
from fhirgate.storage.direct import PostgresStatements, SqliteStatements, statements_for
from fhirgate.storage.grant_store import GrantStatements, grant_statements_for
from fhirgate.storage.sqlite_inline import refresh_statistics

__all__ = ["Database"]


class Database:
    """One database URL's engine, direct statements and grant statements."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine: AsyncEngine = create_engine(url)
        self.statements: SqliteStatements | PostgresStatements = statements_for(self.engine)
        self.grants: GrantStatements = grant_statements_for(self.statements)

    @property
    def is_sqlite(self) -> bool:
        return isinstance(self.statements, SqliteStatements)

    async def analyze(self) -> None:
        """Refresh the query planner's statistics (``ANALYZE``), and on SQLite make this
        process's own connections plan with them."""
        if isinstance(self.statements, SqliteStatements):
            await asyncio.to_thread(refresh_statistics, sqlite_path(self.url))
            await self.statements.reload_statistics()
        else:
            await self.statements.execute("ANALYZE", {})

    async def aclose(self) -> None:
        await self.statements.aclose()
        await self.engine.dispose()
