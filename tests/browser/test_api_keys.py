"""An API key's life in a real browser: create it, generate a key pair with WebCrypto and
download the private key (which never reaches the server), get tokens with it through the SDK,
rotate keys, revoke; the copy and JWKS URL "Test" buttons; a hostile key name; and no console
error or CSP violation anywhere on the main pages."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from playwright.sync_api import Page, expect

from fhirgate.client import OAuthError, load_private_key
from fhirgate.dashboard.api_keys import PRIVATE_JWK_MEMBERS
from fhirgate.oauth.jose import jwk_from_public_key
from fhirgate.oauth.registration import jwk_thumbprint
from tests.browser.conftest import (
    Browsing,
    Generated,
    Live,
    OtherSite,
    Reply,
    add_pasted_key,
    create_key,
    developer_path,
    generate_key_pair,
    sign_in,
)

OWNER = "owner@example.org"
PUBLIC_MEMBERS = {"RSA": ("kty", "n", "e"), "EC": ("kty", "crv", "x", "y")}


@pytest.fixture(scope="module", autouse=True)
def people(live: Live) -> Iterator[None]:
    live.create_user(OWNER)
    yield


def public_part(jwk: dict[str, Any]) -> dict[str, Any]:
    return {name: jwk[name] for name in PUBLIC_MEMBERS[jwk["kty"]]}


def refused(live: Live, client_id: str, key: Any, kid: str, alg: str) -> OAuthError:
    with pytest.raises(OAuthError) as caught:
        live.auth(client_id, key, kid, alg).get_token()
    return caught.value


def token_works(live: Live, client_id: str, key: Any, kid: str, alg: str) -> str:
    """A token from the SDK with ``key``, accepted by ``/whoami`` as this key's."""
    auth = live.auth(client_id, key, kid, alg)
    with httpx.Client(auth=auth) as http:
        who = http.get(live.url("/whoami"))
    assert who.status_code == 200, who.text
    assert who.json()["client_id"] == client_id
    return auth.get_token()


def done_saving(page: Page, generated: Generated) -> None:
    """Follow "Done — I have saved the private key": the page now lists the new kid."""
    page.get_by_role("link", name="Done — I have saved the private key").click()
    expect(page.locator("#generated")).to_be_hidden()
    expect(page.get_by_role("cell", name=generated.kid, exact=True)).to_be_visible()


# --- generate, download, use ------------------------------------------------------------------


