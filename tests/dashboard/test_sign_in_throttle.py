"""The dashboard's password checks are rationed before the hash: an attempt is counted before
its argon2id hash, only a few hashes run at once (per email and address, and in the process),
and the change-password form is throttled and audited like the sign-in form.

Hashes are counted by argon2-cffi's own hasher, subclassed only to count its verifications and,
when a test holds them, to let them wait at a gate the test opens (then they run for real)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import httpx
import pytest
from argon2 import PasswordHasher

from fhirgate.config import Settings
from fhirgate.dashboard import passwords
from fhirgate.services import SIGN_IN_FAILURES
from tests.dashboard.support import PASSWORD, Browser, browser_for, csrf_of, person
from tests.support import Running, pin_window, start

_DEADLINE = 30.0  # seconds to wait for what must happen, so a failure fails instead of hanging


class CountingHasher(PasswordHasher):
    """argon2-cffi's hasher (the same parameters), counting the verifications it computes."""

    def __init__(self) -> None:
        super().__init__()
        self.verified = 0
        self.gate = threading.Event()
        self.gate.set()
        self._lock = threading.Lock()

    def verify(self, hash: str | bytes, password: str | bytes) -> bool:
        with self._lock:
            self.verified += 1
        self.gate.wait()
        return super().verify(hash, password)


@contextlib.asynccontextmanager
async def _held(hasher: CountingHasher) -> AsyncIterator[list[asyncio.Task[httpx.Response]]]:
    """Verifications wait at the gate until ``hasher.gate.set()`` or the block's end; the requests
    started in the block (appended to the list) are answered before it ends, whatever happens."""
    started: list[asyncio.Task[httpx.Response]] = []
    hasher.gate.clear()
    try:
        yield started
    finally:
        hasher.gate.set()
        await asyncio.gather(*started, return_exceptions=True)


def _request(
    started: list[asyncio.Task[httpx.Response]], sending: Coroutine[Any, Any, httpx.Response]
) -> asyncio.Task[httpx.Response]:
    """Send in the background, answered before the :func:`_held` block ends."""
    task = asyncio.create_task(sending)
    started.append(task)
    return task


@pytest.fixture
def hashes(monkeypatch: pytest.MonkeyPatch) -> CountingHasher:
    hasher = CountingHasher()
    monkeypatch.setattr(passwords, "_HASHER", hasher)
    return hasher


@contextlib.asynccontextmanager
async def _started(settings: Settings, **changes: int) -> AsyncIterator[Running]:
    """The app with ``changes`` to ``settings``, the throttle's window pinned, Ada registered."""
    running, stack = await start(settings.model_copy(update=changes))
    try:
        pin_window(running.services.password_checks.limiter)
        await person(running.services, "ada@example.org")
        yield running
    finally:
        await stack.aclose()


@pytest.fixture
async def served(backend_settings: Settings) -> AsyncIterator[Running]:
    """The app on each backend with the default caps, the throttle's window pinned."""
    async with _started(backend_settings) as running:
        yield running


@pytest.fixture
async def browser(served: Running) -> AsyncIterator[Browser]:
    client = browser_for(served.app)
    async with client.http:
        yield client


async def _sign_in(
    browser: Browser, token: str, password: str, email: str = "ada@example.org"
) -> httpx.Response:
    return await browser.http.post(
        "/dashboard/sign-in", data={"csrf_token": token, "email": email, "password": password}
    )


async def _until(what: str, condition: object) -> None:
    """Wait until ``condition()`` holds (not a timing assertion: the deadline only turns a
    hang into a failure)."""
    assert callable(condition)
    deadline = time.monotonic() + _DEADLINE
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        await asyncio.sleep(0.01)


def _too_many(answer: httpx.Response, reason: str) -> None:
    assert answer.status_code == 429, answer.text
    assert int(answer.headers["retry-after"]) > 0
    assert reason in answer.text
    assert answer.headers["content-type"].startswith("text/html")


