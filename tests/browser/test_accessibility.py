"""Accessibility of the dashboard's pages, checked in the browser by axe-core (WCAG 2.1 A and
AA rules: labels, names, contrast, landmarks, ARIA), and a narrow (phone) viewport that never
scrolls the page sideways.

axe-core comes from the npm registry (tools/package.json, installed by ``make test``); it is
evaluated in the page through the DevTools protocol, which the page's CSP does not govern."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page

from tests.browser.conftest import Browsing, Live, create_key, developer_path, sign_in

OWNER = "owner@example.org"
AXE = Path(
    os.environ.get(
        "FHIRGATE_AXE",
        Path(__file__).resolve().parents[2] / "tools/node_modules/axe-core/axe.min.js",
    )
)
WCAG = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]


@pytest.fixture(scope="module")
def axe_source() -> str:
    if not AXE.is_file():
        pytest.fail(f"axe-core is not installed at {AXE}: run `make tools`", pytrace=False)
    return AXE.read_text()


@pytest.fixture(scope="module")
def pages(live: Live, browser: Browser) -> Iterator[list[str]]:
    """The owner, and the paths of every main page (with a key to show)."""
    live.create_user(OWNER)
    setup = Browsing(browser, live)
    try:
        page = setup.signed_in(OWNER)
        client_id = create_key(page, "Accessible backend")
        yield [
            developer_path(),
            developer_path() + "/devtools",
            f"/dashboard/keys/{client_id}",
            f"/dashboard/keys/{client_id}/revoke",
            "/dashboard/orgs/default/members",
            "/dashboard/orgs/default/audit",
            "/dashboard/account",
            "/dashboard/account/api-keys",
        ]
    finally:
        setup.close()


def violations(page: Page, axe_source: str) -> list[str]:
    page.evaluate(axe_source)
    found: list[dict[str, Any]] = page.evaluate(
        "async (tags) => (await axe.run(document, {runOnly: {type: 'tag', values: tags}}))"
        ".violations.map(v => ({id: v.id, help: v.help,"
        " nodes: v.nodes.slice(0, 3).map(n => n.target.join(' '))}))",
        WCAG,
    )
    return [f"{v['id']}: {v['help']} at {v['nodes']}" for v in found]


def test_the_sign_in_page_passes_axe(browsing: Browsing, axe_source: str) -> None:
    page = browsing.page()
    page.goto("/dashboard/sign-in")
    assert violations(page, axe_source) == []


def test_every_main_page_passes_axe(browsing: Browsing, pages: list[str], axe_source: str) -> None:
    page = browsing.signed_in(OWNER)
    found = {}
    for path in pages:
        page.goto(path)
        problems = violations(page, axe_source)
        if problems:
            found[path] = problems
    assert found == {}


def test_axe_does_find_a_broken_page(browsing: Browsing, axe_source: str) -> None:
    """The check can fail: an unlabeled input and low contrast are reported."""
    page = browsing.page()
    page.goto("/dashboard/sign-in")
    page.evaluate(
        "document.querySelector('label[for=email]').remove();"
        "document.querySelector('h1').style.color = '#eeeeee';"
    )
    ids = {problem.split(":")[0] for problem in violations(page, axe_source)}
    assert {"label", "color-contrast"} <= ids


def test_pages_fit_a_phone_screen(browsing: Browsing, pages: list[str]) -> None:
    page = browsing.page()
    page.set_viewport_size({"width": 375, "height": 800})
    sign_in(page, OWNER)
    wide = {}
    for path in ["/dashboard/sign-in", *pages]:
        page.goto(path)
        width = page.evaluate("document.documentElement.scrollWidth")
        if width > 375:
            wide[path] = width
    assert wide == {}