@pytest.mark.parametrize(("alg", "kty"), [("RS384", "RSA"), ("ES384", "EC")])
def test_generate_a_key_pair_download_the_private_key_and_get_a_token(
    browsing: Browsing, live: Live, alg: str, kty: str
) -> None:
    page = browsing.signed_in(OWNER)
    client_id = create_key(page, f"Billing backend {alg}")
    expect(page.get_by_text("JWKS with 0 key(s)")).to_be_visible()
    generated = generate_key_pair(page, alg)
    kid = generated.kid

    # The downloads parse, and are one and the same key pair.
    assert generated.pem_filename == f"{kid}.private.pem"
    assert generated.jwk_filename == f"{kid}.private.jwk.json"
    assert generated.pem.startswith("-----BEGIN PRIVATE KEY-----\n")  # PKCS #8
    from_pem = serialization.load_pem_private_key(generated.pem.encode(), password=None)
    expected_type = rsa.RSAPrivateKey if kty == "RSA" else ec.EllipticCurvePrivateKey
    assert isinstance(from_pem, expected_type)
    jwk = generated.jwk
    assert jwk["kty"] == kty and jwk["kid"] == kid and jwk["alg"] == alg and jwk["use"] == "sig"
    assert "d" in jwk and not {"ext", "key_ops"} & jwk.keys()
    from_jwk = load_private_key(jwk)
    assert from_jwk.private_numbers() == from_pem.private_numbers()  # type: ignore[union-attr]
    public = jwk_from_public_key(from_pem.public_key(), kid="")  # type: ignore[union-attr]
    assert public_part(jwk) == public_part(public)
    assert kid == jwk_thumbprint(public)  # RFC 7638: the kid is the key's thumbprint
    if kty == "RSA":
        assert from_pem.key_size == 2048  # type: ignore[union-attr]
    else:
        assert jwk["crv"] == "P-384"

    # The Postman environment carries the same private JWK, for this key.
    values = {v["key"]: v["value"] for v in generated.postman["values"]}
    assert json.loads(values["privateKey"]) == jwk
    assert values["clientId"] == client_id
    assert values["kid"] == kid and values["alg"] == alg
    assert values["tokenUrl"] == live.token_url

    # The server holds the public half only; no private member ever left the browser.
    stored = live.stored(client_id)["jwks"]["keys"]
    assert len(stored) == 1
    assert stored[0]["kid"] == kid
    assert public_part(stored[0]) == public_part(jwk)
    for key in stored:
        assert not PRIVATE_JWK_MEMBERS & key.keys(), key
    public_value = jwk["n"] if kty == "RSA" else jwk["x"]
    assert any(public_value in body for body in generated.posted), "no public key was posted"
    for body in generated.posted:
        assert jwk["d"] not in body and "PRIVATE KEY" not in body
    done_saving(page, generated)
    expect(page.get_by_text("JWKS with 1 key(s)")).to_be_visible()

    # The SDK gets tokens with either download, against the live server.
    token_works(live, client_id, generated.pem, kid, alg)
    token_works(live, client_id, jwk, kid, alg)
    # The Activity section (from the audit log, written each second) counts both tokens.
    last_used = page.locator("p").filter(has_text=re.compile(r"^Last used \d{4}-\d\d-\d\d"))
    today = page.locator("details tbody tr").last.locator("td").last  # hidden until opened
    for _ in range(20):
        page.reload()
        if last_used.count() and today.text_content() == "2":
            break
        page.wait_for_timeout(250)
    expect(last_used).to_be_visible()
    page.get_by_text("Tokens per day (table)").click()
    expect(today).to_have_text("2")
    bar = page.locator("svg.chart g").last
    expect(bar.locator("title")).to_have_text(re.compile(r": 2 tokens$"))


def test_rotate_to_a_second_key_then_remove_the_first(browsing: Browsing, live: Live) -> None:
    page = browsing.signed_in(OWNER)
    client_id = create_key(page, "Rotating backend")
    first = generate_key_pair(page, "RS384")
    done_saving(page, first)
    second = ec.generate_private_key(ec.SECP384R1())
    add_pasted_key(page, second, "second-key")
    expect(page.get_by_text("JWKS with 2 key(s)")).to_be_visible()
    assert [k["kid"] for k in live.stored(client_id)["jwks"]["keys"]] == [first.kid, "second-key"]
    token_works(live, client_id, first.pem, first.kid, "RS384")  # both work during rotation
    token_works(live, client_id, second, "second-key", "ES384")

    page.get_by_role("button", name=f"Remove {first.kid}").click()
    expect(page.locator(".notice")).to_have_text(f"Key {first.kid} removed.")
    expect(page.get_by_role("cell", name=first.kid, exact=True)).to_have_count(0)
    expect(page.get_by_role("cell", name="second-key", exact=True)).to_be_visible()
    assert [k["kid"] for k in live.stored(client_id)["jwks"]["keys"]] == ["second-key"]
    assert json.loads(live.cli("clients", "show", client_id, "--json"))["kids"] == ["second-key"]
    assert refused(live, client_id, first.pem, first.kid, "RS384").error == "invalid_client"
    token_works(live, client_id, second, "second-key", "ES384")