async def test_concurrent_sign_ins_are_counted_before_the_hash(
    backend_settings: Settings, hashes: CountingHasher
) -> None:
    """41 concurrent sign-ins from one address (caps raised so that only the window counts):
    the first ten are verified, every other attempt gets 429 at once, with no hash — the 41st
    too, with the right password, while the ten are still being checked."""
    async with _started(
        backend_settings, password_verify_concurrency=64, password_verify_concurrency_per_key=64
    ) as running:
        browser = browser_for(running.app)
        async with browser.http:
            token = csrf_of(await browser.http.get("/dashboard/sign-in"))
            refused = 40 - SIGN_IN_FAILURES
            async with _held(hashes) as started:
                wrong = [
                    _request(started, _sign_in(browser, token, f"wrong password {n}"))
                    for n in range(40)
                ]
                await _until(
                    f"{refused} attempts refused while ten are checked",
                    lambda: sum(task.done() for task in wrong) >= refused,
                )
                right = await _sign_in(browser, token, PASSWORD)
                hashes.gate.set()
                answers = [await task for task in wrong]
    statuses = Counter(answer.status_code for answer in answers)
    assert statuses == {401: SIGN_IN_FAILURES, 429: refused}, statuses
    for answer in (right, *(a for a in answers if a.status_code == 429)):
        _too_many(answer, "Too many failed attempts")
    assert hashes.verified == SIGN_IN_FAILURES


async def test_a_sign_in_that_succeeds_is_not_counted(
    browser: Browser, hashes: CountingHasher
) -> None:
    """The limit counts failures (and the attempts being checked): a success is refunded."""
    for _ in range(SIGN_IN_FAILURES - 1):
        assert (await browser.sign_in("ada@example.org", "wrong password!!")).status_code == 401
    assert (await browser.sign_in("ada@example.org")).status_code == 303
    assert (await browser.sign_in("ada@example.org", "wrong password!!")).status_code == 401
    _too_many(await browser.sign_in("ada@example.org"), "Too many failed attempts")
    assert hashes.verified == SIGN_IN_FAILURES + 1


async def test_one_check_at_a_time_per_email_and_address(
    browser: Browser, hashes: CountingHasher
) -> None:
    token = csrf_of(await browser.http.get("/dashboard/sign-in"))
    async with _held(hashes) as started:
        first = _request(started, _sign_in(browser, token, PASSWORD))
        await _until("the first check is hashing", lambda: hashes.verified == 1)
        second = _request(started, _sign_in(browser, token, PASSWORD))
        await _until("the second attempt is answered", second.done)
        _too_many(second.result(), "Too many password checks at once")
        assert second.result().headers["retry-after"] == "1"
        hashes.gate.set()
        assert (await first).status_code == 303
    assert hashes.verified == 1


async def test_checks_in_flight_are_capped_in_the_process(
    backend_settings: Settings, hashes: CountingHasher
) -> None:
    async with _started(backend_settings, password_verify_concurrency=2) as running:
        await person(running.services, "bea@example.org")
        browser = browser_for(running.app)
        async with browser.http:
            token = csrf_of(await browser.http.get("/dashboard/sign-in"))
            async with _held(hashes) as started:
                held = [
                    _request(started, _sign_in(browser, token, PASSWORD, email))
                    for email in ("ada@example.org", "bea@example.org")
                ]
                await _until("two checks are hashing", lambda: hashes.verified == 2)
                third = _request(started, _sign_in(browser, token, PASSWORD, "cy@example.org"))
                await _until("the third attempt is answered", third.done)
                _too_many(third.result(), "Too many password checks at once")
                hashes.gate.set()
                assert [(await task).status_code for task in held] == [303, 303]
            # places are given back: the next attempt is checked
            assert (await _sign_in(browser, token, "wrong!", "cy@example.org")).status_code == 401
    assert hashes.verified == 3


async def test_password_change_failures_are_throttled_and_audited(
    served: Running, browser: Browser, hashes: CountingHasher
) -> None:
    """A stolen session cannot guess the current password faster than a sign-in could: the
    same counter (email, address), each failure audited, then 429 even to the right one."""
    assert (await browser.sign_in("ada@example.org")).status_code == 303
    new = {"new": "a brand new passphrase"}
    for n in range(SIGN_IN_FAILURES):
        wrong = await browser.post("/dashboard/account/password", {"current": f"wrong {n}", **new})
        assert wrong.status_code == 400
        assert "current password is not right" in wrong.text
    refused = await browser.post("/dashboard/account/password", {"current": PASSWORD, **new})
    _too_many(refused, "Too many failed attempts")
    assert hashes.verified == 1 + SIGN_IN_FAILURES  # the sign-in, then the ten failures
    failures = [
        event
        for event in await served.services.audit.recent(limit=100)
        if event.event == "dashboard.password_change_failed"
    ]
    assert len(failures) == SIGN_IN_FAILURES
    assert {(event.actor, event.source) for event in failures} == {("ada@example.org", "127.0.0.1")}
    other = browser_for(served.app)
    async with other.http:  # the same key at the sign-in form
        _too_many(await other.sign_in("ada@example.org"), "Too many failed attempts")
    found = await served.services.accounts.find("ada@example.org")
    assert found is not None and passwords.verify_password(found[1], PASSWORD)  # unchanged
