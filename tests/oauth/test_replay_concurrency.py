"""Single use under concurrency: one assertion sent 50 times at once, over two app instances
sharing one store (SQLite file; PostgreSQL + Redis), yields exactly one token."""

from __future__ import annotations

import asyncio

from tests.support import register_client, start

from fhirgate.config import Settings


async def test_fifty_parallel_sends_over_two_instances_yield_one_token(
    backend_settings: Settings,
) -> None:
    first, first_stack = await start(backend_settings)
    second, second_stack = await start(backend_settings)
    try:
        form = (await register_client(first.services, "ES384")).form()
        instances = [first.http, second.http]
        responses = await asyncio.gather(
            *(instances[i % 2].post("/oauth2/token", data=form) for i in range(50))
        )
        statuses = sorted(r.status_code for r in responses)
        assert statuses.count(200) == 1, statuses
        assert statuses.count(401) == 49, statuses
        assert all(r.json()["error"] == "invalid_client" for r in responses if r.status_code != 200)
    finally:
        await first_stack.aclose()
        await second_stack.aclose()
