"""Real-browser tests of the dashboard: Debian's Chromium driven by Playwright's sync API (plain
``def`` tests only: the sync API refuses to run inside an asyncio loop), against a
``fhirgate serve`` started once per module on SQLite.

The server runs with ``FHIRGATE_CLIENT_CACHE_TTL=0`` (a key change is seen by the token endpoint
at once) and ``FHIRGATE_ALLOW_INSECURE_JWKS=1`` (the "Test" button may fetch an http:// JWKS URL
on 127.0.0.1). People are created with ``fhirgate admin``, as an operator would.

Chromium comes from ``FHIRGATE_CHROMIUM`` (``make test`` sets it), else ``/usr/bin/chromium``; if
it is missing every test errors at setup, saying how to install it (never a skip).
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from playwright.sync_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Page,
    expect,
    sync_playwright,
)

from fhirgate.client import PrivateKeyJWTAuth
from tests.test_quickstart import FHIRGATE, Served, run, start_served_with_log

CHROMIUM = os.environ.get("FHIRGATE_CHROMIUM", "/usr/bin/chromium")
PASSWORD = "correct horse battery staple"
ORG = "default"
TIMEOUT_MS = 10_000
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

# Reports every Content-Security-Policy violation of every document to the test (the binding
# is installed by Playwright over CDP, so the page's own CSP does not block it).
_CSP_WATCH = """
document.addEventListener("securitypolicyviolation", (event) => {
  window.__fhirgateCsp(`${event.violatedDirective} blocked ${event.blockedURI || "inline"}`
    + ` at ${event.sourceFile || document.location.href}:${event.lineNumber}`);
});
"""


def chromium_executable() -> str:
    path = Path(CHROMIUM)
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(
            f"Chromium is not installed at {CHROMIUM}: the browser tests need it. Install it "
            "(Debian: sudo apt-get install chromium, or `make tools`) or point FHIRGATE_CHROMIUM "
            "at a Chromium binary.",
            pytrace=False,
        )
    return str(path)


# --- the served fhirgate --------------------------------------------------------------------


@dataclass
class Live:
    """A running ``fhirgate serve``, its database and its log."""

    served: Served
    tmp: Path
    log: list[str]

    @property
    def base(self) -> str:
        return self.served.base

    @property
    def token_url(self) -> str:
        return f"{self.base}/oauth2/token"

    def url(self, path: str) -> str:
        return f"{self.base}{path}"

    def cli(self, *args: str, stdin: str | None = None) -> str:
        if stdin is None:
            return run(self.served.env, *args)
        done = subprocess.run(
            [FHIRGATE, *args],
            env=self.served.env,
            input=stdin,
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    def create_user(self, email: str, role: str | None = None, org: str = ORG) -> None:
        args = ["admin", "create-user", "--email", email, "--password-stdin", "--org", org]
        self.cli(*args, *(["--role", role] if role else []), stdin=PASSWORD + "\n")

    def set_role(self, email: str, role: str, env: str | None = None) -> None:
        self.cli("admin", "set-role", "--email", email, "--role", role,
                 *(["--env", env] if env else []))  # fmt: skip

    def _query(self, sql: str, *params: object) -> list[tuple[Any, ...]]:
        db = sqlite3.connect(f"file:{self.tmp}/q.db?mode=ro", uri=True, timeout=5)
        try:
            return db.execute(sql, params).fetchall()
        finally:
            db.close()

    def stored(self, client_id: str) -> dict[str, Any]:
        """The key's row as the server stored it (name, status, JWK Set, JWKS URL)."""
        rows = self._query(
            "SELECT name, status, jwks, jwks_url FROM clients WHERE client_id = ?", client_id
        )
        assert rows, f"no client {client_id} in the database"
        name, status, jwks, jwks_url = rows[0]
        return {
            "name": name,
            "status": status,
            "jwks": json.loads(jwks) if jwks else None,
            "jwks_url": jwks_url,
        }

    def client_count(self) -> int:
        return int(self._query("SELECT count(*) FROM clients")[0][0])

    def auth(self, client_id: str, key: Any, kid: str, alg: str) -> PrivateKeyJWTAuth:
        """The SDK's private_key_jwt auth for this server (``key``: PEM, JWK or a key)."""
        return PrivateKeyJWTAuth(
            self.token_url, client_id, key, kid=kid, alg=alg, scope="system/Patient.rs"
        )

    def whoami(self, token: str) -> httpx.Response:
        return httpx.get(self.url("/whoami"), headers={"Authorization": f"Bearer {token}"})

    def log_tail(self) -> str:
        return "".join(self.log[-40:])


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """One server per module; its output is read as it is written (a full pipe would stall it)."""
    tmp = tmp_path_factory.mktemp("browser")
    settings = {"FHIRGATE_CLIENT_CACHE_TTL": "0", "FHIRGATE_ALLOW_INSECURE_JWKS": "1"}
    with start_served_with_log(tmp, **settings) as (served, log):
        yield Live(served, tmp, log)


# --- the browser ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Chromium for the module (headless; ``--no-sandbox``: the tests may run as root)."""
    executable = chromium_executable()
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            yield launched
        finally:
            launched.close()


@dataclass
class Problems:
    """What went wrong in a browser context: console errors, uncaught exceptions, CSP
    violations."""

    console: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    csp: list[str] = field(default_factory=list)

    def all(self) -> list[str]:
        return self.console + self.page_errors + self.csp


