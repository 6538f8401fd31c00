"""Fixtures of the dashboard's HTTP tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.dashboard.support import Browser, browser_for, person
from tests.support import Running


@pytest.fixture
async def owner(running: Running) -> AsyncIterator[Browser]:
    """The default organization's owner, signed in."""
    await person(running.services, "owner@example.org")
    browser = browser_for(running.app)
    async with browser.http:
        await browser.sign_in("owner@example.org")
        yield browser
