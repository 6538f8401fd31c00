"""Dashboard sign-in, sessions and CSRF: cookie flags, timeouts, rotation, ending sessions on a
password change, throttling, forged requests, open redirects, security headers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import update

from fhirgate.config import Settings
from fhirgate.services import SIGN_IN_FAILURES
from fhirgate.storage.models import SessionRow
from fhirgate.storage.repos import now
from tests.dashboard.support import PASSWORD, Browser, browser_for, csrf_of, person
from tests.support import BASE, Running, pin_window, start


@pytest.fixture
async def browser(running: Running) -> AsyncIterator[Browser]:
    await person(running.services, "ada@example.org")
    client = browser_for(running.app)
    async with client.http:
        yield client


def _cookie(response: httpx.Response, name: str) -> str:
    for header in response.headers.get_list("set-cookie"):
        if header.startswith(f"{name}="):
            return header
    raise AssertionError(f"no {name} cookie set: {response.headers.get_list('set-cookie')}")


async def test_pages_need_a_session_and_come_back_after_sign_in(browser: Browser) -> None:
    page = await browser.http.get("/dashboard/orgs/default/members")
    assert page.status_code == 303
    assert (
        page.headers["location"]
        == "/dashboard/sign-in?next=%2Fdashboard%2Forgs%2Fdefault%2Fmembers"
    )
    form = await browser.http.get(page.headers["location"])
    signed_in = await browser.http.post(
        "/dashboard/sign-in",
        data={
            "csrf_token": csrf_of(form),
            "email": "Ada@Example.org ",
            "password": PASSWORD,
            "next": "/dashboard/orgs/default/members",
        },
    )
    assert signed_in.status_code == 303
    assert signed_in.headers["location"] == "/dashboard/orgs/default/members"
    assert (await browser.http.get("/dashboard/orgs/default/members")).status_code == 200


async def test_session_cookie_flags_on_http(browser: Browser) -> None:
    cookie = _cookie(await browser.sign_in("ada@example.org"), "fhirgate_session")
    flags = {part.strip().lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "path=/", "samesite=lax"} <= flags
    assert "secure" not in flags


async def test_behind_https_the_cookie_is_secure_with_the_host_prefix(tmp_path: Path) -> None:
    settings = Settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path}/https.db",
        var_dir=tmp_path / "var",
        public_url="https://fhirgate.example.org",
    )
    running, stack = await start(settings)
    try:
        await person(running.services, "ada@example.org")
        transport = httpx.ASGITransport(app=running.app)
        async with httpx.AsyncClient(
            transport=transport, base_url="https://fhirgate.example.org"
        ) as http:
            signed_in = await Browser(http).sign_in("ada@example.org")
            cookie = _cookie(signed_in, "__Host-fhirgate_session")
            flags = {part.strip().lower() for part in cookie.split(";")[1:]}
            assert {"httponly", "secure", "path=/", "samesite=lax"} <= flags
            assert "domain" not in cookie.lower()
            assert (await http.get("/dashboard/account")).status_code == 200
    finally:
        await stack.aclose()


async def test_wrong_password_and_unknown_email_get_the_same_answer(browser: Browser) -> None:
    wrong = await browser.sign_in("ada@example.org", "not the password at all")
    unknown = await browser.sign_in("nobody@example.org")
    assert wrong.status_code == unknown.status_code == 401
    assert "The email or the password is not right." in wrong.text
    assert "The email or the password is not right." in unknown.text
    assert (
        "set-cookie" not in wrong.headers or "fhirgate_session" not in wrong.headers["set-cookie"]
    )
    assert (await browser.http.get("/dashboard/account")).status_code == 303


async def test_sign_in_starts_a_new_session_and_ends_the_old_one(
    browser: Browser, running: Running
) -> None:
    first = _cookie(await browser.sign_in("ada@example.org"), "fhirgate_session")
    first_token = first.split(";")[0].split("=", 1)[1]
    second = _cookie(await browser.sign_in("ada@example.org"), "fhirgate_session")
    second_token = second.split(";")[0].split("=", 1)[1]
    assert first_token != second_token
    assert await running.services.sessions.resume(first_token) is None
    assert await running.services.sessions.resume(second_token) is not None


async def test_a_planted_session_id_is_not_adopted(browser: Browser) -> None:
    """Session fixation: a cookie value chosen by an attacker never becomes a session."""
    browser.http.cookies.set("fhirgate_session", "attacker-chosen-value-1234567890")
    signed_in = await browser.sign_in("ada@example.org")
    token = _cookie(signed_in, "fhirgate_session").split(";")[0].split("=", 1)[1]
    assert token != "attacker-chosen-value-1234567890"


async def _age(running: Running, **ago: timedelta) -> None:
    values = {column: now() - delta for column, delta in ago.items()}
    async with running.services.engine.begin() as conn:
        await conn.execute(update(SessionRow).values(**values))


async def test_idle_timeout(browser: Browser, running: Running) -> None:
    await browser.sign_in("ada@example.org")
    await _age(running, last_seen_at=timedelta(minutes=14))
    assert (await browser.http.get("/dashboard/account")).status_code == 200
    await _age(running, last_seen_at=timedelta(minutes=16))
    assert (await browser.http.get("/dashboard/account")).status_code == 303


async def test_absolute_timeout_even_when_active(browser: Browser, running: Running) -> None:
    await browser.sign_in("ada@example.org")
    await _age(running, created_at=timedelta(hours=11, minutes=59))
    assert (await browser.http.get("/dashboard/account")).status_code == 200
    await _age(running, created_at=timedelta(hours=12, minutes=1))
    assert (await browser.http.get("/dashboard/account")).status_code == 303


async def test_purge_removes_timed_out_sessions(running: Running) -> None:
    user = await person(running.services, "bea@example.org")
    sessions = running.services.sessions
    live, stale = await sessions.start(user.id), await sessions.start(user.id)
    async with running.services.engine.begin() as conn:
        await conn.execute(
            update(SessionRow)
            .where(SessionRow.token_hash == (await sessions.resume(stale)).token_hash)  # type: ignore[union-attr]
            .values(last_seen_at=now() - timedelta(hours=1))
        )
    assert await sessions.purge() == 1
    assert await sessions.resume(live) is not None


async def test_password_change_ends_the_other_sessions(running: Running, browser: Browser) -> None:
    other = browser_for(running.app)
    async with other.http:
        await other.sign_in("ada@example.org")
        await browser.sign_in("ada@example.org")
        changed = await browser.post(
            "/dashboard/account/password",
            {"current": PASSWORD, "new": "a brand new passphrase"},
        )
        assert changed.status_code == 200, changed.text
        assert "fhirgate_session=" in changed.headers["set-cookie"]  # rotated here
        assert (await browser.http.get("/dashboard/account")).status_code == 200
        assert (await other.http.get("/dashboard/account")).status_code == 303
        assert (await other.sign_in("ada@example.org")).status_code == 401
        assert (await other.sign_in("ada@example.org", "a brand new passphrase")).status_code == 303


async def test_password_change_checks_the_current_password_and_the_rules(
    browser: Browser,
) -> None:
    await browser.sign_in("ada@example.org")
    wrong = await browser.post(
        "/dashboard/account/password", {"current": "wrong wrong wrong", "new": "another long one"}
    )
    assert wrong.status_code == 400
    assert "current password is not right" in wrong.text
    short = await browser.post("/dashboard/account/password", {"current": PASSWORD, "new": "short"})
    assert short.status_code == 400
    assert "at least 12 characters" in short.text
    assert (await browser.sign_in("ada@example.org")).status_code == 303  # unchanged


async def test_sign_in_is_throttled_per_email_and_address(
    browser: Browser, running: Running
) -> None:
    pin_window(running.services.password_checks.limiter)
    for _ in range(SIGN_IN_FAILURES):
        assert (await browser.sign_in("ada@example.org", "wrong password!!")).status_code == 401
    blocked = await browser.sign_in("ada@example.org")  # even the right password, for now
    assert blocked.status_code == 429
    assert int(blocked.headers["retry-after"]) > 0
    assert "Too many failed attempts" in blocked.text


async def test_sign_out_ends_the_session(browser: Browser) -> None:
    await browser.sign_in("ada@example.org")
    out = await browser.post("/dashboard/sign-out")
    assert out.status_code == 303
    assert (await browser.http.get("/dashboard/account")).status_code == 303


# CSRF --------------------------------------------------------------------------------------


async def test_state_changes_without_the_csrf_token_are_refused(browser: Browser) -> None:
    await browser.sign_in("ada@example.org")
    missing = await browser.http.post("/dashboard/sign-out")
    wrong = await browser.http.post("/dashboard/sign-out", data={"csrf_token": "0" * 64})
    assert missing.status_code == wrong.status_code == 403
    assert "did not come from this dashboard" in missing.text
    assert (await browser.http.get("/dashboard/account")).status_code == 200  # still signed in


async def test_cross_site_requests_are_refused_even_with_a_token(browser: Browser) -> None:
    await browser.sign_in("ada@example.org")
    token = await browser.csrf()
    for headers in ({"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"}):
        refused = await browser.http.post(
            "/dashboard/sign-out", data={"csrf_token": token}, headers=headers
        )
        assert refused.status_code == 403
    same = await browser.http.post(
        "/dashboard/sign-out", data={"csrf_token": token}, headers={"Origin": BASE}
    )
    assert same.status_code == 303


async def test_another_sessions_csrf_token_does_not_work(
    running: Running, browser: Browser
) -> None:
    await person(running.services, "bea@example.org")
    other = browser_for(running.app)
    async with other.http:
        await other.sign_in("bea@example.org")
        foreign = await other.csrf()
    await browser.sign_in("ada@example.org")
    refused = await browser.http.post("/dashboard/sign-out", data={"csrf_token": foreign})
    assert refused.status_code == 403


async def test_the_sign_in_form_needs_its_double_submit_token(browser: Browser) -> None:
    await browser.http.get("/dashboard/sign-in")  # sets the cookie
    forged = await browser.http.post(
        "/dashboard/sign-in",
        data={
            "csrf_token": "not-the-cookie-value-xxxx",
            "email": "ada@example.org",
            "password": PASSWORD,
        },
    )
    assert forged.status_code == 403
    fresh = browser_for(browser.http._transport.app)  # type: ignore[attr-defined]
    async with fresh.http:  # no cookie at all (a cross-site form post)
        cold = await fresh.http.post(
            "/dashboard/sign-in",
            data={"csrf_token": "x" * 32, "email": "ada@example.org", "password": PASSWORD},
        )
        assert cold.status_code == 403


@pytest.mark.parametrize(
    "target",
    [
        "//evil.example/",
        "https://evil.example/",
        "/\\evil.example",
        "/dashboard/../x",
        "javascript:x",
    ],
)
async def test_no_open_redirect_after_sign_in(browser: Browser, target: str) -> None:
    form = await browser.http.get("/dashboard/sign-in")
    signed_in = await browser.http.post(
        "/dashboard/sign-in",
        data={
            "csrf_token": csrf_of(form),
            "email": "ada@example.org",
            "password": PASSWORD,
            "next": target,
        },
    )
    assert signed_in.status_code == 303
    location = signed_in.headers["location"]
    assert location.startswith("/dashboard/") and not location.startswith("//")
    assert "evil" not in location


async def test_security_headers_on_every_dashboard_page(browser: Browser) -> None:
    for path in ("/dashboard/sign-in", "/dashboard/nope", "/dashboard/static/app.css"):
        response = await browser.http.get(path)
        csp = response.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert "script-src 'self'" in csp
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["x-content-type-options"] == "nosniff"
    assert (await browser.http.get("/dashboard/sign-in")).headers["cache-control"] == "no-store"
    assert "content-security-policy" not in (await browser.http.get("/healthz")).headers


async def test_a_deactivated_person_is_signed_out(browser: Browser, running: Running) -> None:
    from fhirgate.storage.models import DashboardUserRow

    await browser.sign_in("ada@example.org")
    async with running.services.engine.begin() as conn:
        await conn.execute(update(DashboardUserRow).values(active=False))
    assert (await browser.http.get("/dashboard/account")).status_code == 303
    assert (await browser.sign_in("ada@example.org")).status_code == 401


async def test_sessions_on_every_backend(server: Running) -> None:
    """The session store itself on SQLite, PostgreSQL and PostgreSQL + Redis."""
    user = await person(server.services, "ada@example.org")
    sessions = server.services.sessions
    token = await sessions.start(user.id)
    found = await sessions.resume(token)
    assert found is not None and found.user.email == "ada@example.org"
    assert sessions.csrf_valid(found, found.csrf_token)
    other = "1" if found.csrf_token.endswith("0") else "0"
    assert not sessions.csrf_valid(found, found.csrf_token[:-1] + other)
    await sessions.end_all(user.id)
    assert await sessions.resume(token) is None
