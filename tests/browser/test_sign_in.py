"""Signing in and out in a real browser, and the keyboard: the skip link comes first, the
sign-in form needs no mouse."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import (
    PASSWORD,
    SIGN_IN,
    Browsing,
    Live,
    developer_path,
    sign_in,
)

OWNER = "owner@example.org"
WRONG = "The email or the password is not right."


@pytest.fixture(scope="module", autouse=True)
def people(live: Live) -> Iterator[None]:
    live.create_user(OWNER)
    yield


def focused(page: Page) -> str:
    """The focused element: its id, else its tag and text."""
    return str(
        page.evaluate(
            "() => { const e = document.activeElement;"
            " return e.id || `${e.tagName.toLowerCase()}:${e.textContent.trim().slice(0, 40)}`; }"
        )
    )


def test_sign_in_through_the_form_then_sign_out(browsing: Browsing) -> None:
    page = browsing.page()
    page.goto(developer_path())
    expect(page).to_have_url(re.compile(r"/dashboard/sign-in\?next=%2Fdashboard%2Forgs%2F"))
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    page.get_by_label("Email").fill(OWNER)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(re.compile(re.escape(developer_path()) + "$"))  # back to `next`
    expect(page.get_by_role("heading", name="Developer", level=1)).to_be_visible()
    expect(page.locator(".who")).to_have_text(OWNER)
    cookies = {c["name"]: c for c in page.context.cookies()}
    session = cookies["fhirgate_session"]
    assert session["httpOnly"] and session["sameSite"] == "Lax"
    assert page.evaluate("document.cookie") == ""  # nothing readable by scripts

    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(SIGN_IN)
    page.goto("/dashboard/account")
    expect(page).to_have_url(SIGN_IN)  # the session is over


def test_a_wrong_password_shows_the_error(browsing: Browsing, live: Live) -> None:
    page = browsing.page()
    page.goto("/dashboard/sign-in")
    page.get_by_label("Email").fill(OWNER)
    page.get_by_label("Password").fill("not the password at all")
    with page.expect_response(lambda r: r.request.method == "POST") as answer:
        page.get_by_role("button", name="Sign in").click()
    assert answer.value.status == 401
    expect(page.get_by_role("alert")).to_have_text(WRONG)
    expect(page.get_by_label("Email")).to_have_value(OWNER)  # kept, the password is not
    expect(page.get_by_label("Password")).to_have_value("")
    assert "fhirgate_session" not in {c["name"] for c in page.context.cookies()}
    # An unknown email gets the very same answer.
    page.get_by_label("Email").fill("nobody@example.org")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_have_text(WRONG)
    page.goto("/dashboard/account")
    expect(page).to_have_url(SIGN_IN)
    # The right password still works afterwards in the same browser.
    sign_in(page, OWNER)


def test_the_sign_in_form_needs_only_the_keyboard(browsing: Browsing) -> None:
    page = browsing.page()
    page.goto("/dashboard/sign-in")
    assert focused(page) == "email"  # autofocus: the first field is ready to type in
    page.keyboard.type(OWNER)
    page.keyboard.press("Tab")
    assert focused(page) == "password"
    page.keyboard.type(PASSWORD)
    page.keyboard.press("Tab")
    assert focused(page) == "button:Sign in"
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(re.escape(developer_path()) + "$"))
    expect(page.locator(".who")).to_have_text(OWNER)
    # Backwards from the autofocused field: the home link, then the skip link.
    page.context.clear_cookies()
    page.goto("/dashboard/sign-in")
    page.keyboard.press("Shift+Tab")
    assert focused(page) == "a:fhirgate"
    page.keyboard.press("Shift+Tab")
    assert focused(page) == "a:Skip to content"


@pytest.mark.parametrize(
    "path",
    [developer_path(), developer_path() + "/devtools", "/dashboard/orgs/default/members",
     "/dashboard/account"],
)  # fmt: skip
def test_the_first_tab_focuses_the_skip_link_which_moves_into_main(
    browsing: Browsing, path: str
) -> None:
    page = browsing.signed_in(OWNER)
    page.goto(path)
    page.keyboard.press("Tab")
    assert focused(page) == "a:Skip to content"
    expect(page.get_by_role("link", name="Skip to content")).to_be_in_viewport()  # shown
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(r"#main$"))
    assert focused(page) == "main"
    page.keyboard.press("Tab")  # the next stop is inside the content, past the header
    assert page.evaluate("document.activeElement.closest('main') !== null"), focused(page)
