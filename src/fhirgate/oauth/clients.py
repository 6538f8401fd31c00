"""The per-process client cache that keeps storage off the token endpoint's hot path.

A record is reused for at most ``client_cache_ttl`` seconds (≤ 5 s), so a change made on any
replica or from the CLI (revocation, new keys) is seen everywhere within that time. Unknown ids
are cached too, in a bounded map, so a flood of random ids cannot turn into a flood of queries.
When an entry expires under load, one query refreshes it and concurrent requests for the same
id wait for that query instead of each sending their own. A failed query is not cached.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from dataclasses import dataclass

from fhirgate.domain.clients import Client
from fhirgate.domain.stores import ClientStore
from fhirgate.oauth.keyset import ClientKey, JWKSetError, validate_jwks

__all__ = ["ClientDirectory", "RegisteredClient"]

_MAX_ENTRIES = 10_000


@dataclass(frozen=True, slots=True)
class RegisteredClient:
    """A client together with its parsed inline keys."""

    client: Client
    inline_keys: tuple[ClientKey, ...]


def _registered(client: Client) -> RegisteredClient:
    try:
        keys = validate_jwks(client.jwks) if client.jwks else ()
    except JWKSetError:
        keys = ()  # registration validates; a corrupted row simply has no usable keys
    return RegisteredClient(client, keys)


class ClientDirectory:
    """Looks clients up by id through a short-lived cache."""

    def __init__(self, repo: ClientStore, ttl: float) -> None:
        self._repo = repo
        self._ttl = ttl
        self._entries: OrderedDict[str, tuple[float, RegisteredClient | None]] = OrderedDict()
        self._loading: dict[str, asyncio.Future[RegisteredClient | None]] = {}

    async def get(self, client_id: str) -> RegisteredClient | None:
        entry = self._entries.get(client_id)
        if entry is not None and entry[0] > time.monotonic():
            return entry[1]
        loading = self._loading.get(client_id)
        if loading is None:
            loading = self._loading[client_id] = asyncio.ensure_future(self._load(client_id))
            loading.add_done_callback(lambda done: self._done_loading(client_id, done))
        return await asyncio.shield(loading)

    def _done_loading(self, client_id: str, done: asyncio.Future[RegisteredClient | None]) -> None:
        if self._loading.get(client_id) is done:
            del self._loading[client_id]

    async def _load(self, client_id: str) -> RegisteredClient | None:
        now = time.monotonic()
        client = await self._repo.get(client_id)
        value = _registered(client) if client is not None else None
        if self._loading.get(client_id) is not asyncio.current_task():
            return value  # forgotten while loading: the answer may predate the change
        self._entries[client_id] = (now + self._ttl, value)
        self._entries.move_to_end(client_id)
        if len(self._entries) > _MAX_ENTRIES:
            self._entries.popitem(last=False)
        return value

    def forget(self, client_id: str) -> None:
        """Drop what this process knows of ``client_id`` (after changing it here)."""
        self._entries.pop(client_id, None)
        self._loading.pop(client_id, None)