def test_revoke_through_the_confirmation_page(browsing: Browsing, live: Live) -> None:
    page = browsing.signed_in(OWNER)
    client_id = create_key(page, "Doomed backend")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    add_pasted_key(page, key, "doomed")
    issued_before = token_works(live, client_id, key, "doomed", "RS384")

    page.get_by_role("link", name="Revoke API key").click()
    expect(page).to_have_url(re.compile(f"/dashboard/keys/{client_id}/revoke$"))
    expect(page.get_by_role("heading", name="Revoke this API key?")).to_be_visible()
    page.get_by_role("link", name="Cancel").click()  # going back changes nothing
    expect(page).to_have_url(re.compile(f"/dashboard/keys/{client_id}$"))
    assert live.stored(client_id)["status"] == "active"
    assert live.whoami(issued_before).status_code == 200

    page.get_by_role("link", name="Revoke API key").click()
    page.get_by_role("button", name="Revoke Doomed backend").click()
    expect(page.locator(".notice")).to_have_text("The API key is revoked: its tokens are refused.")
    expect(page.locator("h1 .badge")).to_have_text("revoked")
    expect(page.get_by_role("button", name="Generate key pair")).to_have_count(0)
    expect(page.get_by_role("link", name="Revoke API key")).to_have_count(0)
    assert live.stored(client_id)["status"] == "revoked"
    assert refused(live, client_id, key, "doomed", "RS384").error == "invalid_client"
    assert live.whoami(issued_before).status_code == 401
    page.goto(developer_path())
    row = page.get_by_role("row").filter(has_text="Doomed backend")
    expect(row.locator(".badge")).to_have_text("revoked")


# --- the page's other scripts -------------------------------------------------------------------


def test_the_copy_button_copies_the_client_id(browsing: Browsing) -> None:
    page = browsing.signed_in(OWNER, permissions=["clipboard-read", "clipboard-write"])
    client_id = create_key(page, "Copied backend")
    page.evaluate("navigator.clipboard.writeText('something else')")
    button = page.locator('button[data-copy="client-id"]')
    expect(button).to_have_text("Copy client ID")
    button.click()
    expect(button).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == client_id
    expect(button).to_have_text("Copy client ID", timeout=5000)  # the label comes back


def test_the_jwks_url_test_button_lists_the_kids_it_serves(browsing: Browsing, live: Live) -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP384R1())
    jwks = {
        "keys": [
            jwk_from_public_key(rsa_key.public_key(), "published-rsa", "RS384"),
            jwk_from_public_key(ec_key.public_key(), "published-ec", "ES384"),
        ]
    }
    page = browsing.signed_in(OWNER)
    client_id = create_key(page, "Published keys")
    with OtherSite() as site:
        site.replies["/jwks.json"] = Reply(200, json.dumps(jwks).encode(), "application/json")
        url = f"{site.origin}/jwks.json"
        page.get_by_label("Where your public keys are published (https)").fill(url)
        page.get_by_role("button", name="Test").click()
        result = page.locator("#jwks-result")
        expect(result).to_have_text("Found 2 key(s): published-rsa, published-ec")
        expect(result).to_have_class("notice")
        assert site.hits["/jwks.json"] == 1  # fetched by the server, now
        assert live.stored(client_id)["jwks_url"] is None  # testing saves nothing

        page.get_by_label("Where your public keys are published (https)").fill(
            f"{site.origin}/missing.json"
        )
        page.get_by_role("button", name="Test").click()
        expect(result).to_have_text(
            "Test failed: the JWKS URL could not be used: HTTP 404 (redirects are not followed)"
        )
        expect(result).to_have_class("error")
        expect(page.get_by_role("button", name="Test")).to_be_enabled()

        page.get_by_label("Where your public keys are published (https)").fill(url)
        page.get_by_role("button", name="Save JWKS URL").click()
        expect(page.locator(".notice")).to_have_text("JWKS URL saved.")
        assert live.stored(client_id)["jwks_url"] == url
        token_works(live, client_id, ec_key, "published-ec", "ES384")  # via the URL


# --- hostile input, and a clean console ---------------------------------------------------------

SCRIPT_NAME = "<script>window.pwned=1</script>"


