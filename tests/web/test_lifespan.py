"""The app's lifespan: background jobs end, cleanly, before the services close."""

from __future__ import annotations

import asyncio

import pytest
from tests.support import start

from fhirgate.config import Settings
from fhirgate.services import Services


async def test_shutdown_waits_for_each_job_to_end_before_closing_the_services(
    sqlite_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job cancelled at shutdown (here one whose cleanup takes a moment, as a rollback does)
    ends before the services close and write their last audit rows: no storage call of a job
    runs alongside them."""
    order: list[str] = []

    async def slow_to_stop() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            await asyncio.sleep(0.05)
            order.append("job ended")

    jobs, close = Services.background_jobs, Services.aclose

    async def closing(self: Services) -> None:
        order.append("services closing")
        await close(self)

    monkeypatch.setattr(Services, "background_jobs", lambda self: [*jobs(self), (0, slow_to_stop)])
    monkeypatch.setattr(Services, "aclose", closing)
    _, stack = await start(sqlite_settings)
    await asyncio.sleep(0.01)  # the job has started (its interval is 0)
    await stack.aclose()
    assert order == ["job ended", "services closing"]
