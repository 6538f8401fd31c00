"""The ``server_keys`` table: the server's signing keys, as
:class:`~fhirgate.domain.stores.ServerKeyStore` promises them."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from fhirgate.domain.stores import KeyRow
from fhirgate.storage.models import ServerKeyRow

__all__ = ["ServerKeyTable"]


class ServerKeyTable:
    """Signing keys in the database every replica shares."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def rows(self) -> list[KeyRow]:
        async with self._engine.connect() as conn:
            result = await conn.execute(select(ServerKeyRow).order_by(ServerKeyRow.created_at))
        return [dict(row._mapping) for row in result]

    async def unsealed(self) -> list[KeyRow]:
        async with self._engine.connect() as conn:
            result = await conn.execute(select(ServerKeyRow).where(ServerKeyRow.row_mac.is_(None)))
        return [dict(row._mapping) for row in result]

    async def seal(self, kid: str, row_mac: str) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(
                update(ServerKeyRow)
                .where(ServerKeyRow.kid == kid, ServerKeyRow.row_mac.is_(None))
                .values(row_mac=row_mac)
            )

    async def add(self, row: KeyRow, retire: Callable[[KeyRow], KeyRow | None] | None) -> None:
        async with self._engine.begin() as conn:
            if retire is not None:
                active = await conn.execute(
                    select(ServerKeyRow).where(
                        ServerKeyRow.retired_at.is_(None), ServerKeyRow.alg == row["alg"]
                    )
                )
                for current in active.all():
                    retired = retire(dict(current._mapping))
                    if retired is not None:
                        await conn.execute(
                            update(ServerKeyRow)
                            .where(ServerKeyRow.kid == current.kid)
                            .values(retired_at=retired["retired_at"], row_mac=retired["row_mac"])
                        )
            await conn.execute(insert(ServerKeyRow).values(dict(row)))