def test_a_key_named_like_a_script_shows_as_text(browsing: Browsing, live: Live) -> None:
    page = browsing.signed_in(OWNER)
    client_id = create_key(page, SCRIPT_NAME)
    shown = [
        (f"/dashboard/keys/{client_id}", page.get_by_role("heading", level=1)),
        (developer_path(), page.get_by_role("link", name=SCRIPT_NAME, exact=True)),
        (developer_path() + "/devtools", page.get_by_role("link", name=SCRIPT_NAME, exact=True)),
        (f"/dashboard/keys/{client_id}/revoke", page.get_by_role("button", name="Revoke <")),
    ]
    for path, where in shown:
        page.goto(path)
        expect(where).to_contain_text(SCRIPT_NAME)
        assert page.evaluate("typeof window.pwned") == "undefined", path
        scripts = page.evaluate("Array.from(document.scripts, (s) => s.src)")
        assert scripts == [live.url("/dashboard/static/app.js")], (path, scripts)
    page.goto(f"/dashboard/keys/{client_id}")
    assert page.title() == f"{SCRIPT_NAME} · fhirgate"
    assert page.get_by_label("Name").input_value() == SCRIPT_NAME  # the rename field
    # Escaped, not merely blocked: the CSP never had to refuse an inline script.
    assert browsing.problems(page).all() == []


def test_main_pages_have_no_console_errors_or_csp_violations(
    browsing: Browsing, live: Live
) -> None:
    page = browsing.page()
    sign_in(page, OWNER)
    client_id = create_key(page, "Console check")
    generated = generate_key_pair(page, "ES384")  # the page's heaviest script
    done_saving(page, generated)
    published = jwk_from_public_key(ec.generate_private_key(ec.SECP384R1()).public_key(), "p")
    with OtherSite() as site:
        body = json.dumps({"keys": [published]}).encode()
        site.replies["/jwks.json"] = Reply(200, body, "application/json")
        page.get_by_label("Where your public keys are published (https)").fill(
            f"{site.origin}/jwks.json"
        )
        page.get_by_role("button", name="Test").click()
        expect(page.locator("#jwks-result")).to_have_text("Found 1 key(s): p")
    visited = [
        developer_path(),
        developer_path("staging"),
        developer_path("production"),
        developer_path() + "/devtools",
        f"/dashboard/keys/{client_id}/revoke",
        f"/dashboard/keys/{client_id}/delete",
        "/dashboard/orgs/default/members",
        "/dashboard/orgs/default/audit",
        "/dashboard/account",
        "/dashboard/account/api-keys",
    ]
    for path in visited:
        response = page.goto(path)
        assert response is not None and response.status == 200, path
        csp = response.headers["content-security-policy"]
        assert "'unsafe-inline'" not in csp and "script-src 'self'" in csp
        expect(page.locator("main h1").first).to_be_visible()
    page.goto(developer_path() + "/devtools")
    with page.expect_download() as download:
        page.get_by_role("row").filter(has_text="Console check").get_by_role(
            "link", name="Download collection"
        ).click()
    collection = json.loads(Path(download.value.path()).read_text())
    assert collection["info"]["schema"].endswith("/collection/v2.1.0/collection.json")
    page.goto("/dashboard/account/api-keys")
    page.get_by_label("Name").fill("My platform key")
    page.get_by_role("button", name="Create").click()
    expect(page.get_by_role("button", name="Generate key pair")).to_be_visible()
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    assert browsing.problems(page).all() == []


def test_a_secret_is_shown_once_and_a_reload_does_not_create_another_key(
    browsing: Browsing, live: Live
) -> None:
    page = browsing.signed_in(OWNER)
    page.goto(developer_path())
    before = live.client_count()
    page.get_by_label("Name").fill("Secret backend")
    page.get_by_label("Authentication").select_option("client_secret_basic")
    page.get_by_role("button", name="Create API key").click()
    secret = page.locator("#secret-value").inner_text().strip()
    assert len(secret) >= 32
    client_id = page.locator("#client-id").inner_text().strip()
    page.wait_for_url(f"**/dashboard/keys/{client_id}")  # the script settles the URL
    page.reload()
    expect(page.get_by_role("heading", level=1)).to_contain_text("Secret backend")
    assert page.locator("#secret-value").count() == 0
    assert secret not in page.content()
    assert live.client_count() == before + 1
