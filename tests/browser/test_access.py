"""Who may change what, checked in a real browser: read-only pages for viewers, refused POSTs
made from their own pages (with a valid CSRF token), an engineer confined to their environment,
and forged cross-site POSTs refused without changing anything."""

from __future__ import annotations

import html
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import APIResponse, Browser, Page, Route, expect

from tests.browser.conftest import (
    Browsing,
    Live,
    OtherSite,
    Reply,
    create_key,
    csrf_of,
    developer_path,
)

OWNER = "owner@example.org"
VIEWER = "viewer@example.org"
ENGINEER = "engineer@example.org"
READ_ONLY = "You can see the API keys of {env} but not change them"
NOT_ALLOWED = "You can see this but not change it"


@pytest.fixture(scope="module")
def keys(live: Live, browser: Browser) -> Iterator[dict[str, str]]:
    """People (with the CLI) and one key per environment (the owner, through the pages)."""
    live.create_user(OWNER)
    live.create_user(VIEWER, role="member")
    live.set_role(VIEWER, "viewer", env="development")
    live.create_user(ENGINEER, role="member")
    live.set_role(ENGINEER, "engineer", env="development")
    setup = Browsing(browser, live)
    try:
        page = setup.signed_in(OWNER)
        yield {
            "development": create_key(page, "Shared dev key"),
            "production": create_key(page, "Production key", env="production"),
        }
    finally:
        setup.close()


def post_form(page: Page, path: str, **fields: str) -> APIResponse:
    """A form POST with the page's cookies and the CSRF token of the page."""
    return page.request.post(path, form={"csrf_token": csrf_of(page), **fields})


def fetch_from_page(page: Page, path: str, fields: dict[str, str]) -> dict[str, Any]:
    """A POST made by a script on the page itself, as app.js makes them (same origin, the
    session's token in X-CSRF-Token); its status and JSON or text."""
    return dict(
        page.evaluate(
            """async ([path, fields]) => {
              const token = document.querySelector('meta[name="csrf-token"]').content;
              const answer = await fetch(path, { method: "POST", body: new URLSearchParams(fields),
                headers: { Accept: "application/json", "X-CSRF-Token": token } });
              return { status: answer.status, text: await answer.text() };
            }""",
            [path, fields],
        )
    )


def assert_read_only_settings(page: Page) -> None:
    expect(page.get_by_role("heading", name="Public keys")).to_be_visible()  # the page is there
    for button in ("Generate key pair", "Add public key", "Rename", "Save JWKS URL", "Test"):
        expect(page.get_by_role("button", name=button, exact=True)).to_have_count(0)
    expect(page.get_by_role("button", name="Remove")).to_have_count(0)
    for link in ("Revoke API key", "Delete API key"):
        expect(page.get_by_role("link", name=link)).to_have_count(0)
    expect(page.locator('input[name="csrf_token"]')).to_have_count(1)  # sign-out's form only


# --- roles ------------------------------------------------------------------------------------


def test_a_viewer_sees_the_keys_read_only(browsing: Browsing, keys: dict[str, str]) -> None:
    page = browsing.signed_in(VIEWER)
    for env in ("development", "production"):
        page.goto(developer_path(env))
        name = "Shared dev key" if env == "development" else "Production key"
        expect(page.get_by_role("link", name=name)).to_be_visible()
        expect(page.get_by_text(READ_ONLY.format(env=env.capitalize()))).to_be_visible()
        expect(page.get_by_role("heading", name="Create API key")).to_have_count(0)
        expect(page.get_by_role("button", name="Create API key")).to_have_count(0)
        page.get_by_role("link", name=name).click()
        expect(page.get_by_role("heading", level=1)).to_contain_text(name)
        assert_read_only_settings(page)


def test_a_viewers_posts_from_their_own_page_are_refused(
    browsing: Browsing, live: Live, keys: dict[str, str]
) -> None:
    dev = keys["development"]
    page = browsing.signed_in(VIEWER)
    page.goto(f"/dashboard/keys/{dev}")
    before, count = live.stored(dev), live.client_count()

    renamed = post_form(page, f"/dashboard/keys/{dev}/rename", name="Hijacked")
    assert renamed.status == 403
    assert NOT_ALLOWED in renamed.text()
    created = post_form(page, "/dashboard/orgs/default/development/api-keys", name="Sneaky")
    assert created.status == 403
    assert NOT_ALLOWED in created.text()
    revoked = post_form(page, f"/dashboard/keys/{dev}/revoke")
    assert revoked.status == 403
    url = post_form(page, f"/dashboard/keys/{dev}/jwks-url", jwks_url="https://evil.example/k")
    assert url.status == 403
    added = fetch_from_page(page, f"/dashboard/keys/{dev}/keys", {"key": '{"kty": "RSA"}'})
    assert added["status"] == 403, added
    assert live.stored(dev) == before  # name, status, keys and JWKS URL all unchanged
    assert live.client_count() == count

    # The same request from the owner's page goes through: the role made the difference.
    owner = browsing.signed_in(OWNER)
    owner.goto(f"/dashboard/keys/{dev}")
    same = post_form(owner, f"/dashboard/keys/{dev}/rename", name="Shared dev key")
    assert same.status == 200
    assert "Renamed." in same.text()