class Browsing:
    """The browser contexts of one test (one per person: their own cookies), closed after it."""

    def __init__(self, browser: Browser, live: Live) -> None:
        self._browser = browser
        self._live = live
        self._contexts: list[BrowserContext] = []
        self._problems: dict[int, Problems] = {}

    def page(self, *, permissions: list[str] | None = None) -> Page:
        context = self._browser.new_context(
            base_url=self._live.base,
            viewport={"width": 1280, "height": 900},
            permissions=permissions or [],
            accept_downloads=True,
        )
        context.set_default_timeout(TIMEOUT_MS)
        problems = Problems()
        context.expose_function("__fhirgateCsp", lambda report: problems.csp.append(report))
        context.add_init_script(_CSP_WATCH)
        self._contexts.append(context)
        page = context.new_page()
        self._problems[id(page)] = problems

        def console(message: ConsoleMessage) -> None:
            if message.type == "error":
                problems.console.append(f"{message.text} ({message.location})")

        page.on("console", console)
        page.on("pageerror", lambda error: problems.page_errors.append(str(error)))
        return page

    def problems(self, page: Page) -> Problems:
        return self._problems[id(page)]

    def signed_in(self, email: str, **options: Any) -> Page:
        page = self.page(**options)
        sign_in(page, email)
        return page

    def close(self) -> None:
        for context in self._contexts:
            context.close()


@pytest.fixture
def browsing(browser: Browser, live: Live) -> Iterator[Browsing]:
    opened = Browsing(browser, live)
    try:
        yield opened
    finally:
        opened.close()


# --- what people do on the pages ---------------------------------------------------------------

SIGN_IN = re.compile(r"/dashboard/sign-in")


def sign_in(page: Page, email: str, password: str = PASSWORD) -> None:
    page.goto("/dashboard/sign-in")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    expect(page).not_to_have_url(SIGN_IN)
    expect(page.locator(".who")).to_have_text(email)


def csrf_of(page: Page) -> str:
    token = page.locator('meta[name="csrf-token"]').get_attribute("content")
    assert token, f"no CSRF token on {page.url}"
    return token


def developer_path(env: str = "development", org: str = ORG) -> str:
    return f"/dashboard/orgs/{org}/{env}/developer"


def create_key(page: Page, name: str, env: str = "development") -> str:
    """Create a signed-JWT API key through the API Keys tab's form; its client ID."""
    page.goto(developer_path(env))
    page.get_by_label("Name").fill(name)
    page.get_by_role("button", name="Create API key").click()
    page.wait_for_url(re.compile(r"/dashboard/keys/[^/]+$"))
    expect(page.get_by_role("heading", level=1)).to_contain_text(name)
    client_id = page.locator("#client-id").inner_text().strip()
    assert page.url.endswith(f"/dashboard/keys/{client_id}")
    return client_id


@dataclass
class Generated:
    """A key pair generated on a Settings page, as downloaded: PEM, JWK, Postman environment."""

    kid: str
    pem: str
    pem_filename: str
    jwk: dict[str, Any]
    jwk_filename: str
    postman: dict[str, Any]
    posted: list[str]


def generate_key_pair(page: Page, alg: str = "RS384") -> Generated:
    """Click "Generate key pair" and download the three files; every request body the page
    sent meanwhile is kept in ``posted``."""
    posted: list[str] = []

    def keep(request: Any) -> None:
        body = request.post_data
        if body:
            posted.append(body)

    page.on("request", keep)
    page.get_by_label("Algorithm").select_option(alg)
    page.get_by_role("button", name="Generate key pair").click()
    panel = page.locator("#generated")
    expect(panel).to_be_visible()
    expect(panel).to_be_focused()
    kid = page.locator("#generated-kid").inner_text().strip()
    assert kid
    texts = {}
    for link in ("download-pem", "download-jwk", "download-postman"):
        with page.expect_download() as info:
            page.locator(f"#{link}").click()
        download = info.value
        assert download.failure() is None
        texts[link] = (download.suggested_filename, Path(download.path()).read_text())
    page.remove_listener("request", keep)
    return Generated(
        kid=kid,
        pem=texts["download-pem"][1],
        pem_filename=texts["download-pem"][0],
        jwk=json.loads(texts["download-jwk"][1]),
        jwk_filename=texts["download-jwk"][0],
        postman=json.loads(texts["download-postman"][1]),
        posted=posted,
    )


def public_pem(key: PrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def add_pasted_key(page: Page, key: PrivateKey, kid: str) -> None:
    """Paste a PEM public key on the Settings page (the page reloads with a notice)."""
    page.get_by_label("Public key (PEM, JWK or JWK Set)").fill(public_pem(key))
    page.get_by_label(re.compile(r"^Key ID \(optional")).fill(kid)
    page.get_by_role("button", name="Add public key").click()
    expect(page.locator(".notice")).to_have_text("Public key added.")
    expect(page.get_by_role("cell", name=kid, exact=True)).to_be_visible()


# --- a tiny web server for other origins (an attacker's page, a JWKS URL) ---------------------


@dataclass
class Reply:
    status: int
    body: bytes
    content_type: str = "text/html; charset=utf-8"


class OtherSite:
    """``with OtherSite() as site: site.replies["/x"] = Reply(...)`` serves on 127.0.0.1 (a
    free port) and counts the requests of each path."""

    def __init__(self) -> None:
        self.replies: dict[str, Reply] = {}
        self.hits: dict[str, int] = {}
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                site.hits[self.path] = site.hits.get(self.path, 0) + 1
                reply = site.replies.get(self.path, Reply(404, b"not found", "text/plain"))
                self.send_response(reply.status)
                self.send_header("Content-Type", reply.content_type)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self._server.server_address[1])
        self.origin = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> OtherSite:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
