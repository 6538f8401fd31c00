"""Screenshots of the dashboard for the documentation: ``docs/images/*.png``.

    .venv/bin/python scripts/screenshots.py [--out DIR]

Starts its own ``fhirgate serve`` on SQLite in a temporary directory, fills it with demo data
the way people would (the ``fhirgate`` CLI for the first accounts, the dashboard's own pages for
the rest), drives Chromium with Playwright at a 1280 px wide viewport, and writes:

    sign-in.png           the sign-in page
    developer.png         Developer → API Keys (Development) of an organization with a few keys
    api-key-settings.png  a key's Settings page right after "Generate key pair" (the download
                          panel), with its activity
    devtools.png          Developer → DevTools (the Postman downloads)
    members.png           Members: roles per environment, a pending invitation
    audit-log.png         the organization's audit log

Chromium: ``FHIRGATE_CHROMIUM``, else ``/usr/bin/chromium`` (Debian's ``chromium`` package).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from playwright.sync_api import Page, expect, sync_playwright

from fhirgate.client import OAuthError, PrivateKeyJWTAuth

ROOT = Path(__file__).resolve().parents[1]
FHIRGATE = str(Path(sys.executable).with_name("fhirgate"))
CHROMIUM = os.environ.get("FHIRGATE_CHROMIUM", "/usr/bin/chromium")
ORG, ORG_NAME = "acme-health", "Acme Health"
DEMO_PASSWORD = "demo password for screenshots"  # noqa: S105 (a throwaway demo server)
OWNER = "maria.lopez@acmehealth.example"
ENGINEER = "sam.chen@acmehealth.example"
VIEWER = "priya.patel@acmehealth.example"
INVITED = "jordan.kim@acmehealth.example"
WIDTH = 1280


def say(message: str) -> None:
    print(f"screenshots: {message}", flush=True)


# --- the server ---------------------------------------------------------------------------------


@dataclass
class Server:
    base: str
    env: dict[str, str]

    def cli(self, *args: str, stdin: str | None = None) -> str:
        done = subprocess.run(  # noqa: S603 (our own fhirgate command)
            [FHIRGATE, *args], env=self.env, input=stdin, capture_output=True, text=True,
            check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise SystemExit(f"fhirgate {' '.join(args[:2])} failed: {done.stderr.strip()}")
        return done.stdout


def free_port() -> int:
    """8000, fhirgate's default (the URLs on the pages then look like a first install), else
    any free port."""
    for port in (8000, 0):
        with socket.socket() as sock, contextlib.suppress(OSError):
            sock.bind(("127.0.0.1", port))
            return int(sock.getsockname()[1])
    raise SystemExit("no free port")


@contextlib.contextmanager
def served(tmp: Path) -> Iterator[Server]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = dict(
        os.environ,
        FHIRGATE_DATABASE_URL=f"sqlite+aiosqlite:///{tmp}/demo.db",
        FHIRGATE_VAR_DIR=str(tmp / "var"),
        FHIRGATE_PUBLIC_URL=base,
        FHIRGATE_CLIENT_CACHE_TTL="0",
        FHIRGATE_LOG_LEVEL="WARNING",
    )
    env.pop("FHIRGATE_REDIS_URL", None)
    log = (tmp / "server.log").open("wb")
    process = subprocess.Popen(  # noqa: S603 (our own fhirgate command)
        [FHIRGATE, "serve", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        for _ in range(150):
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/healthz", timeout=0.5).status_code == 200:
                    break
            if process.poll() is not None:
                break
            time.sleep(0.1)
        else:
            raise SystemExit("fhirgate serve did not start")
        if process.poll() is not None:
            raise SystemExit(f"fhirgate serve exited:\n{(tmp / 'server.log').read_text()[-2000:]}")
        yield Server(base, env)
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


# --- what people do on the pages ----------------------------------------------------------------


def sign_in(page: Page, email: str) -> None:
    page.goto("/dashboard/sign-in")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(DEMO_PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator(".who")).to_have_text(email)


def create_key(page: Page, name: str, method: str | None = None, env: str = "development") -> str:
    page.goto(f"/dashboard/orgs/{ORG}/{env}/developer")
    page.get_by_label("Name").fill(name)
    if method:
        page.get_by_label("Authentication").select_option(label=method)
    page.get_by_role("button", name="Create API key").click()
    # A secret key's page answers the POST itself (the secret is shown once): no redirect.
    expect(page.get_by_role("heading", level=1)).to_contain_text(name)
    return page.locator("#client-id").inner_text().strip()


def paste_public_key(page: Page, kid: str) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    page.get_by_label("Public key (PEM, JWK or JWK Set)").fill(pem.decode())
    page.get_by_label("Key ID (optional", exact=False).fill(kid)
    page.get_by_role("button", name="Add public key").click()
    expect(page.locator(".notice")).to_have_text("Public key added.")


def generate(page: Page, alg: str) -> tuple[str, str]:
    """Generate a key pair on the Settings page; its kid and the downloaded private PEM."""
    page.get_by_label("Algorithm").select_option(alg)
    page.get_by_role("button", name="Generate key pair").click()
    expect(page.locator("#generated")).to_be_visible()
    kid = page.locator("#generated-kid").inner_text().strip()
    with page.expect_download() as download:
        page.locator("#download-pem").click()
    return kid, Path(download.value.path()).read_text()


def use_key(server: Server, client_id: str, pem: str, kid: str, tokens: int) -> None:
    """Some activity: tokens and calls with the real key, and two failed attempts."""
    token_url = f"{server.base}/oauth2/token"
    for _ in range(tokens):
        auth = PrivateKeyJWTAuth(token_url, client_id, pem, kid=kid, scope="system/Patient.rs")
        with httpx.Client(auth=auth) as http:
            http.get(f"{server.base}/whoami").raise_for_status()
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    for _ in range(2):  # someone else's private key with this key's kid
        wrong = PrivateKeyJWTAuth(token_url, client_id, stranger, kid=kid,
                                  scope="system/Patient.rs")  # fmt: skip
        with contextlib.suppress(OAuthError):
            wrong.get_token()


def shoot(page: Page, out: Path, name: str) -> None:
    page.mouse.move(0, 0)
    path = out / name
    page.screenshot(path=str(path), full_page=True)
    say(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")


# --- the whole run ------------------------------------------------------------------------------


def seed_accounts(server: Server) -> None:
    say("creating the organization and its people (fhirgate CLI)")
    server.cli("orgs", "create", "--slug", ORG, "--name", ORG_NAME)
    for email, role in ((OWNER, "owner"), (ENGINEER, "member"), (VIEWER, "member")):
        server.cli("admin", "create-user", "--email", email, "--password-stdin", "--org", ORG,
                   "--role", role, stdin=DEMO_PASSWORD + "\n")  # fmt: skip
    for email, env, role in ((ENGINEER, "development", "engineer"),
                             (ENGINEER, "staging", "engineer"),
                             (VIEWER, "development", "viewer"),
                             (VIEWER, "production", "support")):  # fmt: skip
        server.cli("admin", "set-role", "--email", email, "--org", ORG, "--env", env,
                   "--role", role)  # fmt: skip


def run(out: Path) -> None:
    if not Path(CHROMIUM).is_file():
        raise SystemExit(
            f"Chromium is not installed at {CHROMIUM}: apt-get install chromium, or set "
            "FHIRGATE_CHROMIUM"
        )
    out.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory(prefix="fhirgate-screenshots-") as tmp,
        served(Path(tmp)) as server,
    ):
        say(f"fhirgate serve is up at {server.base}")
        seed_accounts(server)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            context = browser.new_context(
                base_url=server.base,
                viewport={"width": WIDTH, "height": 800},
                device_scale_factor=1,
                accept_downloads=True,
            )
            context.set_default_timeout(15_000)
            page = context.new_page()

            say("sign-in page")
            page.goto("/dashboard/sign-in")
            shoot(page, out, "sign-in.png")
            sign_in(page, OWNER)

            say("API keys: created through the Developer page")
            create_key(page, "Patient portal backend")
            paste_public_key(page, "portal-2025-01")
            create_key(page, "Nightly claims export", "Client secret (HTTP Basic)")
            create_key(page, "Legacy EHR bridge", "Legacy API key")
            create_key(page, "Old reporting job")
            paste_public_key(page, "reporting-2023")
            page.get_by_role("link", name="Revoke API key").click()
            page.get_by_role("button", name="Revoke Old reporting job").click()
            expect(page.locator("h1 .badge")).to_have_text("revoked")
            create_key(page, "Staging smoke tests", env="staging")
            claims = create_key(page, "Claims sync service")

            say("Claims sync service: a key pair generated in the browser, then some traffic")
            kid, pem = generate(page, "RS384")
            page.get_by_role("link", name="Done — I have saved the private key").click()
            use_key(server, claims, pem, kid, tokens=7)
            time.sleep(1.5)  # the audit log is written once a second

            say("Settings page after generating a second key pair (rotation)")
            page.goto(f"/dashboard/keys/{claims}")
            generate(page, "ES384")
            page.locator("#generated").evaluate("(panel) => panel.blur()")
            shoot(page, out, "api-key-settings.png")

            say("Developer → API Keys and DevTools")
            page.goto(f"/dashboard/orgs/{ORG}/development/developer")
            shoot(page, out, "developer.png")
            page.goto(f"/dashboard/orgs/{ORG}/development/developer/devtools")
            shoot(page, out, "devtools.png")

            say("Members: an invitation through the page")
            page.goto(f"/dashboard/orgs/{ORG}/members")
            page.get_by_label("Email", exact=True).fill(INVITED)
            page.get_by_role("button", name="Create invitation link").click()
            expect(page.get_by_text("Invitation created.")).to_be_visible()
            page.goto(f"/dashboard/orgs/{ORG}/members")  # without the one-time link
            shoot(page, out, "members.png")

            say("Audit log")
            page.goto(f"/dashboard/orgs/{ORG}/audit")
            shoot(page, out, "audit-log.png")
            browser.close()
    say("done")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    run(parser.parse_args().out.resolve())


if __name__ == "__main__":
    main()