def test_an_engineer_in_development_cannot_change_production(
    browsing: Browsing, live: Live, keys: dict[str, str]
) -> None:
    page = browsing.signed_in(ENGINEER)
    mine = create_key(page, "Engineer's own key")  # allowed in Development
    expect(page.get_by_role("button", name="Generate key pair")).to_be_visible()
    assert live.stored(mine)["status"] == "active"

    page.goto(developer_path("production"))
    expect(page.get_by_text(READ_ONLY.format(env="Production"))).to_be_visible()
    expect(page.get_by_role("button", name="Create API key")).to_have_count(0)
    prod = keys["production"]
    page.goto(f"/dashboard/keys/{prod}")
    assert_read_only_settings(page)

    before, count = live.stored(prod), live.client_count()
    created = post_form(page, "/dashboard/orgs/default/production/api-keys", name="Sneaky")
    assert created.status == 403
    assert post_form(page, f"/dashboard/keys/{prod}/rename", name="Hijacked").status == 403
    assert post_form(page, f"/dashboard/keys/{prod}/revoke").status == 403
    assert post_form(page, f"/dashboard/keys/{prod}/delete").status == 403
    added = fetch_from_page(page, f"/dashboard/keys/{prod}/keys", {"key": '{"kty": "RSA"}'})
    assert added["status"] == 403, added
    assert live.stored(prod) == before
    assert live.client_count() == count


# --- forged requests ----------------------------------------------------------------------------


def attack_page(target: str, **fields: str) -> bytes:
    """An attacker's page whose form posts itself to ``target`` as soon as it loads."""
    inputs = "".join(
        f'<input name="{html.escape(k)}" value="{html.escape(v)}">' for k, v in fields.items()
    )
    return (
        "<!doctype html><title>You won a prize</title>"
        f'<form id="attack" method="post" action="{html.escape(target)}">{inputs}</form>'
        '<script>document.getElementById("attack").submit();</script>'
    ).encode()


def assert_still_signed_in(page: Page, live: Live, client_id: str, name: str) -> None:
    page.goto(f"/dashboard/keys/{client_id}")
    expect(page.get_by_role("heading", level=1)).to_contain_text(name)
    expect(page.locator(".who")).to_have_text(OWNER)
    assert live.stored(client_id)["name"] == name


def test_a_cross_site_post_without_the_csrf_token_is_refused(
    browsing: Browsing, live: Live, keys: dict[str, str]
) -> None:
    """From another site (a page on http://attacker.example, served by the test): the
    browser does not even send the session cookie with the POST (SameSite=Lax)."""
    dev = keys["development"]
    page = browsing.signed_in(OWNER)
    pages = {
        "/rename": attack_page(live.url(f"/dashboard/keys/{dev}/rename"), name="pwned"),
        "/sign-out": attack_page(live.url("/dashboard/sign-out")),
    }

    def serve(route: Route) -> None:
        path = "/" + route.request.url.split("/", 3)[3]
        route.fulfill(status=200, content_type="text/html", body=pages[path])

    page.route("http://attacker.example/**", serve)
    for path, target in (("/rename", f"/dashboard/keys/{dev}/rename"),
                         ("/sign-out", "/dashboard/sign-out")):  # fmt: skip
        with page.expect_response(live.url(target)) as answer:
            page.goto(f"http://attacker.example{path}")
        request = answer.value.request
        assert request.method == "POST"
        assert "fhirgate_session" not in request.all_headers().get("cookie", "")
        # Without the cookie the server sees nobody: off to sign in, nothing done.
        assert answer.value.status == 303
        assert answer.value.headers["location"] == "/dashboard/sign-in?next=%2Fdashboard%2F"
        assert_still_signed_in(page, live, dev, "Shared dev key")


def test_a_same_site_cross_origin_post_is_refused_by_the_csrf_check(
    browsing: Browsing, live: Live, keys: dict[str, str]
) -> None:
    """From another port of 127.0.0.1 (same site: the cookie goes along), the server itself
    must refuse: no CSRF token, and Sec-Fetch-Site is not same-origin."""
    dev = keys["development"]
    page = browsing.signed_in(OWNER)
    with OtherSite() as site:
        site.replies = {
            "/rename": Reply(200, attack_page(live.url(f"/dashboard/keys/{dev}/rename"),
                                              name="pwned")),
            "/sign-out": Reply(200, attack_page(live.url("/dashboard/sign-out"))),
            "/create": Reply(200, attack_page(
                live.url("/dashboard/orgs/default/development/api-keys"), name="Planted")),
        }  # fmt: skip
        count = live.client_count()
        for path in ("/rename", "/sign-out", "/create"):
            with page.expect_response(lambda r: r.request.method == "POST") as answer:
                page.goto(f"{site.origin}{path}")
            sent = answer.value.request.all_headers()
            assert "fhirgate_session" in sent.get("cookie", "")  # the browser sent the session
            assert sent["sec-fetch-site"] == "same-site"
            assert answer.value.status == 403, path
            expect(page.get_by_role("heading", name="Request refused")).to_be_visible()
            assert_still_signed_in(page, live, dev, "Shared dev key")
        assert site.hits == {"/rename": 1, "/sign-out": 1, "/create": 1}
    assert live.client_count() == count

    # The dashboard's own origin needs the token too: a script POST without it is refused.
    page.goto(f"/dashboard/keys/{dev}")
    answer = page.evaluate(
        """async (path) => (await fetch(path, { method: "POST",
             body: new URLSearchParams({ name: "no token" }) })).status""",
        f"/dashboard/keys/{dev}/rename",
    )
    assert answer == 403
    assert live.stored(dev)["name"] == "Shared dev key"
